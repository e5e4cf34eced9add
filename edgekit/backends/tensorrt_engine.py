"""TensorRT's side of the artifact: where an engine can be built, building it, the legacy calibration cache,
the trtexec command and the runner.

Kept apart from the exporter, which only writes ONNX: everything here either needs the tensorrt package and
a GPU (building, running an engine) or describes what the device will do with the artifact (the trtexec
line, the cache TensorRT reads). Without TensorRT the runner runs the TensorRT-ready ONNX in ONNX Runtime on
the CPU, which is the accuracy check of the artifact's numerics on a host without a GPU.
"""

from __future__ import annotations

import importlib.util
import shlex
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Runner, TensorSpec
from edgekit.backends.onnxruntime import OrtRunner
from edgekit.errors import EdgekitError

ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
#: TensorRT's calibrator class names its cache's header; trtexec --calib reads caches of this class
CALIBRATOR = "EntropyCalibration2"


# ---------------------------------------------------------------------------------------------------------
# where an engine can be built
def engine_support() -> tuple[bool, str]:
    """(True, "") where the tensorrt package imports and a CUDA device is visible, else (False, why not)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed here"
    try:
        import tensorrt  # noqa: F401  (the registry's placeholder wheels install but fail to import)
    except Exception as exc:  # pragma: no cover - needs a broken TensorRT install
        return False, f"the tensorrt package does not import ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device is visible"
    except Exception:  # pragma: no cover
        return False, "no CUDA device is visible (torch.cuda is unavailable)"
    return True, ""


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover - only reached after engine_support() said yes
        return "unknown GPU"


# ---------------------------------------------------------------------------------------------------------
# TensorRT's legacy calibration cache
def trt_version_code(version: str) -> int:
    """TensorRT's integer version (getInferLibVersion): 10.3.0 -> 100300, 8.6.1 -> 8601."""
    parts = [int(p) for p in version.replace("-", ".").split(".")[:3] if p.isdigit()]
    if not parts:
        raise EdgekitError(f"backend option 'tensorrt_version' must look like 10.3.0 (got {version!r})")
    major, minor, patch = [*parts, 0, 0][:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def calibration_cache_text(tensors: dict[str, tuple[float, float]], version_code: int) -> str:
    """TensorRT's calibration cache: a header line, then `name: <hex of the float32 scale>` per tensor.

    The scale is amax / 127 with amax = max(|min|, |max|) (TensorRT's symmetric int8); a tensor that is
    always 0 gets scale 1.0, as ONNX Runtime's quantizer does, since a zero scale would divide by zero.
    """
    lines = [f"TRT-{version_code}-{CALIBRATOR}"]
    for name, (lo, hi) in tensors.items():
        amax = max(abs(float(lo)), abs(float(hi)))
        scale = amax / 127.0 if amax > 0 else 1.0
        lines.append(f"{name}: {struct.unpack('>I', struct.pack('>f', scale))[0]:08x}")
    return "\n".join(lines) + "\n"


def read_calibration_cache(path: Path) -> tuple[str, dict[str, float]]:
    """(header, tensor name -> scale) from a TensorRT calibration cache file."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise EdgekitError(f"{path} is not a TensorRT calibration cache (no TRT-... header line)")
    scales: dict[str, float] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep:
            raise EdgekitError(f"{path}: malformed line {line!r}; expected 'tensor_name: hexscale'")
        scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
    return lines[0], scales


# ---------------------------------------------------------------------------------------------------------
# shapes, commands
def profile_shapes(inputs: list[TensorSpec], batch: tuple[int, int, int],
                   axes: dict[str, int] | None = None) -> tuple[dict[str, list], list[str]]:
    """min/opt/max shapes for inputs with a dynamic batch, and the inputs whose other dims are dynamic and
    not in `axes` (a named dynamic axis -> its exported maximum, e.g. a transformer's `sequence`: the
    profile then runs from 1 to that maximum, optimized for the maximum, which is what padded inputs use)."""
    axes = axes or {}
    shapes: dict[str, list] = {}
    unresolved: list[str] = []
    for spec in inputs:
        dims = list(spec.shape)
        if all(isinstance(d, int) for d in dims):
            continue
        if any(not isinstance(d, int) and str(d) not in axes for d in dims[1:]):
            unresolved.append(spec.name)
            continue
        shapes[spec.name] = [[b, *(d if isinstance(d, int) else (1 if k == 0 else axes[str(d)]) for d in dims[1:])]
                             for k, b in enumerate(batch)]
    return shapes, unresolved


def shape_flags(shapes: dict[str, list]) -> list[str]:
    flags = []
    for i, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        if shapes:
            flags.append(f"{flag}=" + ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items()))
    return flags


def trtexec_command(onnx_name: str, shapes: dict[str, list], workspace_mb: int | None) -> str:
    """The trtexec line that builds the engine from this artifact's ONNX on the device (strongly typed)."""
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={ENGINE_FILE}", "--stronglyTyped",
            f"--timingCacheFile={TIMING_CACHE_FILE}", *shape_flags(shapes)]
    if workspace_mb:
        args.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    return shlex.join(args)



def trt_version(opts: dict[str, Any]) -> tuple[str, str]:
    """The TensorRT version the calibration cache is written for: the installed one, else the target's."""
    try:
        import tensorrt

        return tensorrt.__version__, "installed here"
    except Exception:
        pass
    if "tensorrt_version" in opts:
        return str(opts["tensorrt_version"]), "the target profile's tensorrt_version"
    return "10.3.0", "default; set backend option tensorrt_version to the device's TensorRT"


def build_engine(onnx_path: Path, engine_path: Path, cache_path: Path, shapes: dict[str, list],
                 workspace_mb: int | None, prior_cache: str | None) -> dict[str, Any]:  # pragma: no cover - GPU
    """Parse the ONNX into a strongly typed network, build it with a timing cache, save engine and cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise EdgekitError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    blob = Path(prior_cache).read_bytes() if prior_cache and Path(prior_cache).is_file() else b""
    timing_cache = config.create_timing_cache(blob)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgekitError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, "gpu": gpu_name(), "seconds": round(time.perf_counter() - t0, 2),
            "timing_cache": cache_path.name, "timing_cache_from": prior_cache or "empty (new cache)",
            "note": "an engine runs only on this GPU model with this TensorRT version; rebuild on the device "
                    "with the trtexec command if they differ"}


# ---------------------------------------------------------------------------------------------------------
# runners
_ORT_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtCpuRunner(OrtRunner):
    """ONNX Runtime on the TensorRT-ready ONNX: inputs cast to the graph's dtype, float16 outputs to float32."""

    def load(self) -> None:
        super().load()
        self._in_types = {i.name: _ORT_NP.get(i.type) for i in self.session.get_inputs()}

    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {k: np.asarray(v, dtype=self._in_types.get(k)) for k, v in self.as_feed(inputs).items()}
        outs = self.session.run(self._out_names, feed)
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]


class _EngineSession:  # pragma: no cover - needs TensorRT and a GPU
    """A deserialized engine run with torch-allocated CUDA buffers (torch is already an edgekit dependency)."""

    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EdgekitError(f"TensorRT cannot load {engine_path}: built for another GPU or TensorRT version?")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str):
        np_dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
        return self.torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype, np_dtype

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        keep = []
        for name in self.inputs:
            _, np_dtype = self._torch_dtype(name)
            t = torch.from_numpy(np.ascontiguousarray(feed[name], dtype=np_dtype)).cuda()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        outs = []
        for name in self.outputs:
            dtype, _ = self._torch_dtype(name)
            t = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, t.data_ptr())
            outs.append(t)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EdgekitError("TensorRT engine execution failed")
        stream.synchronize()
        return [o.cpu().numpy().astype(np.float32) if o.dtype == torch.float16 else o.cpu().numpy() for o in outs]


class TensorRTRunner(Runner):
    """Runs the engine where one was built and TensorRT + CUDA exist; else the TensorRT-ready ONNX with ONNX
    Runtime on the CPU, which is the accuracy check of the artifact's numerics on a host without a GPU.
    `executes` and `runtime_version` say which one ran."""

    executes: str = "not loaded"

    def load(self) -> None:
        details = self.manifest.get("backend_details", {})
        engine_file = details.get("engine_file")
        ok = False
        if engine_file and (self.artifact_dir / engine_file).is_file():
            ok, _ = engine_support()
        if ok:  # pragma: no cover - needs TensorRT and a GPU
            self._engine = _EngineSession(self.artifact_dir / engine_file)
            self._cpu = None
            self.executes = "tensorrt-engine"
        else:
            self._engine = None
            self._cpu = OrtCpuRunner(self.artifact_dir, self.manifest, threads=self.threads)
            self._cpu.load()
            self.executes = "onnxruntime-cpu"

    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._engine is not None:  # pragma: no cover
            return self._engine.run(self.as_feed(inputs))
        return self._cpu.infer(inputs)

    def close(self) -> None:
        if getattr(self, "_cpu", None) is not None:
            self._cpu.close()
        self._engine = self._cpu = None

    @property
    def runtime_version(self) -> str:
        if self.executes == "tensorrt-engine":  # pragma: no cover
            import tensorrt

            return f"tensorrt {tensorrt.__version__} engine on {gpu_name()}"
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} on CPU (TensorRT-ready ONNX; no engine run)"


def next_step(manifest: dict[str, Any]) -> str | None:
    details = manifest.get("backend_details") or {}
    if details.get("engine") == "built" or not details.get("trtexec"):
        return None
    return f"on the device, in the artifact folder: {details['trtexec']}"
