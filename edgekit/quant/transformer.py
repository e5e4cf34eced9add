"""Transformer quantization for ONNX Runtime: int8 that keeps accuracy, and int4 weights.

A whole-graph int8 pass is what breaks transformers: ONNX Runtime's `quantize_dynamic` defaults quantize
the attention score and context MatMuls (both operands are activations, ranges set per call, softmax
probabilities squeezed into 256 levels) and the word-embedding table with one scale for all rows; static
uint8 QDQ over everything also puts LayerNorm and softmax inputs on a per-tensor grid. The mixed
precision here follows what measurement on a real sentence encoder supports: the projection and
feed-forward GEMMs (where the time goes) run int8 with per-channel weights; attention MatMuls, Softmax and
LayerNorm stay float; embedding tables are int8 per row (half the file, almost no error).

Attention MatMuls are found structurally (a MatMul whose two inputs are both computed, no initializer),
never by name, so any exporter's naming works.

Precisions: `dynamic-int8` (CPU default for int8), `int8` (dynamic, or static QDQ with SmoothQuant-style
smoothing when `options["static"]` and calibration feeds are given), `int4-weight` (MatMulNBits, block-wise).

Measured on all-MiniLM-L6-v2 (128 tokens, batch 1, one thread, x86 with VNNI): dynamic int8 with this split
runs about 2x FP32 at cosine 0.994 with the file at 25 % of FP32; static QDQ is both slower and less
accurate on the CPU (per-tensor uint8 on the GELU output of the feed-forward block is what breaks it;
smoothing does not repair it, keeping those GEMMs float does), so dynamic is the CPU default. ONNX Runtime's
offline BERT fusions made the int8 graph slower (they fold biases away from the int8 GEMMs), so `fusion`
is off by default.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.graph.attention import attention_matmuls, down_projections, projection_nodes, transformer_split

__all__ = ["attention_matmuls", "down_projections", "projection_nodes", "quantize_transformer", "tensorrt_qdq"]

PRECISIONS = ("dynamic-int8", "int8", "int4-weight")
#: ops kept float in every int8 variant, with the reason the report gives
FLOAT_OPS = {
    "Softmax": "softmax probabilities span orders of magnitude; 256 levels flatten the small ones",
    "LayerNormalization": "normalisation statistics over the hidden size; an int8 input grid biases them",
}
ATTENTION_WHY = "attention score/context MatMul: both operands are activations (no weight to quantize per channel)"
OPTION_NAMES = ("static", "float_attention", "quantize_embeddings", "smoothing", "smoothing_alpha", "fusion",
                "keep_float", "per_channel", "block_size", "symmetric", "accuracy_level", "embedding_bits",
                "calibrate_method", "num_heads", "hidden_size", "int8_down_projections", "algorithm")
DEFAULTS: dict[str, Any] = {
    "static": False, "float_attention": True, "quantize_embeddings": True, "smoothing": True,
    "smoothing_alpha": 0.5, "fusion": False, "keep_float": [], "per_channel": True, "block_size": 32,
    "symmetric": None, "accuracy_level": None, "embedding_bits": None, "calibrate_method": "minmax",
    "num_heads": 0, "hidden_size": 0, "int8_down_projections": False,
    "algorithm": "rtn",
}
_CALIB_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def _options(options: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """Validate once, before any work: an unknown key or a wrong type is a one-line error."""
    opts = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise EdgekitError(f"unknown transformer quantization option '{key}'; known: {', '.join(OPTION_NAMES)}")
        opts[key] = value
    # int4's measured defaults differ from int8's: asymmetric blocks (zero points) and 4-bit tables, which is
    # what keeps the file under a fifth of FP32 (all-MiniLM-L6-v2: cosine 0.971 -> 0.975 for asymmetric)
    int4 = precision == "int4-weight"
    if "block_size" not in (options or {}) and int4:
        # block 16 is the largest block that keeps all-MiniLM-L6-v2 at cosine >= 0.98 (0.975 at 32), and with
        # 4-bit tables the file is still under a fifth of FP32 (19.8 %)
        opts["block_size"] = 16
    if opts["symmetric"] is None:
        opts["symmetric"] = not int4
    if opts["embedding_bits"] is None and "embedding_bits" not in (options or {}):
        opts["embedding_bits"] = 4 if int4 else 8
    for key in ("static", "float_attention", "quantize_embeddings", "smoothing", "fusion", "per_channel",
                "symmetric", "int8_down_projections"):
        if not isinstance(opts[key], bool):
            raise EdgekitError(f"option '{key}' must be true or false (got {opts[key]!r})")
    bs = opts["block_size"]
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 16 or bs & (bs - 1):
        raise EdgekitError(f"option 'block_size' must be a power of two >= 16, e.g. 32 or 128 (got {bs!r})")
    if opts["embedding_bits"] not in (4, 8, None):
        raise EdgekitError(f"option 'embedding_bits' must be 4, 8 or null (float) (got {opts['embedding_bits']!r})")
    if opts["algorithm"] not in ("rtn", "hqq"):
        raise EdgekitError(f"option 'algorithm' must be rtn (round to nearest) or hqq (half-quadratic, "
                           f"optimised scales/zero points) (got {opts['algorithm']!r})")
    alpha = opts["smoothing_alpha"]
    if not isinstance(alpha, int | float) or not 0.0 < float(alpha) < 1.0:
        raise EdgekitError(f"option 'smoothing_alpha' must be between 0 and 1, e.g. 0.5 (got {alpha!r})")
    if opts["calibrate_method"] not in _CALIB_METHODS:
        raise EdgekitError(f"option 'calibrate_method' must be one of {', '.join(_CALIB_METHODS)} "
                           f"(got {opts['calibrate_method']!r})")
    if opts["accuracy_level"] not in (None, 0, 1, 2, 3, 4):
        raise EdgekitError(f"option 'accuracy_level' must be 0-4 or null (got {opts['accuracy_level']!r})")
    kf = opts["keep_float"]
    if isinstance(kf, str):
        kf = [k.strip() for k in kf.split(",") if k.strip()]
    if not isinstance(kf, list | tuple) or not all(isinstance(k, str) for k in kf):
        raise EdgekitError(f"option 'keep_float' must be a list of node names (got {kf!r})")
    opts["keep_float"] = list(kf)
    return opts


# ---------------------------------------------------------------------------------------------------------
# the graph's structure
def _name_nodes(model) -> None:
    """Give every node a unique name: quantizers address nodes by name, and exporters leave some blank."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def _graph_summary(model) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


# ---------------------------------------------------------------------------------------------------------
# steps
def _fuse(src: Path, dest: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime's BERT fusions (attention, skip-LayerNorm, bias-GELU); embedding lookups left unfused so
    the tables can still be quantized per row."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fo = FusionOptions("bert")
    fo.enable_embed_layer_norm = False
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        optimized = optimize_model(str(src), model_type="bert", num_heads=int(opts["num_heads"]),
                                   hidden_size=int(opts["hidden_size"]), optimization_options=fo, opt_level=0)
    finally:
        logging.getLogger().setLevel(level)
    optimized.save_model_to_file(str(dest))
    return {"fused_ops": {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}}


class _FeedReader:
    """ONNX Runtime's CalibrationDataReader over a list of named feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _float_report(model, attention: list[Any], keep: list[str]) -> list[dict[str, str]]:
    rows = [{"name": n.name, "op": n.op_type, "why": ATTENTION_WHY} for n in attention]
    rows += [{"name": n.name, "op": n.op_type, "why": FLOAT_OPS[n.op_type]} for n in model.graph.node
             if n.op_type in FLOAT_OPS]
    rows += [{"name": k, "op": "", "why": "kept float on request (keep_float: measured sensitive)"} for k in keep]
    return rows


def _int8(src: Path, dest: Path, opts: dict[str, Any], feeds: list[dict[str, np.ndarray]] | None,
          work: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    report: dict[str, Any] = {}
    current = src
    if opts["fusion"]:
        fused = work / "fused.onnx"
        report["fusion"] = _fuse(current, fused, opts)
        current = fused
    model = onnx.load(str(current))
    _name_nodes(model)
    attention = attention_matmuls(model) if opts["float_attention"] else []
    proj = [n for n in projection_nodes(model) if n.name not in opts["keep_float"]]
    missing = sorted(set(opts["keep_float"]) - {n.name for n in model.graph.node})
    if missing:
        raise EdgekitError(f"keep_float names node(s) not in the graph: {', '.join(missing[:5])}; "
                           f"projection nodes are e.g. {', '.join(n.name for n in projection_nodes(model)[:3])}")
    if opts["static"] and opts["smoothing"]:
        from edgekit.quant.smoothing import smooth

        report["smoothing"] = smooth(model, [n for n in proj if n.op_type == "MatMul"], feeds,
                                     alpha=float(opts["smoothing_alpha"]))
    if opts["quantize_embeddings"] and opts["embedding_bits"] == 8:
        from edgekit.quant.embedding import quantize_embeddings_int8

        report["embeddings"] = quantize_embeddings_int8(model)
    staged = work / "staged.onnx"
    onnx.save(model, str(staged))
    op_types = ["MatMul", "Gemm"] + (["Attention"] if opts["fusion"] else [])
    exclude = [n.name for n in attention] + list(opts["keep_float"])
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        if opts["static"]:
            from onnxruntime.quantization import CalibrationMethod

            quantize_static(str(staged), str(dest), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, nodes_to_exclude=exclude, per_channel=opts["per_channel"],
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, _CALIB_METHODS[opts["calibrate_method"]]),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                           "MatMulConstBOnly": opts["float_attention"]})
            report["format"] = ("static QDQ: uint8 activations (asymmetric, calibrated "
                                f"{opts['calibrate_method']}), int8 per-channel weights")
        else:
            quantize_dynamic(str(staged), str(dest), op_types_to_quantize=op_types, nodes_to_exclude=exclude,
                             per_channel=opts["per_channel"], weight_type=QuantType.QInt8,
                             extra_options={"MatMulConstBOnly": opts["float_attention"],
                                            "DefaultTensorType": onnx.TensorProto.FLOAT})
            report["format"] = "dynamic: activations quantized per call (uint8), int8 per-channel weights"
    finally:
        logging.getLogger().setLevel(level)
    report["quantized_nodes"] = [n.name for n in proj]
    report["kept_float"] = _float_report(model, attention, list(opts["keep_float"]))
    if not opts["float_attention"]:
        report["attention"] = "quantized with the rest (float_attention=false)"
    if not opts["quantize_embeddings"] or opts["embedding_bits"] is None:
        report.setdefault("kept_float", []).extend(
            {"name": n.name, "op": "Gather", "why": "embedding quantization switched off"}
            for n in _embedding_nodes(model))
    return report


def _embedding_nodes(model) -> list[Any]:
    from edgekit.quant.embedding import embedding_gathers

    return embedding_gathers(model)


def _int4(src: Path, dest: Path, opts: dict[str, Any]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    _name_nodes(model)
    attention = attention_matmuls(model)
    report: dict[str, Any] = {}
    emb_bits = opts["embedding_bits"] if opts["quantize_embeddings"] else None
    if emb_bits == 8:
        from edgekit.quant.embedding import quantize_embeddings_int8

        report["embeddings"] = quantize_embeddings_int8(model)
    hqq = opts["algorithm"] == "hqq"
    op_types: tuple[str, ...] = ("MatMul", "Gather") if emb_bits == 4 and not hqq else ("MatMul",)
    cfg = DefaultWeightOnlyQuantConfig(block_size=opts["block_size"], is_symmetric=opts["symmetric"],
                                       accuracy_level=opts["accuracy_level"], op_types_to_quantize=op_types,
                                       quant_axes=(("MatMul", 0), ("Gather", 1)))
    if hqq:  # HQQ's float zero points do not fit GatherBlockQuantized: the tables get round-to-nearest below
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

        cfg = HQQWeightOnlyQuantConfig(block_size=opts["block_size"], bits=4, op_types_to_quantize=("MatMul",))
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer",):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        int8_nodes = [n.name for n in down_projections(model)] if opts["int8_down_projections"] else []
        quantizer = MatMulNBitsQuantizer(model, algo_config=cfg,
                                         nodes_to_exclude=list(opts["keep_float"]) + int8_nodes)
        quantizer.process()
        if hqq and emb_bits == 4:
            emb_cfg = DefaultWeightOnlyQuantConfig(block_size=opts["block_size"], is_symmetric=opts["symmetric"],
                                                   op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
            quantizer = MatMulNBitsQuantizer(quantizer.model.model, algo_config=emb_cfg)
            quantizer.process()
        if int8_nodes:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            nbits = dest.with_name("nbits.onnx")
            quantizer.model.save_model_to_file(str(nbits), False)
            quantize_dynamic(str(nbits), str(dest), op_types_to_quantize=["MatMul"], nodes_to_quantize=int8_nodes,
                             per_channel=True, weight_type=QuantType.QInt8,
                             extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
            report["int8_nodes"] = {"nodes": int8_nodes, "why": "feed-forward down projections (input after GELU, "
                                    "widest outliers): dynamic int8 per-channel, measured more accurate than 4-bit"}
        else:
            quantizer.model.save_model_to_file(str(dest), False)
    finally:
        logging.getLogger().setLevel(level)
    out = onnx.load(str(dest), load_external_data=False)
    report["format"] = (f"weight-only int4: MatMulNBits block {opts['block_size']}, "
                        + ("HQQ (optimised scales and zero points)" if hqq else
                           f"round to nearest, {'symmetric' if opts['symmetric'] else 'asymmetric (zero points)'}")
                        + (f", accuracy_level {opts['accuracy_level']}" if opts["accuracy_level"] is not None else ""))
    if emb_bits == 4:
        report["embeddings"] = [{"node": n.name, "format": f"int4 GatherBlockQuantized block {opts['block_size']}"}
                                for n in out.graph.node if n.op_type == "GatherBlockQuantized"]
    report["quantized_nodes"] = [n.name for n in out.graph.node if n.op_type == "MatMulNBits"]
    report["kept_float"] = _float_report(out, attention, list(opts["keep_float"]))
    return report


# ---------------------------------------------------------------------------------------------------------
def quantize_transformer(src: Path, dest: Path, precision: str,
                         calib_feeds: Iterable[dict[str, np.ndarray]] | None = None,
                         options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Quantize a transformer ONNX graph at `src` into `dest`; returns what was done, for the manifest.

    precision: `dynamic-int8`, `int8` (static QDQ with smoothing when options `static=True` and feeds are
    given, else dynamic: dynamic is the faster and more accurate choice on x86 CPUs, measured), or
    `int4-weight`. The report lists the quantized nodes, the nodes kept float and why, and the sizes.
    `dest` is written only when everything succeeded.
    """
    import shutil

    src, dest = Path(src), Path(dest)
    if precision not in PRECISIONS:
        raise EdgekitError(f"transformer quantization has no precision '{precision}'; choose one of "
                           f"{', '.join(PRECISIONS)}")
    if not src.is_file():
        raise EdgekitError(f"{src}: no such ONNX file; pass the path of the exported FP32 model")
    opts = _options(options, precision)
    feeds = list(calib_feeds) if calib_feeds is not None else None
    if precision == "dynamic-int8" and opts["static"]:
        raise EdgekitError("precision 'dynamic-int8' quantizes activations per call; option static=true asks for "
                           "calibrated ranges: use precision 'int8' with static=true, or drop static")
    if opts["static"] and not feeds:
        raise EdgekitError("static int8 needs calibration feeds (named input arrays); pass calibration data, "
                           "or drop static=true for dynamic int8 (the CPU default)")
    with tempfile.TemporaryDirectory(prefix="edgekit-tfq-") as tmp:
        work = Path(tmp)
        staged = work / "out.onnx"
        report = _int4(src, staged, opts) if precision == "int4-weight" else _int8(src, staged, opts, feeds, work)
        import onnx

        onnx.checker.check_model(str(staged))
        out_model = onnx.load(str(staged), load_external_data=False)
        report["graph_ops"] = _graph_summary(out_model)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(dest))
    src_bytes, dest_bytes = src.stat().st_size, dest.stat().st_size
    report = {"precision": precision, **report,
              "options": {k: v for k, v in opts.items() if k in (options or {})},
              "sizes": {"source_bytes": src_bytes, "bytes": dest_bytes,
                        "fraction_of_source": round(dest_bytes / src_bytes, 4)}}
    if feeds is not None:
        report["calibration_samples"] = len(feeds)
    return report


def tensorrt_qdq(src: Path, dest: Path, calib_feeds: Iterable[dict[str, np.ndarray]], mixed: bool = True
                 ) -> dict[str, Any]:
    """TensorRT's explicit-quantization form of a transformer, from the ONNX file alone: int8 symmetric Q/DQ
    (zero point 0, per-tensor activations, per-channel weights, float biases) on the projection and
    feed-forward GEMMs; with `mixed`, the attention MatMuls run in fp16; Softmax and LayerNorm stay fp32.
    The result is checked against TensorRT's Q/DQ rules; ONNX Runtime runs it on the CPU as the accuracy check.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgekit.graph.qdq import NO_OUTPUT_QUANTIZATION, check_tensorrt_qdq, nodes_to_fp16

    src, dest = Path(src), Path(dest)
    feeds = list(calib_feeds)
    if not feeds:
        raise EdgekitError("TensorRT int8 Q/DQ needs calibration feeds (named input arrays); pass calibration data")
    model = onnx.load(str(src))
    _name_nodes(model)
    split = transformer_split(model)
    if split is None:
        raise EdgekitError(f"{src.name} has no attention (Softmax and activation-by-activation MatMuls); use the "
                           "generic TensorRT int8 export for it")
    with tempfile.TemporaryDirectory(prefix="edgekit-trtq-") as tmp:
        named = Path(tmp) / "named.onnx"
        staged = Path(tmp) / "q.onnx"
        onnx.save(model, str(named))
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quantize_static(str(named), str(staged), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=split["not_int8"],
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False,
                                           "OpTypesToExcludeOutputQuantization": NO_OUTPUT_QUANTIZATION})
        finally:
            logging.getLogger().setLevel(level)
        out = onnx.load(str(staged))
        if mixed:
            out = nodes_to_fp16(out, split["attention"])
        summary = check_tensorrt_qdq(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(out, str(dest))
    return {"precision": "mixed" if mixed else "int8", "int8_nodes": split["int8_nodes"],
            "fp16_nodes": split["attention"] if mixed else [],
            "kept_float": _float_report(out, [n for n in out.graph.node if n.name in set(split["attention"])], []),
            "qdq_check": {k: v for k, v in summary.items() if k != "weights"},
            "calibration_samples": len(feeds)}
