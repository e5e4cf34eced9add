"""A model's quantized graph for one backend, with chosen layers in higher precision, and its measurement
against FP32 on the check data: what the budgeted search, the diagnosis and the PTQ techniques all build on.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.common.metrics import sqnr_db, top1_agreement
from edgekit.errors import EdgekitError
from edgekit.quant.graphs import float_inputs, fold_float_output_weights, private_input_dequantize


@dataclass
class QuantSetup:
    """Everything needed to build and check a quantized graph of one model for one backend."""

    backend: str  # onnxruntime | tensorrt
    prepared: Path  # the quantization-ready FP32 graph (ranges are keyed on it)
    ranges: Any  # edgekit.data.calibration.Ranges
    options: dict[str, Any]  # the target's backend options
    held_x: np.ndarray
    reference: np.ndarray  # FP32 outputs on held_x
    held_y: np.ndarray | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgekit-fallback-")))

    @property
    def spec(self):
        from edgekit.backends.registry import get_spec

        return get_spec(self.backend)

    @property
    def kept_precision(self) -> str:
        """The float precision kept layers run in: the last rung of the backend's `layer_fallback`."""
        return self.spec.layer_fallback[-1] if self.spec.layer_fallback else "fp32"

    @property
    def has_int16_rung(self) -> bool:
        return "int16" in self.spec.layer_fallback

    def build_and_evaluate(self, kept: Sequence[str], tag: str, int16: Sequence[str] = ()) -> dict[str, Any]:
        """This setup's graph with `kept` layers float (and `int16` layers at 16 bits), measured on the check
        data: the one call the budgeted search makes, whatever kind of setup it searches."""
        return build_and_evaluate(self, kept, tag, int16=int16)


def layer_names(prepared: Path) -> list[str]:
    """The candidate layers: weighted nodes (Conv/ConvTranspose/Gemm/MatMul with constant weights), graph order."""
    import onnx

    from edgekit.graph.qdq import weighted_nodes

    return weighted_nodes(onnx.load(str(prepared), load_external_data=False))


def check_layers(prepared: Path, names: Sequence[str]) -> None:
    available = layer_names(prepared)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise EdgekitError(f"no weighted layer named {', '.join(unknown)} in the quantization-ready graph; its "
                           f"layers are: {', '.join(available)}")


def build(setup: QuantSetup, kept: Sequence[str], dest: Path, int16: Sequence[str] = ()) -> dict[str, Any]:
    """Write the backend's Q/DQ graph with `kept` layers in float and `int16` layers with int16 weights (see
    edgekit.quant.int16) to `dest`; returns the record the manifest keeps (the quantizer's, plus both lists)."""
    import onnx

    from edgekit.backends.onnxruntime import quantize_static_qdq

    kept, int16 = list(kept), [n for n in int16 if n not in kept]
    if int16 and not setup.has_int16_rung:
        raise EdgekitError(f"backend '{setup.backend}' has no int16 layer rung (its layer fallback: "
                           f"{', '.join(setup.spec.layer_fallback) or 'none'})")
    if setup.spec.qdq_style == "tensorrt":
        from edgekit.backends.tensorrt import TRT_QUANT_FORMAT
        from edgekit.graph.qdq import NO_OUTPUT_QUANTIZATION

        fmt = {**TRT_QUANT_FORMAT, "per_channel": bool(setup.options.get("per_channel", True))}
        extra = {"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": NO_OUTPUT_QUANTIZATION}
        record = quantize_static_qdq(setup.prepared, dest, setup.ranges, fmt, nodes_to_exclude=kept,
                                     extra_options=extra)
    else:
        extra = None
        if int16:
            from edgekit.quant.int16 import overrides

            extra = {"TensorQuantOverrides": overrides(onnx.load(str(setup.prepared), load_external_data=False),
                                                       int16, bool(setup.options.get("per_channel", True)))}
        record = quantize_static_qdq(setup.prepared, dest, setup.ranges, setup.options, nodes_to_exclude=kept,
                                     extra_options=extra)
        record.pop("quantizer_options", None)  # the overrides hold ONNX Runtime enums; summarised below
    if int16:
        from edgekit.quant.int16 import fold_weights, restore_activations

        model = onnx.load(str(dest))
        prepared = onnx.load(str(setup.prepared), load_external_data=False)
        fold_weights(model, int16, prepared)
        restore_activations(model, prepared, int16)
        private_input_dequantize(model, int16)
        onnx.save(model, str(dest))
        record["int16_layers"] = {
            "nodes": int16, "weights": "int16 symmetric per channel (ONNX Runtime QDQ, TensorQuantOverrides)",
            "bias": "float32 (an int32 bias at the int16 weight scale would overflow)",
            "stored": "the int16 grid values as float32 constants: ONNX Runtime's CPU provider has no int16 "
                      "convolution, and a constant float weight keeps its fast blocked float kernel"}
    if kept:
        model = onnx.load(str(dest))
        prepared = onnx.load(str(setup.prepared), load_external_data=False)
        restored = float_inputs(model, prepared, kept)
        folded: list[str] = []
        if setup.spec.qdq_style == "tensorrt":
            from edgekit.graph.qdq import nodes_to_fp16

            model = nodes_to_fp16(model, kept)
        else:
            folded = fold_float_output_weights(model)
        onnx.save(model, str(dest))
        record["kept_layers"] = {"nodes": kept, "precision": setup.kept_precision,
                                 "float_inputs": restored}
        if folded:
            record["kept_layers"]["float_output_layers"] = {
                "nodes": folded,
                "why": "these int8 layers feed a kept layer, so they write their output in float and ONNX Runtime "
                       "cannot fuse them into an int8 kernel; their int8 weights are stored dequantized (the same "
                       "values) so ONNX Runtime runs them with its fast float convolution instead of "
                       "dequantizing the weights on every run outside its blocked layout"}
    return record


def session(path: Path, options: dict[str, Any], threads: int = 1):
    """An ONNX Runtime CPU session with the session config the artifact ships (see onnxruntime.session_config)."""
    from edgekit.backends.onnxruntime import session_config
    from edgekit.graph.onnx_export import ort_session

    return ort_session(path, session_config(options), threads)


def run_session(sess, x: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """All outputs of `sess` on x, in batches (one sample at a time when the graph's batch is fixed)."""
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    step = inp.shape[0] if isinstance(inp.shape[0], int) else batch
    names = [o.name for o in sess.get_outputs()]
    parts = [sess.run(names, {inp.name: x[i : i + step].astype(dtype)}) for i in range(0, len(x), step)]
    return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(names))]


def evaluate(setup: QuantSetup, path: Path) -> dict[str, Any]:
    """Agreement and output SQNR of the graph at `path` against FP32 on the held-out data (+ accuracy drop)."""
    got = run_session(session(path, setup.options), setup.held_x)[0]
    out: dict[str, Any] = {"agreement": top1_agreement(setup.reference, got),
                           "sqnr_db": db(sqnr_db(setup.reference, got))}
    if setup.held_y is not None:
        y = setup.held_y.reshape(-1)
        ref_acc = float((setup.reference.reshape(len(y), -1).argmax(1) == y).mean())
        acc = float((got.reshape(len(y), -1).argmax(1) == y).mean())
        out.update({"accuracy": acc, "reference_accuracy": ref_acc, "accuracy_drop": ref_acc - acc})
    return out


def db(x: float) -> float:
    """An SQNR for JSON: rounded, and 200 dB standing for an exact match (JSON has no infinity)."""
    return 200.0 if math.isinf(x) else round(float(x), 3)


def build_and_evaluate(setup: QuantSetup, kept: Sequence[str], tag: str, int16: Sequence[str] = ()
                       ) -> dict[str, Any]:
    path = setup.workdir / f"{tag}.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    build(setup, kept, path, int16)
    return evaluate(setup, path)
