"""TensorRT backend: explicit-quantization ONNX (int8 Q/DQ, fp16, mixed) and, where TensorRT and a GPU exist,
the `.engine` built from it as a strongly typed network.

TensorRT 10.1 deprecated its implicit INT8 calibrators and TensorRT 11 removed `BuilderFlag.INT8/FP16`, so
every precision is written into the ONNX graph itself: int8 as QuantizeLinear/DequantizeLinear pairs made
from edgekit's shared ranges (or the model's own, from QAT), fp16 as float16 tensors. A strongly typed
network then takes each layer's precision from those types, and the same graph means the same numerics on
every machine. That is why ONNX Runtime running this graph on the CPU is the accuracy check of the artifact
here (TensorRT cannot be installed on a CPU-only host); on a machine with TensorRT and CUDA the runner runs
the engine instead, and the manifest says which one ran.

The artifact always holds the TensorRT-ready ONNX and the exact `trtexec` command that builds it on the
device (engines are specific to a GPU and a TensorRT version, so the device usually builds its own). For
users still on the legacy implicit-INT8 path, the same ranges are also written as TensorRT's calibration
cache, beside the FP32 graph whose tensor names it uses.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Exporter, ExportRequest, ExportResult, Runner, TensorSpec
from edgekit.backends.onnxruntime import OrtRunner, float_weights, quantize_static_qdq, session_config
from edgekit.errors import EdgekitError, MissingRuntimeError
from edgekit.graph.onnx_export import describe

MODEL_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
CALIBRATION_CACHE_FILE = "calibration.cache"
LEGACY_ONNX_FILE = "model_fp32.onnx"
#: TensorRT's calibrator class names its cache's header; trtexec --calib reads caches of this class
CALIBRATOR = "EntropyCalibration2"
#: the only int8 format TensorRT's explicit quantization accepts (the ORT backend's option names)
TRT_QUANT_FORMAT = {"activation_type": "int8", "activation_symmetric": True, "weight_type": "int8",
                    "reduce_range": False}
IO_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16"}
DEFAULT_BATCH_PROFILE = (1, 1, 32)
#: how to fix an `edgekit qat` graph TensorRT refuses: its default x86 quantizer makes uint8 asymmetric activations
QAT_REMEDY = ("this graph comes from edgekit qat with a quantizer made for ONNX Runtime on x86 (the default x86: "
              "uint8 asymmetric activations); re-run edgekit qat with --quantizer tensorrt (int8 symmetric "
              "activations, per-channel weights)")

_GET_ENGINE = ("run it on a machine with an NVIDIA GPU and CUDA that can reach NVIDIA's package index (TensorRT's "
               "wheels come from there), or drop require_engine (--require-engine) to get the TensorRT-ready ONNX "
               "and the trtexec command that builds the engine on the device")


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
def profile_shapes(inputs: list[TensorSpec], batch: tuple[int, int, int]) -> tuple[dict[str, list], list[str]]:
    """min/opt/max shapes for inputs with a dynamic batch, and the inputs whose other dims are dynamic."""
    shapes: dict[str, list] = {}
    unresolved: list[str] = []
    for spec in inputs:
        dims = list(spec.shape)
        if all(isinstance(d, int) for d in dims):
            continue
        if any(not isinstance(d, int) for d in dims[1:]):
            unresolved.append(spec.name)
            continue
        shapes[spec.name] = [[b, *dims[1:]] for b in batch]
    return shapes, unresolved


def _shape_flags(shapes: dict[str, list]) -> list[str]:
    flags = []
    for i, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        if shapes:
            flags.append(f"{flag}=" + ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items()))
    return flags


def trtexec_command(onnx_name: str, shapes: dict[str, list], workspace_mb: int | None) -> str:
    """The trtexec line that builds the engine from this artifact's ONNX on the device (strongly typed)."""
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={ENGINE_FILE}", "--stronglyTyped",
            f"--timingCacheFile={TIMING_CACHE_FILE}", *_shape_flags(shapes)]
    if workspace_mb:
        args.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    return shlex.join(args)


# ---------------------------------------------------------------------------------------------------------
# options
def _name_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise EdgekitError(f"backend option '{key}' must be a list of names, e.g. {key}='[\"node_a\",\"node_b\"]' "
                           f"(got {value!r})")
    return list(value)


def _validated(options: dict[str, Any]) -> dict[str, Any]:
    """Check every option's type and value once, so a typo fails before any work is done."""
    out = dict(options)
    for key in ("keep_fp16", "keep_fp32", "fp32_ops"):
        out[key] = _name_list(options.get(key), key)
    both = sorted(set(out["keep_fp16"]) & set(out["keep_fp32"]))
    if both:
        raise EdgekitError(f"node(s) {', '.join(both)} are in both keep_fp16 and keep_fp32; name each once")
    io = options.get("io_dtype", "float32")
    if io not in IO_DTYPES:
        raise EdgekitError(f"backend option 'io_dtype' must be float32 or float16 (got {io!r})")
    out["io_dtype"] = IO_DTYPES[io]
    batch = options.get("batch_profile", DEFAULT_BATCH_PROFILE)
    if (not isinstance(batch, list | tuple) or len(batch) != 3 or not all(isinstance(b, int) and b > 0 for b in batch)
            or not batch[0] <= batch[1] <= batch[2]):
        raise EdgekitError(f"backend option 'batch_profile' must be [min, opt, max] positive integers with "
                           f"min <= opt <= max (got {batch!r})")
    out["batch_profile"] = tuple(batch)
    ws = options.get("workspace_mb")
    if ws is not None and (not isinstance(ws, int) or isinstance(ws, bool) or ws <= 0):
        raise EdgekitError(f"backend option 'workspace_mb' must be a positive integer (got {ws!r})")
    for key in ("require_engine", "build_engine", "per_channel", "legacy_calibration_cache"):
        if key in options and not isinstance(options[key], bool):
            raise EdgekitError(f"backend option '{key}' must be true or false (got {options[key]!r})")
    for key, want in TRT_QUANT_FORMAT.items():
        if key in options and options[key] != want:
            raise EdgekitError(f"backend option '{key}' is {options[key]!r}, but TensorRT's explicit quantization "
                               f"needs {want!r} (int8, symmetric, zero point 0); remove it from the target profile")
    if "tensorrt_version" in options:
        trt_version_code(str(options["tensorrt_version"]))
    return out


class TensorRTExporter(Exporter):
    """fp32 / fp16 / int8 / mixed TensorRT-ready ONNX; the engine too where TensorRT and CUDA exist.

    Options (constructor, `--backend-option KEY=VALUE`, or the target's [backend_options]; the constructor
    wins): keep_fp16 / keep_fp32 (mixed: node names kept out of int8, run in fp16 / fp32), io_dtype (fp16:
    float32 or float16 graph inputs and outputs), fp32_ops (more op types kept in float32 in fp16),
    per_channel, batch_profile ([min, opt, max] batch of the optimization profile), workspace_mb,
    timing_cache (a timing cache file to start from), legacy_calibration_cache, tensorrt_version (the
    device's TensorRT, for the calibration cache header), build_engine, require_engine.
    """

    needs_calibration = ("int8", "mixed")
    uses_ranges = ("int8", "mixed")
    backend = "tensorrt"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        _validated(self.options)
        if self.options.get("require_engine") and self.options.get("build_engine") is False:
            raise EdgekitError("require_engine and build_engine=false contradict each other; drop one")
        if self.options.get("require_engine"):
            ok, reason = engine_support()
            if not ok and importlib.util.find_spec("tensorrt") is None:
                raise MissingRuntimeError("tensorrt", "tensorrt", "tensorrt",
                                          hint=f"--require-engine builds the .engine here; {_GET_ENGINE}")
            if not ok:
                raise EdgekitError(f"require_engine (--require-engine): cannot build a TensorRT engine here: "
                                   f"{reason}; run on a machine with an NVIDIA GPU, or drop require_engine "
                                   "(--require-engine) to get the ONNX and the trtexec command")

    def export(self, request: ExportRequest) -> ExportResult:
        import onnx

        opts = _validated({**request.target.backend_options, **self.options})
        precision = request.precision
        if (opts["keep_fp16"] or opts["keep_fp32"]) and precision != "mixed":
            raise EdgekitError(f"keep_fp16/keep_fp32 name nodes to keep out of int8 with precision 'mixed'; "
                               f"precision '{precision}' has no int8 to keep them out of")
        out = request.out_dir / MODEL_FILE
        details: dict[str, Any] = {
            "precision": precision,
            "onnx": MODEL_FILE,
            "network": "strongly typed: each layer's precision comes from the ONNX tensor types "
                       "(no BuilderFlag.INT8/FP16)",
        }
        if request.onnx.quantization is not None:
            details["quantization"] = self._given_qdq(request, out)
        elif precision == "fp32":
            shutil.copyfile(request.onnx.path, out)
        elif precision == "fp16":
            details["fp16"] = self._fp16(request, out, opts)
        elif precision in ("int8", "mixed"):
            details["quantization"] = self._int8(request, out, opts)
        else:
            raise EdgekitError(f"backend tensorrt has no precision '{precision}'; it offers fp32, fp16, int8, mixed")

        model = onnx.load(str(out), load_external_data=False)
        if precision in ("int8", "mixed"):
            from edgekit.graph.qdq import check_tensorrt_qdq

            details["qdq_check"] = check_tensorrt_qdq(model)
            left = float_weights(model)
            mixed = details.get("quantization", {}).get("mixed", {})
            allowed = set(mixed.get("fp16_nodes", [])) | set(mixed.get("fp32_nodes", []))
            stray = [n for n in left if n not in allowed]
            if stray and request.onnx.quantization is None:
                raise EdgekitError(f"int8 quantization left float weights in node(s): {', '.join(stray)}")
            details["float_weight_nodes"] = left
            if request.ranges is not None and opts.get("legacy_calibration_cache", True):
                details["legacy_int8"] = self._legacy_cache(request, opts)
            elif request.ranges is None:
                details["legacy_int8"] = ("not written: the ranges live in the model's own Q/DQ nodes "
                                          f"({request.onnx.quantization}); build with explicit quantization")
        inputs, outputs, opset = describe(model, request.target.input_layout)
        details["opset"] = opset
        details["session_config"] = session_config({})  # the ONNX Runtime CPU check (see OrtRunner)

        shapes, unresolved = profile_shapes(inputs, opts["batch_profile"])
        details["trtexec"] = trtexec_command(MODEL_FILE, shapes, opts.get("workspace_mb"))
        if shapes:
            details["optimization_profile"] = shapes
        if unresolved:
            details["shape_note"] = (f"input(s) {', '.join(unresolved)} have dynamic dims beyond the batch: add "
                                     "--minShapes/--optShapes/--maxShapes for them to the trtexec command")
        details.update(self._engine(request, out, shapes, opts))
        return ExportResult(MODEL_FILE, inputs, outputs, details)

    # -- precisions -------------------------------------------------------------------------------------
    def _int8(self, request: ExportRequest, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
        import onnx

        from edgekit.graph.attention import transformer_split
        from edgekit.graph.qdq import NO_OUTPUT_QUANTIZATION, nodes_to_fp16, weighted_nodes

        if request.ranges is None or request.prepared is None:
            raise EdgekitError(f"{request.precision} needs calibration ranges: give calibration data (calib=, --calib)")
        keep16, keep32 = opts["keep_fp16"], opts["keep_fp32"]
        chosen_by = "given (keep_fp16 / keep_fp32)"
        prepared = onnx.load(str(request.prepared), load_external_data=False)
        if request.precision == "mixed":
            names = {n.name for n in prepared.graph.node}
            weighted = weighted_nodes(prepared)
            unknown = [n for n in (*keep16, *keep32) if n not in names]
            if unknown:
                raise EdgekitError(
                    f"mixed: no node named {', '.join(unknown)} in the quantization-ready graph; its weighted "
                    f"nodes are: {', '.join(weighted)}"
                )
            if not keep16 and not keep32:
                # the first layer sees raw inputs and the last one produces the logits: the two that int8
                # hurts most in small CNNs, and the usual first choice to keep in higher precision
                keep16 = list(dict.fromkeys([weighted[0], weighted[-1]])) if weighted else []
                chosen_by = "default: the first and last weighted layers (pass keep_fp16/keep_fp32 to choose)"
        split = transformer_split(prepared)
        if split is not None and request.precision == "mixed" and not opts["keep_fp16"] and not opts["keep_fp32"]:
            keep16 = split["attention"]
            chosen_by = "default for a transformer: the attention score and context MatMuls in fp16"
        fmt = {**TRT_QUANT_FORMAT, "per_channel": bool(opts.get("per_channel", True))}
        extra = {"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": NO_OUTPUT_QUANTIZATION}
        exclude = [*keep16, *keep32]
        if split is not None:
            exclude = list(dict.fromkeys([*exclude, *split["not_int8"]]))
        record = quantize_static_qdq(request.prepared, out, request.ranges, fmt,
                                     nodes_to_exclude=exclude, extra_options=extra)
        record["nodes_kept_float"] = [*keep16, *keep32]
        if split is not None:
            record["transformer"] = {"int8_nodes": split["int8_nodes"], "attention_nodes": split["attention"],
                                     "rule": "int8 Q/DQ on projection and feed-forward GEMMs only; attention "
                                             "MatMuls, Softmax and LayerNorm out of int8"}
        if keep16:
            model = nodes_to_fp16(onnx.load(str(out)), keep16)
            onnx.save(model, str(out))
        record.update({
            "source": f"edgekit ranges ({request.ranges.method}), the shared calibration set",
            "rules": "TensorRT explicit quantization: int8 symmetric (zero point 0), per-tensor activations, "
                     "per-channel weights on the output-channel axis, float biases, Q/DQ on the inputs of "
                     "weighted layers and not on their outputs",
        })
        if request.precision == "mixed":
            record["mixed"] = {"fp16_nodes": keep16, "fp32_nodes": keep32, "chosen_by": chosen_by}
        return record

    def _fp16(self, request: ExportRequest, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
        import onnx

        from edgekit.graph.qdq import FP16_SENSITIVE_OPS, convert_to_fp16

        fp32_ops = sorted({*FP16_SENSITIVE_OPS, *opts["fp32_ops"]})
        model = onnx.load(str(request.onnx.path))
        converted, kept = convert_to_fp16(model, keep_io_fp32=opts["io_dtype"] == "float32", fp32_ops=fp32_ops)
        onnx.save(converted, str(out))
        return {
            "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
            "io_dtype": opts["io_dtype"],
            "fp32_ops": fp32_ops,
            "fp32_nodes": kept,
            "why": "numerically sensitive ops (reductions, exp/log/pow, softmax, normalisation) keep float32 "
                   "range and precision; Cast nodes around them fix their precision in a strongly typed network",
        }

    def _given_qdq(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        """The model's own Q/DQ (QAT): check it against TensorRT's rules instead of re-quantizing."""
        import onnx

        from edgekit.graph.qdq import check_tensorrt_qdq, fold_bias_dequantize

        if request.precision != "int8":
            raise EdgekitError(
                f"this model already carries Q/DQ quantization ({request.onnx.quantization}), which TensorRT "
                f"runs in int8: export it with precision 'int8' (--precision int8; not {request.precision})"
            )
        model = onnx.load(str(request.onnx.path))
        # the user's own nodes are named before any rewrite; a graph from `edgekit qat` gets the way to redo it
        remedy = QAT_REMEDY if request.onnx.quantization == "qat" else None
        check_tensorrt_qdq(model, allow_bias_qdq=True, remedy=remedy)
        folded = fold_bias_dequantize(model)
        onnx.save(model, str(out))
        return {"format": "QDQ", "source": f"the model's own Q/DQ nodes ({request.onnx.quantization})",
                "folded_bias_dequantize": folded,
                "rules": "checked against TensorRT's explicit quantization rules (int8, zero point 0, "
                         "per-tensor activations, per-channel weights on the output-channel axis, float biases)"}

    # -- legacy implicit INT8 -----------------------------------------------------------------------------
    def _legacy_cache(self, request: ExportRequest, opts: dict[str, Any]) -> dict[str, Any]:
        assert request.ranges is not None and request.prepared is not None
        version, where = _trt_version(opts)
        code = trt_version_code(version)
        (request.out_dir / CALIBRATION_CACHE_FILE).write_text(calibration_cache_text(request.ranges.tensors, code))
        shutil.copyfile(request.prepared, request.out_dir / LEGACY_ONNX_FILE)
        shapes, _ = profile_shapes(describe(request.prepared)[0], opts["batch_profile"])
        cmd = shlex.join(["trtexec", f"--onnx={LEGACY_ONNX_FILE}", "--int8", "--fp16",
                          f"--calib={CALIBRATION_CACHE_FILE}", "--saveEngine=model_legacy_int8.engine",
                          *_shape_flags(shapes)])
        return {
            "calibration_cache": CALIBRATION_CACHE_FILE,
            "header": f"TRT-{code}-{CALIBRATOR}",
            "tensorrt_version": f"{version} ({where})",
            "onnx": LEGACY_ONNX_FILE,
            "tensors": len(request.ranges.tensors),
            "scale": "amax / 127 with amax = max(|min|, |max|) of edgekit's ranges",
            "trtexec": cmd,
            "note": "implicit INT8 is deprecated since TensorRT 10.1 and removed in 11; the cache's tensor names "
                    f"are those of {LEGACY_ONNX_FILE}; TensorRT rejects a cache whose header names another "
                    "TensorRT version",
        }

    # -- engine -------------------------------------------------------------------------------------------
    def _engine(self, request: ExportRequest, onnx_path: Path, shapes: dict[str, list],
                opts: dict[str, Any]) -> dict[str, Any]:
        ok, reason = engine_support()
        if not opts.get("build_engine", True):
            ok, reason = False, "build_engine is false"
        if not ok:
            return {"engine": f"not built ({reason}; build it on the device with the trtexec command)",
                    "verification_runner": "onnxruntime (CPU) on model.onnx: the TensorRT-ready graph's numerics"}
        build = build_engine(onnx_path, request.out_dir / ENGINE_FILE, request.out_dir / TIMING_CACHE_FILE,
                             shapes, opts.get("workspace_mb"), opts.get("timing_cache"))
        build["target_cpu_arch"] = request.target.cpu_arch
        return {"engine": "built", "engine_file": ENGINE_FILE, "build": build,
                "verification_runner": f"tensorrt {build['tensorrt_version']} engine on {build['gpu']}"}


def _trt_version(opts: dict[str, Any]) -> tuple[str, str]:
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


class _OrtCpuRunner(OrtRunner):
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
            self._cpu = _OrtCpuRunner(self.artifact_dir, self.manifest, threads=self.threads)
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
