"""Where INT8 loses accuracy: per-layer error of a quantized graph against FP32, a ranking of the layers by
what keeping each one in float buys at the output, and a per-tensor comparison of two backends' int8
artifacts (ONNX Runtime vs TFLite) of the same model.

Why two numbers per layer: the per-layer error (SQNR and cosine of each layer's output, read from both
graphs with the intermediate tensors exposed) shows where the error *appears*, but it accumulates
downstream, so the worst-looking layer is often just the last one. What a user needs to decide is which
layer to keep in higher precision, so the ranking measures that directly: the output SQNR gain of keeping
each layer alone in float (a verification pass, one quantized graph per candidate). The first-ranked
layer is therefore, by construction, the single fallback that helps the output most among those measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.common.metrics import sqnr_db
from edgekit.errors import EdgekitError
from edgekit.quant.graphs import with_outputs
from edgekit.quant.qgraph import QuantSetup, build, build_and_evaluate, db, layer_names, run_session, session

#: per-layer tensors are compared on at most this many samples (activations of every layer are held at once)
LAYER_SAMPLES = 64
#: candidates whose fallback gain is measured (the rest are listed by per-layer error only)
DEFAULT_VERIFY = 12


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of the flattened tensors (1.0 where both are all zero)."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return float(cos.mean())


def layer_tensors(prepared) -> dict[str, dict[str, Any]]:
    """For each weighted layer of the FP32 graph: the tensor it hands on (after a following Relu/Clip, the
    activation a quantizer may fold into its range) and that activation, to re-apply where it was folded."""
    from edgekit.graph.qdq import constants, consumers_of, following_activation

    consumers = consumers_of(prepared)
    consts = constants(prepared)
    names = set(layer_names_of(prepared))
    out = {}
    for node in prepared.graph.node:
        if node.name not in names:
            continue
        t, op, bounds = following_activation(node, consumers, consts)
        act = {"op": op, "lo": bounds[0], "hi": bounds[1]} if op else None
        out[node.name] = {"op": node.op_type, "tensor": t, "activation": act}
    return out


def layer_names_of(model) -> list[str]:
    from edgekit.graph.qdq import weighted_nodes

    return weighted_nodes(model)


def layer_errors(setup: QuantSetup, quantized: Path, samples: int = LAYER_SAMPLES) -> list[dict[str, Any]]:
    """SQNR and cosine of every weighted layer's output, quantized graph vs FP32, on held-out samples."""
    import onnx

    prepared = onnx.load(str(setup.prepared), load_external_data=False)
    quant = onnx.load(str(quantized), load_external_data=False)
    producers = {o: n for n in quant.graph.node for o in n.output}
    info = layer_tensors(prepared)
    names = [v["tensor"] for v in info.values()]
    x = setup.held_x[:samples]
    fp = run_session(session(with_outputs(setup.prepared, names, setup.workdir / "fp32-taps.onnx"), {}), x)
    q = run_session(session(with_outputs(quantized, names, setup.workdir / "q-taps.onnx"), setup.options), x)
    fp_map = dict(zip([o.name for o in prepared.graph.output] + names, fp, strict=False))
    q_map = dict(zip([o.name for o in quant.graph.output] + names, q, strict=False))
    rows = []
    for layer, v in info.items():
        a, b = fp_map[v["tensor"]], q_map[v["tensor"]]
        act = v["activation"]
        prod = producers.get(v["tensor"])
        if act is not None and prod is not None and prod.op_type != act["op"]:
            b = np.clip(b, act["lo"], act["hi"])  # the quantizer folded the activation into its range
        rows.append({"layer": layer, "op": v["op"], "tensor": v["tensor"], "sqnr_db": db(sqnr_db(a, b)),
                     "cosine": round(cosine(a, b), 6)})
    return rows


def rank_layers(setup: QuantSetup, candidates: Sequence[str] | None = None, verify: int = DEFAULT_VERIFY,
                log: Callable[[str], None] | None = None, errors: list[dict[str, Any]] | None = None,
                base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Layers ranked by the output-SQNR gain of keeping each alone in higher precision (measured for the
    `verify` layers with the largest per-layer error; the others follow, ordered by per-layer error)."""
    from tqdm import tqdm

    log = log or (lambda _m: None)
    if base is None:
        base = build_and_evaluate(setup, [], "rank-base")
    if errors is None:
        full = setup.workdir / "rank-full.onnx"
        build(setup, [], full)
        errors = layer_errors(setup, full)
    by_layer = {e["layer"]: e for e in errors}
    names = list(candidates) if candidates is not None else layer_names(setup.prepared)
    order = sorted(names, key=lambda n: by_layer.get(n, {}).get("sqnr_db", 0.0))
    measured, rest = order[:verify], order[verify:]
    rows = []
    for layer in tqdm(measured, desc="rank layers", unit="layer", leave=False):
        r = build_and_evaluate(setup, [layer], f"alone-{len(rows)}")
        rows.append({"layer": layer, "op": by_layer.get(layer, {}).get("op", ""),
                     "gain_db": round(r["sqnr_db"] - base["sqnr_db"], 3), "sqnr_db_alone": r["sqnr_db"],
                     "agreement_alone": r["agreement"],
                     "layer_sqnr_db": by_layer.get(layer, {}).get("sqnr_db"),
                     "layer_cosine": by_layer.get(layer, {}).get("cosine")})
    rows.sort(key=lambda r: (-r["gain_db"], r["layer_sqnr_db"] if r["layer_sqnr_db"] is not None else 0.0))
    for layer in rest:
        rows.append({"layer": layer, "op": by_layer.get(layer, {}).get("op", ""), "gain_db": None,
                     "sqnr_db_alone": None, "agreement_alone": None,
                     "layer_sqnr_db": by_layer.get(layer, {}).get("sqnr_db"),
                     "layer_cosine": by_layer.get(layer, {}).get("cosine")})
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    if rows:
        log(f"most sensitive layer: {rows[0]['layer']} (keeping it alone in float: {rows[0]['gain_db']:+.1f} dB)")
    return rows


def diagnose(setup: QuantSetup, verify: int = DEFAULT_VERIFY, log: Callable[[str], None] | None = None,
             quantized: Path | None = None) -> dict[str, Any]:
    """The whole report: full-int8 output metrics, per-layer errors, and the ranking."""
    base_path = quantized or setup.workdir / "diag-full.onnx"
    if quantized is None:
        build(setup, [], base_path)
    from edgekit.quant.qgraph import evaluate

    base = evaluate(setup, base_path)
    errors = layer_errors(setup, base_path)
    ranking = rank_layers(setup, verify=verify, log=log, errors=errors, base=base) if quantized is None else [
        {**e, "rank": i + 1, "gain_db": None} for i, e in enumerate(sorted(errors, key=lambda e: e["sqnr_db"]))]
    return {"samples": len(setup.held_x), "backend": setup.backend, "int8": base, "layers": errors,
            "ranking": ranking,
            "ranking_metric": ("output-SQNR gain (dB) of keeping the layer alone in higher precision, measured"
                               if quantized is None else "per-layer SQNR (the artifact's graph was diagnosed as is)")}


# ---------------------------------------------------------------------------------------------------------
# models with token inputs (transformers): the int8 forms of edgekit.quant.transformer
#: per-layer tensors of a transformer are (samples, tokens, hidden): compared on this many samples
TOKEN_LAYER_SAMPLES = 8


def _first_metric(setup) -> str:
    return setup.metric or str((setup.outputs[0] if setup.outputs else {}).get("metric") or "agreement")


def token_layer_errors(setup, quantized: Path, samples: int = TOKEN_LAYER_SAMPLES) -> list[dict[str, Any]]:
    """SQNR and cosine of each candidate's output tensor, full int8 graph vs FP32 (where both graphs still
    have the tensor), on the first `samples` check samples."""
    import onnx

    quant = onnx.load(str(quantized), load_external_data=False)
    q_tensors = {o for n in quant.graph.node for o in n.output}
    cands = [c for c in setup.candidates() if c["tensor"] in q_tensors]
    names = [c["tensor"] for c in cands]
    n_out = len(setup.reference)
    fp = setup.run(setup.source, names, samples)[n_out:]
    q = setup.run(quantized, names, samples)[n_out:]
    return [{"layer": c["layer"], "op": c["op"], "tensor": c["tensor"], "sqnr_db": db(sqnr_db(a, b)),
             "cosine": round(cosine(a, b), 6)} for c, a, b in zip(cands, fp, q, strict=True)]


def _alone(result: dict[str, Any]) -> dict[str, Any]:
    from edgekit.quant.budget import cosine_mean

    c = result.get("cosine")
    return {"cosine_alone": cosine_mean(result), "cosine_worst_alone": c.get("worst") if isinstance(c, dict) else None,
            "sqnr_db_alone": None if result.get("sqnr_db") is None else db(result["sqnr_db"]),
            "agreement_alone": result.get("agreement")}


def rank_token_layers(setup, log: Callable[[str], None] | None = None,
                      errors: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every candidate (projection MatMul/Gemm, embedding Gather) quantized alone, the rest float: ranked by
    what it alone costs the first output, in its metric (cosine for embeddings: lowest mean cosine first;
    else lowest SQNR first). The first-ranked layer is the single int8 layer that hurts the output most."""
    from tqdm import tqdm

    log = log or (lambda _m: None)
    cands = setup.candidates()
    names = [c["layer"] for c in cands]
    by_layer = {e["layer"]: e for e in errors or []}
    rows = []
    for c in tqdm(cands, desc="rank layers", unit="layer", leave=False):
        others = [n for n in names if n != c["layer"]]
        r = setup.build_and_evaluate(others, f"alone-{len(rows)}")
        rows.append({"layer": c["layer"], "op": c["op"], **_alone(r),
                     "layer_sqnr_db": by_layer.get(c["layer"], {}).get("sqnr_db"),
                     "layer_cosine": by_layer.get(c["layer"], {}).get("cosine")})
    exact = 200.0

    def key(r: dict[str, Any]) -> tuple[float, float]:
        sq = r["sqnr_db_alone"] if r["sqnr_db_alone"] is not None else exact
        if _first_metric(setup) == "cosine" and r["cosine_alone"] is not None:
            return (r["cosine_alone"], sq)
        return (sq, 0.0)

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
        if r["cosine_alone"] is not None:
            r["cosine_drop_alone"] = round(1.0 - r["cosine_alone"], 8)
    if rows:
        top = rows[0]
        cost = (f"cosine {top['cosine_alone']:.5f}" if top["cosine_alone"] is not None
                else f"SQNR {top['sqnr_db_alone']} dB")
        log(f"most sensitive layer: {top['layer']} (quantized alone: {cost})")
    return rows


def diagnose_tokens(setup, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report for a transformer's int8 form: full-int8 output metrics, per-layer errors, the ranking."""
    full = setup.workdir / "diag-full.onnx"
    build_report = setup.build([], full)
    base = setup.evaluate(full)
    errors = token_layer_errors(setup, full)
    ranking = rank_token_layers(setup, log=log, errors=errors)
    metric = _first_metric(setup)
    return {"samples": len(setup.held_x), "backend": setup.backend, "precision": setup.precision,
            "format": build_report.get("format"), "metric": metric, "int8": base, "layers": errors,
            "ranking": ranking, "kept_float_by_design": build_report.get("kept_float", []),
            "ranking_metric": (f"the first output's {'mean cosine' if metric == 'cosine' else 'SQNR'} to FP32 with "
                               "the layer alone quantized (every other candidate float), lowest first: what each "
                               "layer alone costs, measured")}


def format_report(report: dict[str, Any], top: int = 10) -> str:
    if report.get("metric") is not None:
        return _format_token_report(report, top)
    b = report["int8"]
    lines = [f"int8 vs FP32 on {report['samples']} samples ({report['backend']}): agreement {b['agreement']:.4f}, "
             f"output SQNR {b['sqnr_db']:.1f} dB", f"ranked by {report['ranking_metric']}:", "",
             f"{'rank':>4}  {'layer':<28} {'op':<8} {'gain dB':>8} {'agree alone':>11} {'layer SQNR':>10} "
             f"{'cosine':>8}"]
    for r in report["ranking"][:top]:
        lines.append(f"{r['rank']:>4}  {r['layer']:<28} {r['op']:<8} {_cell(r.get('gain_db'), '+.2f'):>8} "
                     f"{_cell(r.get('agreement_alone'), '.4f'):>11} "
                     f"{_cell(r.get('layer_sqnr_db', r.get('sqnr_db')), '.1f'):>10} "
                     f"{_cell(r.get('layer_cosine', r.get('cosine')), '.4f'):>8}")
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    """A report table cell: the value formatted by `spec`, or '-' where it was not measured."""
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------------------------------------------------
# cross-backend: ONNX Runtime int8 vs TFLite int8 of the same model
_TFLITE_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")


def _onnx_layer_taps(model) -> list[dict[str, Any]]:
    """Per weighted node of a Q/DQ graph: the tensor the next layer reads (the DequantizeLinear after the
    node's output quantizer, where there is one: that is the int8 value both backends pass on)."""
    from edgekit.graph.qdq import consumers_of

    consumers = consumers_of(model)
    taps = []
    names = set(layer_names_of(model))
    for node in model.graph.node:
        if node.name not in names:
            continue
        t = node.output[0]
        for _ in range(3):  # through an activation and a Q -> DQ pair
            nxt = consumers.get(t, [])
            if len(nxt) == 1 and nxt[0].op_type in ("Relu", "Clip", "QuantizeLinear", "DequantizeLinear", "Cast"):
                t = nxt[0].output[0]
            else:
                break
        taps.append({"layer": node.name, "op": node.op_type, "tensor": t})
    return taps


def _tflite_taps(interpreter) -> list[dict[str, Any]]:
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    out = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in _TFLITE_WEIGHTED and len(op["outputs"]):
            idx = int(op["outputs"][0])
            out.append({"op": op["op_name"], "index": idx, "name": tensors[idx]["name"],
                        "shape": list(tensors[idx]["shape"])})
    return out


def _match(onnx_shapes: list[tuple[int, ...]], tfl_shapes: list[tuple[int, ...]]) -> list[tuple[int, int, bool]]:
    """Pair layers in execution order: (onnx index, tflite index, transposed NHWC->NCHW), shapes agreeing."""
    pairs, j = [], 0
    for i, s in enumerate(onnx_shapes):
        for k in range(j, len(tfl_shapes)):
            t = tfl_shapes[k]
            if len(s) == 4 and len(t) == 4 and (t[0], t[3], t[1], t[2]) == tuple(s):
                pairs.append((i, k, True))
                j = k + 1
                break
            if tuple(t) == tuple(s):
                pairs.append((i, k, False))
                j = k + 1
                break
    return pairs


def compare_backends(onnx_artifact: Path, onnx_manifest: dict[str, Any], tflite_artifact: Path,
                     tflite_manifest: dict[str, Any], x: np.ndarray, samples: int = 32) -> dict[str, Any]:
    """Per corresponding layer output: the error between an ONNX Q/DQ artifact (ONNX Runtime) and a TFLite
    artifact (LiteRT, every intermediate tensor preserved), on the same inputs.

    Tensors are lined up by execution order of the weighted layers and checked by shape (TFLite's NHWC is
    transposed back to NCHW); a layer without a shape-matching partner is listed as unmatched.
    """
    import onnx

    from edgekit.backends.tflite_convert import quiet
    from edgekit.backends.tflite_runner import LiteRTRunner

    x = np.ascontiguousarray(x[:samples], dtype=np.float32)
    model = onnx.load(str(onnx_artifact / onnx_manifest["model_file"]), load_external_data=False)
    taps = _onnx_layer_taps(model)
    tapped = with_outputs(onnx_artifact / onnx_manifest["model_file"], [t["tensor"] for t in taps],
                           Path(_tmpdir()) / "taps.onnx")
    opts = {"session_config": onnx_manifest.get("backend_details", {}).get("session_config", {})}
    sess = session(tapped, opts)
    ort_out = run_session(sess, x)
    by_name = dict(zip([o.name for o in sess.get_outputs()], ort_out, strict=True))
    ort_vals = {t["tensor"]: by_name[t["tensor"]] for t in taps}

    runner = LiteRTRunner(tflite_artifact, tflite_manifest)
    runner.load()
    with quiet():
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interp = Interpreter(model_path=str(tflite_artifact / tflite_manifest["model_file"]),
                             experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    ttaps = _tflite_taps(interp)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    tfl_vals: dict[int, list[np.ndarray]] = {t["index"]: [] for t in ttaps}
    for i in range(len(x)):
        interp.set_tensor(inp["index"], runner.quantize_input(x[i : i + 1]))
        interp.invoke()
        for t in ttaps:
            v = interp.get_tensor(t["index"])
            scale, zero = details[t["index"]]["quantization"]
            if np.issubdtype(v.dtype, np.integer) and scale:
                v = (v.astype(np.float32) - zero) * scale
            tfl_vals[t["index"]].append(v.astype(np.float32))
    runner.close()
    onnx_shapes = [tuple(ort_vals[t["tensor"]].shape[1:]) for t in taps]
    tfl_shapes = [tuple(t["shape"][1:]) for t in ttaps]
    pairs = _match([(1, *s) for s in onnx_shapes], [(1, *s) for s in tfl_shapes])
    rows = []
    for i, k, transposed in pairs:
        a = ort_vals[taps[i]["tensor"]]
        b = np.concatenate(tfl_vals[ttaps[k]["index"]])
        if transposed:
            b = b.transpose(0, 3, 1, 2)
        rows.append({"layer": taps[i]["layer"], "onnx_tensor": taps[i]["tensor"], "tflite_op": ttaps[k]["op"],
                     "tflite_tensor": ttaps[k]["name"], "shape": list(a.shape[1:]),
                     "layout": "NHWC->NCHW" if transposed else "same", "sqnr_db": db(sqnr_db(a, b)),
                     "cosine": round(cosine(a, b), 6),
                     "max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0})
    matched = {i for i, _, _ in pairs}
    a_out = ort_out[0]
    runner2 = LiteRTRunner(tflite_artifact, tflite_manifest)
    with runner2:
        b_out = np.concatenate([runner2.infer(x[i : i + 1])[0] for i in range(len(x))])
    first_bad = next((r for r in rows if r["sqnr_db"] < 20.0), None)
    return {"samples": len(x), "onnx_artifact": str(onnx_artifact), "tflite_artifact": str(tflite_artifact),
            "layers": rows, "unmatched_onnx_layers": [t["layer"] for i, t in enumerate(taps) if i not in matched],
            "output": {"sqnr_db": db(sqnr_db(a_out, b_out)),
                       "agreement": float((a_out.reshape(len(a_out), -1).argmax(1)
                                           == b_out.reshape(len(b_out), -1).argmax(1)).mean())},
            "first_divergence": first_bad["layer"] if first_bad else None,
            "how": "weighted layers lined up in execution order, checked by shape (TFLite NHWC transposed to "
                   "NCHW); ONNX side: the tensor the next layer reads (after its int8 Q/DQ); TFLite side: the "
                   "op's int8 output dequantized with its own scale and zero point"}


_TMP: list[Any] = []


def _tmpdir() -> str:
    import tempfile

    d = tempfile.TemporaryDirectory(prefix="edgekit-diagnose-")
    _TMP.append(d)
    return d.name


def format_comparison(cmp: dict[str, Any]) -> str:
    o = cmp["output"]
    lines = [f"ONNX Runtime vs TFLite on {cmp['samples']} samples: output agreement {o['agreement']:.4f}, "
             f"SQNR {o['sqnr_db']:.1f} dB", "",
             f"{'layer':<28} {'tflite op':<18} {'shape':<16} {'SQNR dB':>8} {'cosine':>8} {'max |diff|':>10}"]
    for r in cmp["layers"]:
        lines.append(f"{r['layer']:<28} {r['tflite_op']:<18} {'x'.join(map(str, r['shape'])):<16} "
                     f"{r['sqnr_db']:>8.1f} {r['cosine']:>8.4f} {r['max_abs_diff']:>10.4f}")
    if cmp["unmatched_onnx_layers"]:
        lines.append(f"unmatched ONNX layers: {', '.join(cmp['unmatched_onnx_layers'])}")
    if cmp["first_divergence"]:
        lines.append(f"first layer where the backends diverge (SQNR < 20 dB): {cmp['first_divergence']}")
    return "\n".join(lines)


def require_onnx_qdq(manifest: dict[str, Any], path: Path) -> None:
    from edgekit.backends.registry import find_spec

    spec = find_spec(manifest.get("backend"))
    if spec is None or spec.qdq_style is None or not str(manifest.get("model_file", "")).endswith(".onnx"):
        raise EdgekitError(f"{path} is a {manifest.get('backend')} artifact; the comparison's first artifact must be "
                           "an ONNX Q/DQ one (onnxruntime or tensorrt), the second a tflite one")


def _format_token_report(report: dict[str, Any], top: int) -> str:
    from edgekit.quant.budget import describe

    lines = [f"{report['precision']} vs FP32 on {report['samples']} samples ({report['backend']}, {report['format']}): "
             f"{describe(report['int8'])}", f"ranked by {report['ranking_metric']}:", "",
             f"{'rank':>4}  {'layer':<44} {'op':<7} {'cos alone':>10} {'drop':>9} {'SQNR alone':>10} "
             f"{'layer SQNR':>10} {'cosine':>8}"]
    for r in report["ranking"][:top]:
        lines.append(f"{r['rank']:>4}  {r['layer'][-44:]:<44} {r['op']:<7} {_cell(r.get('cosine_alone'), '.6f'):>10} "
                     f"{_cell(r.get('cosine_drop_alone'), '.2e'):>9} {_cell(r.get('sqnr_db_alone'), '.1f'):>10} "
                     f"{_cell(r.get('layer_sqnr_db'), '.1f'):>10} {_cell(r.get('layer_cosine'), '.4f'):>8}")
    return "\n".join(lines)
