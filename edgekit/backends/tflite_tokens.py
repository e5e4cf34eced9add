"""TFLite for models with token inputs (transformer encoders): conversion at a fixed sequence length and the
feeding rules the LiteRT runner applies to them.

TFLite wants static shapes, so the ONNX graph (dynamic batch and sequence) is converted at batch 1 and the
exported maximum sequence length. At run time shorter sequences are padded to that length with zeros (pad
ids and attention-mask zeros, which the model ignores) and outputs with a sequence axis are cut back to the
length given; longer sequences are refused. Inputs are matched by name through the model's serving
signature, since onnx2tf orders a multi-input model's tensors its own way.

onnx2tf needs two settings for BERT-style graphs: its accuracy "correction" search trips over the attention
scale (a constant Mul on a square score matrix) unless strict mode is off, and the GELU's `Erf` has no TFLite
builtin, so it is written as the usual polynomial of builtin ops (absolute error below 2e-7). Its layout
heuristics can still pick a wrong transpose when two axes have the same size (a sequence length equal to
the hidden size), so the converted TensorFlow graph is checked against ONNX Runtime on one sample before
any TFLite file is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

SEQUENCE = "sequence"
#: the converted graph must reproduce ONNX Runtime's outputs at least this well (cosine, fp32)
CONVERSION_MIN_COSINE = 0.999
#: onnx2tf settings every token-input conversion uses (see the module docstring)
ONNX2TF_OPTIONS: dict[str, Any] = {"disable_strict_mode": True, "replace_to_pseudo_operators": ["erf"]}


def is_token_model(inputs: Sequence[Any]) -> bool:
    """Several inputs, or an input that is not float: what the one-float-input image path cannot take."""
    return len(inputs) != 1 or not str(inputs[0].dtype).startswith("float")


def fixed_shapes(onnx_inputs: Sequence[Any], source_inputs: Sequence[Any] | None) -> dict[str, tuple[int, ...]]:
    """Each input's static shape: batch 1, the sequence at its exported maximum, fixed axes as they are."""
    specs = {s.name: s for s in source_inputs or ()}
    out: dict[str, tuple[int, ...]] = {}
    for t in onnx_inputs:
        spec = specs.get(t.name)
        dims: list[int] = []
        for axis, d in enumerate(t.shape):
            if axis == 0:
                dims.append(1)
            elif isinstance(d, int) and d > 0:
                dims.append(d)
            else:
                size = None
                if spec is not None and axis < len(spec.dims):
                    name = str(spec.dims[axis])
                    size = spec.max.get(name) or spec.example.get(name)
                if not size:
                    raise EdgekitError(f"the tflite backend converts at static shapes, but input '{t.name}' axis "
                                       f"{axis} ('{d}') has no exported maximum: give the length with "
                                       f"--input-spec (e.g. {t.name}:{t.dtype}:1x128)")
                dims.append(int(size))
        out[t.name] = tuple(dims)
    return out


def pad_feeds(feeds: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str],
              can_pad: bool) -> tuple[dict[str, np.ndarray], int | None]:
    """Named feeds -> arrays of the model's fixed shape and dtypes, and the sequence length given (None when
    nothing was padded). Zeros pad: pad token id and attention-mask zeros."""
    out: dict[str, np.ndarray] = {}
    given = None
    for name, shape in shapes.items():
        arr = np.asarray(feeds[name])
        want = int(shape[1]) if len(shape) > 1 else None
        if arr.ndim != len(shape):
            raise EdgekitError(f"input '{name}' has rank {arr.ndim} (shape {list(arr.shape)}); this .tflite model "
                               f"takes rank {len(shape)} ({'x'.join(map(str, shape))})")
        if want is not None and arr.shape[1] != want:
            if arr.shape[1] > want:
                raise EdgekitError(f"input '{name}' has a sequence of {arr.shape[1]} but this .tflite model was "
                                   f"converted at a fixed length of {want} (TFLite needs static shapes): "
                                   f"truncate to {want} tokens or export with a longer --input-spec")
            if not can_pad:
                raise EdgekitError(f"input '{name}' has a sequence of {arr.shape[1]}, this .tflite model takes "
                                   f"exactly {want} and has no attention mask to pad with: give {want} tokens")
            given = int(arr.shape[1]) if given is None else min(given, int(arr.shape[1]))
            pad = [(0, 0)] * arr.ndim
            pad[1] = (0, want - arr.shape[1])
            arr = np.pad(arr, pad)
        dtype = np.dtype(dtypes[name])
        if np.issubdtype(dtype, np.integer) and arr.size and np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise EdgekitError(f"input '{name}' holds values outside {dtype} (the .tflite model's input type)")
        out[name] = np.ascontiguousarray(arr.astype(dtype, copy=False))
    return out, given


@dataclass
class TokenConversion:
    tflite: bytes
    onnx_simplified: bool
    #: ONNX output index -> the serving signature's output key (output_0, ...)
    output_keys: list[str]
    #: ONNX input name -> the dtype the .tflite model takes
    input_dtypes: dict[str, str]
    #: the worst cosine of the converted TensorFlow graph against ONNX Runtime on the check sample
    conversion_cosine: float


def convert(onnx_path: Path, precision: str, *, shapes: dict[str, tuple[int, ...]], check: dict[str, np.ndarray],
            calibration: dict[str, np.ndarray] | None, per_channel: bool = True,
            allow_float_fallback: bool = False) -> TokenConversion:
    """Convert a verified FP32 ONNX file with token inputs to .tflite bytes at `precision`.

    `check` is one sample (already of `shapes`) the converted graph must reproduce; `calibration` (int8)
    holds the representative samples, padded to `shapes`. The ONNX file itself is never modified."""
    from edgekit.backends import tflite_convert as tc

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tc.lean_malloc()
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-") as tmp:
        work = Path(tmp).resolve()
        model_copy = work / "model.onnx"
        with tc.quiet() as cap:
            simplified = tc.simplify(Path(onnx_path), model_copy, input_shapes=shapes)
            tc.write_sample_images(work, None)
            ois = [f"{name}:{','.join(map(str, dims))}" for name, dims in shapes.items()]
            model = tc.run_onnx2tf(model_copy, work, [], cap, overwrite_input_shape=ois, **ONNX2TF_OPTIONS)
            tc.return_freed_memory()
            try:
                names = [t.name.split(":")[0] for t in model.inputs]
                cosine = _check_graph(model, names, Path(onnx_path), check)
                dtypes = {n: t.dtype.name for n, t in zip(names, model.inputs, strict=True)}
                representative = None
                if calibration is not None:
                    representative = {n: calibration[n].astype(dtypes[n], copy=False) for n in names}
                data = tc.convert_keras(model, precision, representative, per_channel, allow_float_fallback, cap,
                                        int8_io=False)
            finally:
                del model
                tc.release()
                tc.return_freed_memory()
    keys = _output_keys(data)
    return TokenConversion(data, simplified, keys, dtypes, cosine)


def smoke_run(data: bytes, precision: str, sample: Mapping[str, np.ndarray], dtypes: Mapping[str, str]) -> None:
    """One LiteRT run of the converted file: the converter can write models whose int8 kernels refuse
    their own inputs (e.g. a DIV whose quantized divisor is zero), which must fail the export, not the user."""
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.backends.tflite_convert import quiet

    with quiet():
        try:
            Interpreter(model_content=data).get_signature_runner()(
                **{n: np.asarray(sample[n]).astype(dtypes[n], copy=False) for n in dtypes})
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise EdgekitError(f"the {precision} .tflite model converted but LiteRT cannot run it ({reason}); "
                               "TFLite's int8 kernels do not fit this graph: export at precision 'dynamic-int8' "
                               "or 'fp16' instead") from None


def _check_graph(model: Any, names: list[str], onnx_path: Path, sample: dict[str, np.ndarray]) -> float:
    """The TensorFlow graph onnx2tf built, run on one sample, against ONNX Runtime on the source graph."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {i.name: sample[i.name] for i in sess.get_inputs()})
    got = model([sample[n].astype(model.inputs[k].dtype.name) for k, n in enumerate(names)])
    got = [np.asarray(g) for g in (got if isinstance(got, list | tuple) else [got])]
    if len(got) != len(ref):
        raise EdgekitError(f"onnx2tf's graph has {len(got)} output(s), the ONNX model {len(ref)}")
    worst = 1.0
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        if r.shape != g.shape:
            raise EdgekitError(f"onnx2tf's output {k} has shape {list(g.shape)}, the ONNX model's {list(r.shape)}: "
                               "it changed the layout; export at another sequence length (--input-spec)")
        a, b = r.ravel().astype(np.float64), g.ravel().astype(np.float64)
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        cos = float(a @ b / denom) if denom > 0 else float(np.allclose(a, b))
        worst = min(worst, cos)
    if worst < CONVERSION_MIN_COSINE:
        raise EdgekitError(f"onnx2tf converted the graph wrongly (cosine {worst:.4f} to ONNX Runtime on a check "
                           "sample; its layout guesses fail when two axes have the same size, e.g. a sequence "
                           "length equal to the hidden size): export at another sequence length (--input-spec)")
    return worst


def _output_keys(data: bytes) -> list[str]:
    """The serving signature's output keys in ONNX output order (onnx2tf names them output_0, output_1...)."""
    from ai_edge_litert.interpreter import Interpreter

    with contextlib.redirect_stderr(None):
        sig = Interpreter(model_content=data).get_signature_list()
    outputs = next(iter(sig.values()))["outputs"] if sig else []
    keys = sorted(outputs, key=lambda k: int(k.rsplit("_", 1)[1]) if k.rsplit("_", 1)[-1].isdigit() else 0)
    if not keys:
        raise EdgekitError("the .tflite model has no serving signature to feed its inputs by name")
    return keys
