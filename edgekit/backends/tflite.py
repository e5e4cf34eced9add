"""TFLite backend on the LiteRT runtime: full-integer int8, fp16 weights, dynamic-range int8 and fp32.

Conversion: the verified FP32 ONNX goes through onnx2tf (which also turns the layout to NHWC) and
TensorFlow's TFLiteConverter (see tflite_convert). For int8 the representative dataset is the pipeline's
calibration set, the same samples with the same preprocessing every backend uses, transposed to NHWC; the
converter computes its own min/max ranges from it, so this backend needs none of edgekit's ORT ranges.
With int8 PTQ techniques the pipeline hands it the improved FP32 graph instead of the export (learned
rounding's weights lie on the converter's own per-channel grid, corrected biases are plain floats); the
techniques are fitted on an ONNX Runtime stand-in of this format (`standin_qdq_format`).

Full integer means: int8 weights and activations, int8 input and output tensors, builtin int8 kernels only.
TensorFlow's converter quietly keeps an op in float when it has no int8 kernel, so the written file is read
back and every op still computing in float is named; that fails the export unless the user allowed float
fallback, in which case the manifest lists those ops.

The runner takes what the torch model takes (NCHW float), transposes to the model's layout and quantizes
with the input tensor's own scale and zero point, then dequantizes (and transposes back) the outputs, so
accuracy checks compare like with like. `raw_io=True` feeds and returns the model's own tensors (int8 NHWC
for a full-integer model), as an app on the device would.

Models with token inputs (transformers: int64 input_ids / attention_mask) take another route, in
tflite_tokens: converted at batch 1 and the exported maximum sequence length (recorded in the manifest),
fed by name through the serving signature, shorter sequences padded and longer ones refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.backends.base import Exporter, ExportRequest, ExportResult, TensorSpec, phone_step
from edgekit.errors import EdgekitError

PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")
#: below this many samples the converter's min/max ranges are too noisy to ship
MIN_CALIBRATION_SAMPLES = 10
MODEL_FILE = "model.tflite"
_LAYOUT_NAMES = {3: ("NCW", "NWC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}


def _layout(ndim: int, perm: list[int] | None) -> str | None:
    names = _LAYOUT_NAMES.get(ndim)
    if names is None:
        return None
    return names[1] if perm else names[0]


def _dims(signature: tuple[int, ...], source: tuple[int | str, ...], perm: list[int] | None) -> tuple[int | str, ...]:
    """TFLite's shape signature with its dynamic dimensions (-1) named as in the ONNX model."""
    named = [source[p] for p in perm] if perm else list(source)
    out: list[int | str] = []
    for k, d in enumerate(signature):
        if d >= 0:
            out.append(int(d))
        else:
            name = named[k] if k < len(named) and isinstance(named[k], str) else "N" if k == 0 else f"d{k}"
            out.append(name)
    return tuple(out)


def _readable(tensor_name: str) -> str:
    """TFLite tensor names carry tf-keras scopes (model_3/tf.math.sin/Sin;...): keep the first op path."""
    first = tensor_name.split(";")[0]
    return first.split("/", 1)[1] if first.startswith("model") and "/" in first else first


def standin_qdq_format(options: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime Q/DQ options that reproduce TFLite's full-integer format, for fitting and measuring PTQ
    techniques before the converter runs: int8 activations per tensor with a zero point (asymmetric), int8
    weights symmetric per output channel with scale max|w|/127 (or per tensor without per_channel), as
    TFLite's converter quantizes them. The activation ranges are edgekit's, not the converter's own min/max
    over the representative dataset, so measurements on it approximate the .tflite; the weight grid is exact."""
    return {"activation_type": "int8", "activation_symmetric": False, "weight_type": "int8",
            "per_channel": bool(options.get("per_channel", True)), "reduce_range": False}


def converter_details(precision: str) -> dict[str, Any]:
    """The manifest's record of how a TFLite artifact was converted (tool versions), for every route."""
    from edgekit.backends import tflite_convert

    versions = tflite_convert.versions()
    return {"precision": precision, "converter_versions": versions,
            "converter": f"onnx2tf {versions['onnx2tf']} + tf.lite.TFLiteConverter "
                         f"(tensorflow {versions['tensorflow']})"}


def next_step(manifest: dict[str, Any]) -> str | None:
    return phone_step(manifest, "benchmark_model", "--graph={model} --num_threads=1",
                      "push TFLite's benchmark_model for the phone first; or edgekit bench ART --device "
                      "adb://SERIAL --benchmark-model PATH")


class TfliteExporter(Exporter):
    """ONNX -> .tflite. Options (target backend_options, or `--backend-option`): per_channel (weights, default
    true), allow_float_fallback (int8: keep ops without an int8 kernel in float instead of failing), xnnpack
    (recorded for the runner, default true)."""

    needs_calibration = ("int8",)
    uses_ranges = ()
    backend = "tflite"

    def export(self, request: ExportRequest) -> ExportResult:
        precision = request.precision
        if precision not in PRECISIONS:
            raise EdgekitError(f"the tflite backend has no precision '{precision}'; it offers {', '.join(PRECISIONS)}")
        options = {**request.target.backend_options, **self.options}
        allow_fallback = bool(options.get("allow_float_fallback", False))
        per_channel = bool(options.get("per_channel", True))
        xnnpack = bool(options.get("xnnpack", True))
        onnx_inputs = request.onnx.inputs
        from edgekit.backends import tflite_tokens

        if tflite_tokens.is_token_model(onnx_inputs):
            return self._export_tokens(request, per_channel, allow_fallback, xnnpack)
        source_in = onnx_inputs[0]
        calibration = None
        if precision == "int8":
            cset = request.calibration
            if cset is None:
                raise EdgekitError("tflite int8 needs calibration data for its representative dataset: "
                                   "give calibration data (calib=, --calib: .npz with x, .npy, or zoo:digits)")
            if cset.count < MIN_CALIBRATION_SAMPLES:
                raise EdgekitError(f"calibration set '{cset.source}' has {cset.count} sample(s); tflite int8 "
                                   f"needs at least {MIN_CALIBRATION_SAMPLES} (a few hundred is better): pass "
                                   "more calibration samples (calib=, --calib) or a higher calib_samples "
                                   "(--calib-samples)")
            calibration = cset.x
        keep_nchw = [source_in.name] if request.target.input_layout == "NCHW" else []

        from edgekit.backends import tflite_convert
        from edgekit.backends.tflite_inspect import read_tflite

        conv = tflite_convert.convert(
            request.onnx.path, precision, input_shape=tuple(source_in.shape), calibration=calibration,
            keep_nchw_inputs=keep_nchw, per_channel=per_channel, allow_float_fallback=allow_fallback,
        )
        summary = read_tflite(conv.tflite)
        float_ops = [{"op": f["op"], "tensor": _readable(f["output"])} for f in summary.float_ops()]
        if precision == "int8":
            self._check_full_integer(summary, float_ops, allow_fallback)
        (request.out_dir / MODEL_FILE).write_bytes(conv.tflite)

        in_perm = conv.input_perm
        if len(summary.outputs) != len(request.onnx.outputs):
            raise EdgekitError(f"the .tflite model has {len(summary.outputs)} output(s) but the ONNX model has "
                               f"{len(request.onnx.outputs)}: onnx2tf changed the graph's outputs")
        io_in = [self._io(source_in, summary.inputs[0], in_perm)]
        io_out = []
        for spec, t in zip(request.onnx.outputs, summary.outputs, strict=True):
            perm = tflite_convert.layout_perm(tuple(spec.shape), t.signature)
            io_out.append(self._io(spec, t, perm))
        inputs = [TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], d["layout"]) for d in io_in]
        outputs = [TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], d["layout"]) for d in io_out]
        details: dict[str, Any] = {
            **converter_details(precision),
            "onnx_simplified": conv.onnx_simplified,
            "input_layout": io_in[0]["layout"] or "as ONNX",
            "inputs": io_in,
            "outputs": io_out,
            "input_quantization": {"scale": io_in[0]["scale"], "zero_point": io_in[0]["zero_point"]},
            "output_quantization": [{"scale": d["scale"], "zero_point": d["zero_point"]} for d in io_out],
            "ops": summary.op_counts(),
            "float_ops": float_ops if precision == "int8" else [],
            "allow_float_fallback": allow_fallback,
            "quantization": self._quantization(precision, per_channel),
            "runtime": {"interpreter": "ai_edge_litert.interpreter.Interpreter", "xnnpack": xnnpack},
        }
        if precision == "int8":
            details["calibration_method"] = (
                "TFLite converter min/max over the representative dataset "
                f"({'per-channel' if per_channel else 'per-tensor'} int8 weights, per-tensor int8 activations)"
            )
            details["representative_dataset"] = {"samples": len(calibration), "batch": 1,
                                                 "layout": io_in[0]["layout"] or "as ONNX",
                                                 "transpose_from_source": in_perm}
        return ExportResult(MODEL_FILE, inputs, outputs, details)

    def _export_tokens(self, request: ExportRequest, per_channel: bool, allow_fallback: bool,
                       xnnpack: bool) -> ExportResult:
        """Token inputs (a transformer): converted at batch 1 and the exported maximum sequence length."""
        from edgekit.backends import tflite_tokens
        from edgekit.backends.tflite_inspect import read_tflite
        from edgekit.common import io

        precision = request.precision
        onnx_inputs = request.onnx.inputs
        specs = list(request.source.inputs) if request.source is not None else []
        shapes = tflite_tokens.fixed_shapes(onnx_inputs, specs)
        source_dtypes = {t.name: t.dtype for t in onnx_inputs}
        calibration = None
        if precision == "int8":
            cset = request.calibration
            feeds = (cset.named or None) if cset is not None else None
            if feeds is None or "x" in feeds:
                raise EdgekitError("tflite int8 of a model with token inputs needs calibration data keyed by input "
                                   f"name ({', '.join(shapes)}): give --calib sentences (.txt, zoo:sentences) or "
                                   "an .npz with one array per input")
            if cset.count < MIN_CALIBRATION_SAMPLES:
                raise EdgekitError(f"calibration set '{cset.source}' has {cset.count} sample(s); tflite int8 "
                                   f"needs at least {MIN_CALIBRATION_SAMPLES}: pass more calibration samples")
            calibration, _ = tflite_tokens.pad_feeds(feeds, shapes, source_dtypes, can_pad=True)
        if calibration is not None:
            check = io.take(calibration, slice(0, 1))
        else:
            sized = [s for s in specs if s.name in shapes]
            if len(sized) == len(shapes):
                check = io.random_feeds(sized, 1, seed=0, **{io.SEQUENCE: max(d[-1] for d in shapes.values())})
                check, _ = tflite_tokens.pad_feeds(check, shapes, source_dtypes, can_pad=True)
            else:
                check = {n: np.ones(d, dtype=source_dtypes[n]) for n, d in shapes.items()}

        conv = tflite_tokens.convert(request.onnx.path, precision, shapes=shapes, check=check,
                                     calibration=calibration, per_channel=per_channel,
                                     allow_float_fallback=allow_fallback)
        summary = read_tflite(conv.tflite)
        float_ops = [{"op": f["op"], "tensor": _readable(f["output"])} for f in summary.float_ops()]
        if precision == "int8" and float_ops and not allow_fallback:
            self._check_full_integer(summary, float_ops, allow_fallback)
        tflite_tokens.smoke_run(conv.tflite, precision, check, conv.input_dtypes)
        (request.out_dir / MODEL_FILE).write_bytes(conv.tflite)
        if len(conv.output_keys) != len(request.onnx.outputs):
            raise EdgekitError(f"the .tflite model has {len(conv.output_keys)} output(s) but the ONNX model has "
                               f"{len(request.onnx.outputs)}: onnx2tf changed the graph's outputs")
        out_types, tensor_names = self._signature_io(conv.tflite, conv.output_keys)
        io_in = []
        for name, dims in shapes.items():
            dtype = conv.input_dtypes[name]
            entry = {"name": name, "tflite_name": name, "tensor_name": tensor_names.get(name), "dtype": dtype,
                     "shape": list(dims), "layout": None,
                     "source_dtype": source_dtypes[name], "source_shape": list(_by_name(onnx_inputs, name).shape)}
            if dtype != source_dtypes[name]:
                entry["cast"] = f"{source_dtypes[name]} -> {dtype} (the runner casts; values must fit {dtype})"
            io_in.append(entry)
        io_out = []
        for spec, key in zip(request.onnx.outputs, conv.output_keys, strict=True):
            dtype, shape, scale, zero = out_types[key]
            io_out.append({"name": spec.name, "tflite_name": key, "dtype": dtype, "shape": shape, "layout": None,
                           "source_shape": list(spec.shape), "scale": scale, "zero_point": zero,
                           "sequence_axis": _sequence_axis(spec.shape)})
        length = max(d[1] for d in shapes.values() if len(d) > 1) if any(len(d) > 1 for d in shapes.values()) \
            else None
        inputs = [TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], None) for d in io_in]
        outputs = [TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], None) for d in io_out]
        details: dict[str, Any] = {
            **converter_details(precision),
            "onnx2tf_options": dict(tflite_tokens.ONNX2TF_OPTIONS),
            "onnx_simplified": conv.onnx_simplified,
            "token_inputs": True,
            "fixed_shapes": {k: list(v) for k, v in shapes.items()},
            "sequence_length": length,
            "padding": "shorter sequences are padded with zeros (pad id, attention-mask 0) to the fixed length "
                       "and outputs with a sequence axis cut back; longer ones are refused",
            "conversion_check": {"cosine_worst": round(conv.conversion_cosine, 6),
                                 "against": "ONNX Runtime FP32 on one sample, before the TFLite converter"},
            "input_layout": "as ONNX",
            "inputs": io_in,
            "outputs": io_out,
            "output_quantization": [{"scale": d["scale"], "zero_point": d["zero_point"]} for d in io_out],
            "ops": summary.op_counts(),
            "float_ops": float_ops if precision == "int8" else [],
            "allow_float_fallback": allow_fallback,
            "quantization": self._quantization(precision, per_channel),
            "runtime": {"interpreter": "ai_edge_litert.interpreter.Interpreter", "xnnpack": xnnpack,
                        "feeds": "by name through the serving signature"},
        }
        if precision == "int8":
            details["quantization"] = {**details["quantization"], "inference_input_type": "as converted (token ids)",
                                       "inference_output_type": "as converted"}
            details["calibration_method"] = (
                "TFLite converter min/max over the representative dataset "
                f"({'per-channel' if per_channel else 'per-tensor'} int8 weights, per-tensor int8 activations)")
            details["representative_dataset"] = {"samples": int(io.count(calibration)), "batch": 1,
                                                 "fixed_shapes": details["fixed_shapes"]}
            if float_ops:
                details["float_ops_note"] = (f"{len(float_ops)} op(s) stayed float (no int8 kernel in TFLite's "
                                             f"converter): {', '.join(sorted({f['op'] for f in float_ops}))}")
        return ExportResult(MODEL_FILE, inputs, outputs, details)

    @staticmethod
    def _signature_io(data: bytes, keys: list[str]) -> tuple[dict[str, tuple[str, list[int], float | None,
                                                                              int | None]], dict[str, str]]:
        """Per signature output key: dtype, shape and per-tensor quantization of the .tflite output; and per
        signature input: its tensor's name (what tools such as benchmark_model call the input)."""
        from ai_edge_litert.interpreter import Interpreter

        from edgekit.backends.tflite_convert import quiet

        with quiet():
            interpreter = Interpreter(model_content=data)
            runner = interpreter.get_signature_runner()
            details = runner.get_output_details()
            by_index = {d["index"]: d["name"] for d in interpreter.get_input_details()}
            tensor_names = {k: by_index.get(d["index"], k) for k, d in runner.get_input_details().items()}
        out = {}
        for key in keys:
            d = details[key]
            scale, zero = d.get("quantization", (0.0, 0))
            quantized = np.issubdtype(np.dtype(d["dtype"]), np.integer) and scale
            out[key] = (np.dtype(d["dtype"]).name, [int(v) for v in d["shape"]],
                        float(scale) if quantized else None, int(zero) if quantized else None)
        return out, tensor_names

    @staticmethod
    def _check_full_integer(summary, float_ops: list[dict[str, str]], allow_fallback: bool) -> None:
        if float_ops and not allow_fallback:
            where = ", ".join(f"{f['op']} (at '{f['tensor']}')" for f in float_ops[:4])
            more = f" and {len(float_ops) - 4} more" if len(float_ops) > 4 else ""
            raise EdgekitError(
                f"int8 (full integer) was asked, but {len(float_ops)} op(s) could not be made int8 by TFLite's "
                f"converter and stayed in float: {where}{more}; pass allow_float_fallback=True "
                f"(--allow-float-fallback) to keep them in float "
                f"(the manifest lists them), or export at precision 'fp16' or 'dynamic-int8'"
            )
        bad = [f"{t.name} is {t.dtype}" for t in (*summary.inputs, *summary.outputs) if t.dtype != "int8"]
        if bad and not allow_fallback:
            raise EdgekitError(f"int8 conversion did not give int8 input/output tensors ({'; '.join(bad)}); "
                               f"pass allow_float_fallback=True (--allow-float-fallback) to accept that")

    @staticmethod
    def _io(spec: TensorSpec, t, perm: list[int] | None) -> dict[str, Any]:
        return {
            "name": spec.name, "tflite_name": t.name, "dtype": t.dtype,
            "shape": list(_dims(t.signature, tuple(spec.shape), perm)),
            "layout": _layout(len(t.signature), perm), "source_layout": _layout(len(spec.shape), None),
            "transpose_from_source": perm, "scale": t.scale, "zero_point": t.zero_point,
        }

    @staticmethod
    def _quantization(precision: str, per_channel: bool) -> dict[str, Any]:
        weights = f"int8 symmetric {'per-channel' if per_channel else 'per-tensor'}"
        return {
            "fp32": {"weights": "float32", "activations": "float32"},
            "fp16": {"weights": "float16 (dequantized to float32 at load unless a GPU delegate runs fp16)",
                     "activations": "float32"},
            "dynamic-int8": {"weights": weights, "activations": "float32, quantized on the fly by hybrid kernels"},
            "int8": {"weights": weights, "activations": "int8 asymmetric per-tensor", "bias": "int32",
                     "inference_input_type": "int8", "inference_output_type": "int8",
                     "ops": "TFLITE_BUILTINS_INT8"},
        }[precision]


def _by_name(specs: list[TensorSpec], name: str) -> TensorSpec:
    return next(t for t in specs if t.name == name)


def _sequence_axis(shape: tuple[int | str, ...]) -> int | None:
    """The axis of an output that follows the input's sequence (named `sequence` by the ONNX export)."""
    return next((k for k, d in enumerate(shape) if d == "sequence"), None)
