"""ONNX Runtime backend: fp32 (graph optimisations at load), static QDQ int8, dynamic int8.

The int8 format (activation type and symmetry, per-channel weights) comes from the target profile: on x86
uint8 activations are what make ONNX Runtime's int8 kernels fast, while TensorRT needs int8 symmetric.
Static int8 uses the ranges the pipeline computed once, passed to ONNX Runtime's quantizer as its
calibration cache, so ONNX Runtime never calibrates on its own.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Exporter, ExportRequest, ExportResult, Runner
from edgekit.errors import EdgekitError
from edgekit.graph.onnx_export import describe
from edgekit.graph.ort_session import X64_POLICY as X64_POLICY
from edgekit.graph.ort_session import X64_QUANT_PRECISION as X64_QUANT_PRECISION
from edgekit.graph.ort_session import effective_session_config
from edgekit.graph.ort_session import session_config as session_config
from edgekit.graph.qdq import WEIGHTED_OPS

_QTYPES = {"int8": "QInt8", "uint8": "QUInt8"}
_ORT_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def _qtype(options: dict[str, Any], key: str, default: str):
    from onnxruntime.quantization import QuantType

    value = options.get(key, default)
    if value not in _QTYPES:
        raise EdgekitError(f"backend option '{key}' must be one of {', '.join(_QTYPES)} (got {value!r})")
    return getattr(QuantType, _QTYPES[value])


def float_weights(model) -> list[str]:
    """Names of Conv/Gemm/MatMul nodes whose weight input is a float initializer (i.e. not quantized)."""
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    bad = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            w = inits.get(node.input[1])
            if w is not None and w.data_type in floats:
                bad.append(node.name or node.op_type)
    return bad


def quantize_static_qdq(prepared: Path, dest: Path, ranges, options: dict[str, Any],
                        nodes_to_exclude: list[str] | None = None,
                        extra_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Static QDQ quantization of `prepared` with precomputed `ranges`; returns what the manifest records.

    `extra_options` go to ONNX Runtime's quantizer as they are (e.g. TensorRT's rules: `QuantizeBias: False`);
    they are recorded in the returned dict when given.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    act = _qtype(options, "activation_type", "uint8")
    wt = _qtype(options, "weight_type", "int8")
    symmetric_act = bool(options.get("activation_symmetric", False))
    per_channel = bool(options.get("per_channel", True))
    reduce_range = bool(options.get("reduce_range", False))
    extra = {"ActivationSymmetric": symmetric_act, "WeightSymmetric": True, **(extra_options or {})}
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-q-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges.to_ort(), cache)
        quantize_static(
            str(prepared), str(dest), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=reduce_range, activation_type=act, weight_type=wt,
            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
            nodes_to_exclude=nodes_to_exclude or [], extra_options=extra,
        )
    import onnx

    from edgekit.graph.qdq import float_graph_outputs, prune_initializers

    model = onnx.load(str(dest))
    float_outputs = float_graph_outputs(model)
    if float_outputs:
        prune_initializers(model)  # the removed quantizer's scale and zero point
        onnx.save(model, str(dest))
    return {
        "format": "QDQ",
        "activation_type": options.get("activation_type", "uint8"),
        "activation_symmetric": symmetric_act,
        "weight_type": options.get("weight_type", "int8"),
        "weight_symmetric": True,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "nodes_kept_float": list(nodes_to_exclude or []),
        **({"float_outputs": float_outputs} if float_outputs else {}),
        **({"quantizer_options": dict(extra_options)} if extra_options else {}),
    }


def finish_int8(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The last rewrites of an int8 artifact, for the CPU it runs on (`pad_input_channels`); returns what the
    quantization record adds (nothing when no rewrite applied).

    Why here and not in `quantize_static_qdq`: the graphs edgekit's PTQ techniques and QAT read map each int8
    weight to the float weight it came from, shape for shape; the padding is for the deployed kernel only."""
    multiple = int(options.get("pad_input_channels") or 0)
    if multiple <= 1:
        return {}
    import onnx

    from edgekit.graph.qdq import pad_input_channels

    model = onnx.load(str(path))
    padded = pad_input_channels(model, multiple)
    if not padded:
        return {}
    onnx.save(model, str(path))
    return {"padded_input_channels": padded}


def copy_prequantized(src: Path, dest: Path, how: str) -> dict[str, Any]:
    """A graph that already holds Q/DQ (QAT) is the int8 model: copied, with any float weight still behind a
    QuantizeLinear folded to an integer initializer. Returns what the manifest records (the formats read
    back from the graph, not assumed)."""
    import onnx

    from edgekit.graph.onnx_export import fold_constant_quantize

    model = onnx.load(str(src))
    folded = fold_constant_quantize(model)
    onnx.save(model, str(dest))
    inits = {t.name: t for t in model.graph.initializer}
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}
    act_types, per_channel = set(), False
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            act_types.add(names.get(inits[node.input[2]].data_type, "other"))
        if node.op_type == "DequantizeLinear" and node.input[1] in inits:
            per_channel = per_channel or (len(inits[node.input[1]].dims) == 1 and inits[node.input[1]].dims[0] > 1)
    return {"format": "QDQ", "source": how, "calibration": "none (ranges fixed in the model's Q/DQ nodes)",
            "activation_types": sorted(act_types), "per_channel_weights": per_channel,
            "folded_weight_quantize": len(folded)}


def has_token_inputs(request: ExportRequest) -> bool:
    """A graph fed integer inputs (token ids, masks) is a transformer-style model: its int8 keeps attention in
    float and it calibrates from named feeds rather than from the image pipeline's shared ranges."""
    return any(not t.dtype.startswith("float") for t in request.onnx.inputs)


def calibration_feeds(request: ExportRequest, batch: int = 8) -> list[dict[str, np.ndarray]] | None:
    """The calibration set as batches of named feeds for the graph's inputs (None without calibration)."""
    from edgekit.common.io import batches

    cset = request.calibration
    if cset is None:
        return None
    feeds = cset.feeds([t.name for t in request.onnx.inputs])
    return list(batches(feeds, batch))


def attention_matmuls(model) -> list[str]:
    """MatMul nodes whose both inputs are activations (attention scores and context): kept float in int8."""
    inits = {t.name for t in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in inits or i in consts for i in n.input)]


def quantize_transformer_graph(request: ExportRequest, src: Path, dest: Path, precision: str,
                               options: dict[str, Any], transformer_options: dict[str, Any] | None = None
                               ) -> dict[str, Any]:
    """int8 / dynamic-int8 / int4-weight of a transformer graph: the quantizer the pipeline hands down in the
    request (edgekit.quant.transformer) when there is one, else ONNX Runtime's dynamic int8 of the weight
    MatMuls and embedding Gathers with the attention MatMuls kept float (int4: MatMulNBits)."""
    if request.quantize_transformer is not None:
        report = request.quantize_transformer(src, dest, precision, calibration_feeds(request), dict(options),
                                              dict(transformer_options or {}))
        return {"quantizer": "edgekit.quant.transformer", **(report or {})}
    import onnx

    logging.getLogger().setLevel(logging.ERROR)
    model = onnx.load(str(src))
    if precision == "int4-weight":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # the quantizer logs one INFO line per node it skips, on its own handler
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
        opts = {**options, **(transformer_options or {})}
        # all-MiniLM-L6-v2, held-out sentences, asymmetric MatMul+Gather: block 32 cosine 0.974 at 16% of the
        # FP32 file, block 16 0.982 at 20%
        block = int(opts.get("block_size", 16))
        symmetric = bool(opts.get("symmetric", False))
        import contextlib

        dest = dest.resolve()
        # the quantizer leaves a UUID-named external-data file in the working directory: give it a scratch one
        with tempfile.TemporaryDirectory(prefix="edgekit-int4-") as tmp, contextlib.chdir(tmp):
            quant = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=symmetric,
                                         op_types_to_quantize=("MatMul", "Gather"),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)))
            quant.process()
            quant.model.save_model_to_file(str(dest), use_external_data_format=False)
        return {"format": "MatMulNBits int4 weights (+ GatherBlockQuantized embeddings)", "block_size": block,
                "symmetric": symmetric, "quantizer": "onnxruntime MatMulNBitsQuantizer"}
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = attention_matmuls(model)
    quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=kept,
                     extra_options={"MatMulConstBOnly": True})
    return {"format": "dynamic int8 (activations quantized at run time)", "weight_type": "int8",
            "per_channel": True, "embedding": "int8 Gather", "attention_matmuls_kept_float": len(kept),
            "quantizer": "onnxruntime quantize_dynamic",
            **({"note": "static QDQ int8 of transformers needs edgekit.quant.transformer; dynamic int8 used"}
               if precision == "int8" else {})}


#: file name of the optimized graph a profiling session writes beside its trace
OPTIMIZED_GRAPH = "ort-optimized.onnx"


class OrtExporter(Exporter):
    backend = "onnxruntime"
    needs_calibration = ("int8",)
    uses_ranges = ("int8",)
    calibrates_token_models = True

    def export(self, request: ExportRequest) -> ExportResult:
        import onnx

        out = request.out_dir / "model.onnx"
        options = {**request.target.backend_options, **self.options}
        details: dict[str, Any] = {"precision": request.precision, "session_config": session_config(options),
                                   "x64quantprecision": X64_POLICY}
        if options.get("intra_op_threads"):  # the runner's thread count when the caller asks for none
            details["intra_op_threads"] = options["intra_op_threads"]
        if request.onnx.quantization is None and (request.precision == "int4-weight" or (
                request.precision != "fp32" and has_token_inputs(request))):
            source = request.prepared or request.onnx.path
            extra = self.options.get("transformer") or {}
            if not isinstance(extra, dict):
                raise EdgekitError("backend option 'transformer' takes a JSON object, e.g. "
                                   "transformer='{\"static\": true}'")
            details["quantization"] = quantize_transformer_graph(request, source, out, request.precision, options,
                                                                 extra)
            if request.precision == "int4-weight":
                details["quantization"]["weight_bits"] = 4
        elif request.precision == "fp32":
            shutil.copyfile(request.onnx.path, out)
            details["graph_optimization_level"] = options.get("graph_optimization_level", "all")
        elif request.precision == "int8":
            if request.onnx.quantization is not None:  # QAT / the user's own Q/DQ: the graph is the int8 model
                details["quantization"] = copy_prequantized(request.onnx.path, out, request.onnx.quantization)
            else:
                if request.ranges is None or request.prepared is None:
                    raise EdgekitError("int8 needs calibration ranges: give calibration data (calib=, --calib)")
                details["quantization"] = quantize_static_qdq(request.prepared, out, request.ranges, options)
            details["quantization"].update(finish_int8(out, options))
        elif request.precision == "dynamic-int8":
            from onnxruntime.quantization import quantize_dynamic

            source = request.prepared or request.onnx.path
            logging.getLogger().setLevel(logging.ERROR)
            quantize_dynamic(str(source), str(out), weight_type=_qtype(options, "weight_type", "int8"),
                             per_channel=bool(options.get("per_channel", True)))
            details["quantization"] = {"format": "dynamic (activations quantized at run time)",
                                       "weight_type": options.get("weight_type", "int8")}
        else:
            raise EdgekitError(f"backend onnxruntime has no precision '{request.precision}'")
        if request.precision != "fp32":
            left = float_weights(onnx.load(str(out)))
            if request.precision == "int8" and left and not has_token_inputs(request):
                raise EdgekitError(f"int8 quantization left float weights in node(s): {', '.join(left)}")
            details["float_weight_nodes"] = left
        inputs, outputs, opset = describe(out)
        details["opset"] = opset
        return ExportResult("model.onnx", inputs, outputs, details)


class OrtRunner(Runner):
    """An InferenceSession on the CPU execution provider; threads = intra-op threads (None: the target's
    `intra_op_threads` recorded in the manifest, else ORT's default; `threads_used` says which, 0 for ORT's).

    The session config recorded in the manifest is applied, plus the CPU-dependent `x64quantprecision`
    (`effective_session_config`), so what is measured is what a deployment that follows the manifest gets.
    """

    def session_options(self):
        """The session options the manifest asks for (session config, optimisation level, threads)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        details = self.manifest.get("backend_details", {})
        for key, value in effective_session_config(details.get("session_config")).items():
            opts.add_session_config_entry(key, value)
        level = self.manifest.get("backend_details", {}).get("graph_optimization_level", "all")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS.get(level, "ORT_ENABLE_ALL"))
        threads = self.threads or details.get("intra_op_threads")  # the caller's count, else the target's
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.threads_used = int(threads) if threads else 0
        opts.log_severity_level = 3
        return opts

    def load(self) -> None:
        import onnxruntime as ort

        opts = self.session_options()
        path = self.artifact_dir / self.manifest["model_file"]
        try:
            self.session = ort.InferenceSession(self.model_input(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EdgekitError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self._out_names = [o.name for o in self.session.get_outputs()]

    def profile(self, inputs: np.ndarray | dict[str, np.ndarray], iters: int, folder: Path) -> str:
        """Run `iters` inferences in a second session with ONNX Runtime's profiler on (the timed session stays
        unprofiled, so its figures carry no profiling overhead); the path of the profile's JSON. The optimized
        graph that ran is written beside it as `OPTIMIZED_GRAPH`."""
        import onnxruntime as ort

        opts = self.session_options()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(folder) / "ort-profile")
        # the graph as it ran (fused, re-laid-out), whose node attributes tell a depthwise conv from the rest
        opts.optimized_model_filepath = str(Path(folder) / OPTIMIZED_GRAPH)
        session = ort.InferenceSession(self.model_input(), opts, providers=["CPUExecutionProvider"])
        types = {i.name: _ORT_NP.get(i.type, np.float32) for i in session.get_inputs()}
        feed = {k: np.asarray(v, dtype=types.get(k)) for k, v in self.as_feed(inputs).items()}
        for _ in range(iters):
            session.run(None, feed)
        return session.end_profiling()

    def model_input(self) -> str | bytes:
        """What the session loads: the model file's path, or (in a subclass) a variant of it built in memory."""
        return str(self.artifact_dir / self.manifest["model_file"])

    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._out_names, self.as_feed(inputs))

    def close(self) -> None:
        self.session = None

    @property
    def runtime_version(self) -> str:
        import onnxruntime as ort

        return ort.__version__
