"""ONNX -> TFLite, in process: onnxsim, onnx2tf (ONNX -> a tf-keras graph in NHWC) and TensorFlow's
TFLiteConverter (graph -> .tflite at the asked precision).

Why not onnx2tf's own .tflite files: its int8 path also allows TensorFlow (Flex) ops, writes seven models
where one is wanted, and turns conversion failures into warnings. Here onnx2tf only builds the graph and
TensorFlow's converter is driven with exactly one setting per precision; the caller then reads the file back
(tflite_inspect) to check what really came out.

Noise and networks: TensorFlow and onnx2tf print to the process's file descriptors (C++ logs, progress,
colour codes); `quiet` captures all of it, so `edgekit` keeps its one-line errors, and the captured text
feeds the error message when something fails. onnx2tf downloads 20 sample images for models with a
3-channel 4-D input (`download_test_image_data`) unless a file of that name is in its working directory;
`write_sample_images` puts one there, made from the calibration data, so conversion never touches the
network.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

# onnx2tf 1.28.x: utils/common_functions.py download_test_image_data() reads this file from os.getcwd()
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tail(io.TextIOBase):
    """A text sink that never closes and keeps the last part of what was written (for error messages).

    Loggers created while it is sys.stderr keep a reference to it, so it must stay writable forever.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.text = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text = (self.text + s)[-self.limit :]
        return len(s)


@dataclass
class Captured:
    python: _Tail = field(default_factory=_Tail)
    native: str = ""

    def text(self) -> str:
        return _ANSI.sub("", self.native + "\n" + self.python.text)

    def error_line(self, default: str) -> str:
        """The most telling line of what was printed: onnx2tf's ERROR lines first, then converter errors."""
        lines = [ln.strip() for ln in self.text().splitlines() if ln.strip()]
        for pattern in (r"^ERROR:", r"error:", r"Error"):
            hits = [ln for ln in lines if re.search(pattern, ln) and "Traceback" not in ln]
            if hits:
                return _short(re.sub(r"^ERROR:\s*", "", hits[0]))
        return default


def _short(s: str, limit: int = 240) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def quiet() -> Iterator[Captured]:
    """Capture everything written to stdout/stderr, Python objects and file descriptors 1 and 2 alike."""
    cap = Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as sink:
        saved: list[int] = []
        try:
            saved = [os.dup(1), os.dup(2)]
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        except OSError:  # no usable descriptors (embedded interpreter): capture Python-level output only
            for fd in saved:
                os.close(fd)
            saved = []
        try:
            with contextlib.redirect_stdout(cap.python), contextlib.redirect_stderr(cap.python), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield cap
        finally:
            _flush_c_stdio()
            if saved:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
            sink.seek(0)
            cap.native = sink.read()[-200_000:].decode("utf-8", errors="replace")


def channel_last(ndim: int) -> tuple[int, ...]:
    """NCHW -> NHWC (and NCW -> NWC, NCDHW -> NDHWC) as a transpose permutation."""
    return (0, *range(2, ndim), 1)


def write_sample_images(folder: Path, nhwc: np.ndarray | None) -> None:
    """The file onnx2tf would otherwise download, made from the calibration samples (seeded noise without).

    onnx2tf only runs its own ONNX check on these (its choice of some layouts depends on that run), so
    samples of the user's own distribution are the better choice, resized (nearest) to 128x128.
    """
    n, h, w, c = SAMPLE_SHAPE
    sample = None
    if nhwc is not None and nhwc.ndim == 4 and nhwc.shape[3] == c and len(nhwc):
        x = nhwc[np.arange(n) % len(nhwc)]
        iy = np.arange(h) * x.shape[1] // h
        ix = np.arange(w) * x.shape[2] // w
        sample = x[:, iy][:, :, ix]
    if sample is None:
        sample = np.random.default_rng(0).standard_normal(SAMPLE_SHAPE, dtype=np.float32)
    np.save(folder / SAMPLE_FILE, np.ascontiguousarray(sample, dtype=np.float32))


def simplify(src: Path, dest: Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> bool:
    """onnxsim once, in process; False (and the graph copied as is) if it fails. `input_shapes` fixes dynamic
    input shapes first (static shapes let it fold a transformer's shape arithmetic).

    onnx2tf would run the `onnxsim` command three times (~4 s each, and silently skipped when the venv's bin
    folder is not on PATH); so onnx2tf is told not to, and no PATH setup is needed.
    """
    import onnx

    model = onnx.load(str(src))
    try:
        import onnxsim

        shapes = {k: list(v) for k, v in input_shapes.items()} if input_shapes else None
        simplified, ok = onnxsim.simplify(model, overwrite_input_shapes=shapes)
    except Exception:
        ok = False
    onnx.save(simplified if ok else model, str(dest))
    return bool(ok)


def _dims_match(a: tuple, b: tuple) -> bool:
    """Shapes agree where both are known (str, None and -1 are dynamic dimensions)."""
    def known(d: Any) -> bool:
        return isinstance(d, int) and d >= 0

    return len(a) == len(b) and all(not (known(x) and known(y)) or x == y for x, y in zip(a, b, strict=True))


def layout_perm(source_shape: tuple, converted_shape: tuple, prefer_channel_last: bool = True) -> list[int] | None:
    """The permutation that takes a tensor from the source (ONNX) layout to the converted one, or None.

    onnx2tf turns 3-D to 5-D tensors channel-last; shapes tell which way a tensor went unless they are
    ambiguous (e.g. 1x8x8x8), in which case onnx2tf's convention (channel-last) is assumed.
    """
    ndim = len(source_shape)
    if ndim < 3 or len(converted_shape) != ndim:
        return None
    perm = channel_last(ndim)
    moved = _dims_match(tuple(source_shape[p] for p in perm), tuple(converted_shape))
    same = _dims_match(tuple(source_shape), tuple(converted_shape))
    if moved and (not same or prefer_channel_last):
        return list(perm)
    if same:
        return None
    raise EdgekitError(f"cannot relate the converted tensor shape {list(converted_shape)} to the ONNX shape "
                       f"{list(source_shape)}: the tflite backend expects onnx2tf's channel-last layout")


@dataclass
class Conversion:
    tflite: bytes
    onnx_simplified: bool
    #: source (NCHW) -> model input layout permutation, None when the layout was kept
    input_perm: list[int] | None
    log_tail: str = ""


PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")


def convert(onnx_path: Path, precision: str, *, input_shape: tuple, calibration: np.ndarray | None,
            keep_nchw_inputs: list[str], per_channel: bool = True, allow_float_fallback: bool = False) -> Conversion:
    """Convert a verified FP32 ONNX file with one input to .tflite bytes at `precision`.

    `calibration` (int8 only) holds the calibration samples in the source model's layout (NCHW); they are
    transposed to the converted model's input layout to become the representative dataset. The ONNX file is
    never modified: the converters work on a copy in a private temporary folder.
    """
    if precision not in PRECISIONS:
        raise EdgekitError(f"the tflite backend has no precision '{precision}'; it offers {', '.join(PRECISIONS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # conversion needs no oneDNN kernels, only their memory
    lean_malloc()
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-") as tmp:
        work = Path(tmp).resolve()
        model_copy = work / "model.onnx"
        with quiet() as cap:
            simplified = simplify(Path(onnx_path), model_copy)
            sample = None
            if calibration is not None and calibration.ndim == 4 and not keep_nchw_inputs:
                sample = calibration.transpose(channel_last(4))
            write_sample_images(work, sample)
            model = run_onnx2tf(model_copy, work, keep_nchw_inputs, cap)
            return_freed_memory()  # onnx2tf's temporaries, before the converter's own peak
            try:
                converted = tuple(model.inputs[0].shape)
                perm = layout_perm(tuple(input_shape), converted, prefer_channel_last=not keep_nchw_inputs)
                representative = None
                if calibration is not None:
                    representative = calibration.transpose(perm) if perm else calibration
                data = convert_keras(model, precision, representative, per_channel, allow_float_fallback, cap)
            finally:
                del model
                release()
                return_freed_memory()
        return Conversion(data, simplified, perm, cap.text()[-4000:])


def run_onnx2tf(model_copy: Path, work: Path, keep_nchw_inputs: list[str], cap: Captured, **options: Any):
    """onnx2tf on the copy in `work`, in memory (no SavedModel written); `options` go to onnx2tf.convert."""
    import onnx2tf

    try:
        with contextlib.chdir(work):  # onnx2tf reads its sample file from the working directory
            model = onnx2tf.convert(
                input_onnx_file_path=str(model_copy), output_folder_path=str(work / "tf"),
                disable_model_save=True, not_use_onnxsim=True, non_verbose=True, verbosity="error",
                keep_ncw_or_nchw_or_ncdhw_input_names=keep_nchw_inputs or None, **options,
            )
    except SystemExit:
        raise EdgekitError(f"onnx2tf {_version('onnx2tf')} could not convert the ONNX graph to TensorFlow: "
                           f"{cap.error_line('no reason given')}") from None
    except Exception as exc:
        raise EdgekitError(f"onnx2tf {_version('onnx2tf')} could not convert the ONNX graph to TensorFlow: "
                           f"{_short(f'{type(exc).__name__}: {exc}')}") from None
    if model is None:
        raise EdgekitError(f"onnx2tf {_version('onnx2tf')} returned no model: {cap.error_line('no reason given')}")
    return model


def convert_keras(model, precision: str, representative: np.ndarray | dict[str, np.ndarray] | None,
                  per_channel: bool, allow_float_fallback: bool, cap: Captured, int8_io: bool = True) -> bytes:
    """The tf-keras model onnx2tf built -> .tflite bytes. `representative` (int8): one array for a one-input
    model, or arrays keyed by the model's input names; `int8_io` makes a full-integer model's input and
    output tensors int8 (False keeps them as converted, e.g. integer token ids in, float out)."""
    import tensorflow as tf

    fn = tf.function(lambda *inputs: model(inputs),
                     input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs])
    concrete = fn.get_concrete_function()
    # The converter saves `trackable` as a SavedModel to keep the serving_default signature apps call. Given
    # the tf-keras model itself it serialises every layer's Keras metadata (about 10 s for a 1 M-parameter
    # model); a bare tf.Module holding the function and the variables gives a byte-identical file in ~1 s.
    holder = tf.Module()
    holder.weights = list(model.variables)
    holder.serve = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # never Flex (TensorFlow) ops
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel = not per_channel
    elif precision == "int8":
        if representative is None:
            raise EdgekitError("int8 needs calibration data (calib=, --calib)")
        if isinstance(representative, dict):
            named = [representative[t.name.split(":")[0]] for t in model.inputs]

            def dataset():
                for i in range(len(named[0])):
                    yield [np.ascontiguousarray(a[i : i + 1]) for a in named]
        else:
            samples = representative  # often a transposed view: made contiguous one sample at a time, not copied

            def dataset():
                for i in range(len(samples)):
                    yield [np.ascontiguousarray(samples[i : i + 1], dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if allow_float_fallback:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        converter._experimental_disable_per_channel = not per_channel
    try:
        return bytes(converter.convert())
    except Exception as exc:
        detail = _converter_reason(str(exc)) or cap.error_line(type(exc).__name__)
        hint = "" if precision != "int8" or allow_float_fallback else \
            "; if an op has no int8 kernel, pass allow_float_fallback=True (--allow-float-fallback) to keep it in float"
        raise EdgekitError(f"TFLite converter (tensorflow {_version('tensorflow')}) failed for {precision}: "
                           f"{detail}{hint}") from None


def _converter_reason(message: str) -> str:
    """The first `error:` line of an MLIR converter message, without its source location."""
    for line in message.splitlines():
        if "error:" in line:
            return _short(line.split("error:", 1)[1].strip())
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return _short(lines[0]) if lines else ""


def lean_malloc() -> None:
    """Keep glibc from hoarding the converters' freed memory: TensorFlow's thread pools each get a malloc
    arena, and glibc's adaptive mmap threshold moves large freed blocks onto the heap, where RSS stays after
    they are freed. Two arenas and a fixed 4 MiB mmap threshold (large blocks go straight back to the OS on
    free) cut an int8 export's peak of a 224x224 model by about 100 MB. A no-op where glibc is absent."""
    import ctypes

    m_mmap_threshold, m_arena_max = -3, -8  # mallopt parameters from glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_arena_max, 2)
        libc.mallopt(m_mmap_threshold, 4 * 2**20)


def return_freed_memory() -> None:
    """Give memory freed by the converters back to the OS (glibc keeps freed heap pages otherwise), so the
    next stage's peak does not stack on top of the last one's garbage. A no-op where glibc is absent."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release() -> None:
    """Free the tf-keras graph state one conversion leaves behind (exports may run many in one process)."""
    with contextlib.suppress(Exception):
        import tf_keras

        tf_keras.backend.clear_session()


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    return {name: _version(name) for name in ("onnx2tf", "tensorflow", "tf-keras", "onnxsim", "ai-edge-litert")}
