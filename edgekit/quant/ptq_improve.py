"""Better post-training INT8 before any fallback: cross-layer equalisation, a per-tensor choice of range
method, and bias correction. Each is a switch (`edgekit export --equalize --range-choice --bias-correction`)
and each reports what it changed on the held-out data, so a user sees what every step bought.

- Cross-layer equalisation (Nagel et al. 2019, as in AIMET): in a Conv -> ReLU -> Conv pair (the
  depthwise -> pointwise step of a depthwise-separable block), channel c of the first layer is divided by
  s_c and the second layer's input channel c multiplied by it. ReLU is positively homogeneous, so FP32 is
  unchanged, and with s_c = sqrt(r1_c / r2_c) both layers' per-channel weight ranges become equal, which also
  evens out the activation channels between them: the per-tensor activation quantizer then no longer has to
  cover channels three decades apart.
- Range choice: min-max, percentile and entropy each win on some tensors (outliers favour clipping, narrow
  unimodal tensors favour min-max), so each activation tensor gets the range whose own quantization error
  (MSE of fake-quantizing its calibration values in the target's int8 format) is smallest.
- Range search (range-mse): per tensor, the clip (a fraction of the min-max range) with the smallest
  expected int8 error, clipping plus rounding, on a histogram of its calibration values.
- Learned rounding (AdaRound): each layer's int8 weights rounded up or down to match the float layer's
  output on calibration images; see edgekit.quant.adaround.
- Bias correction (empirical, as NNCF's fast bias correction and AIMET's): quantization shifts each output
  channel's mean; the shift measured on the calibration data is added back to the float bias, layer by
  layer in graph order, re-quantizing after each so a layer corrects what remains after its predecessors.
- Quantization-aware training without labels (qat): the weights of the quantized graph itself trained against
  the FP32 graph's outputs on the calibration samples; see edgekit.quant.graph_qat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.graph.qdq import attr, consumers_of

TECHNIQUES = ("equalize", "range-choice", "range-mse", "adaround", "bias-correction", "qat")
#: applied in this order whatever the order given: equalisation changes the graph the ranges are taken on,
#: learned rounding fits each layer to the quantized graph with the final ranges, bias correction measures
#: the error left after all of them, and QAT trains the whole graph last, starting from all the others
ORDER = TECHNIQUES
RANGE_CANDIDATES = ("minmax", "percentile", "entropy")
#: what each technique changes, which must reach the artifact for it to apply (BackendSpec.ptq_inputs)
CHANGES = {"equalize": "graph", "range-choice": "ranges", "range-mse": "ranges", "adaround": "weights",
           "bias-correction": "biases", "qat": "weights"}  # qat: weights and biases re-rounded on export; its
#: learned activation scales are an extra that only backends taking "ranges" get (graph_qat.train)
SAMPLES = 64
#: images per run of the tapped graph in range choice (memory: every tapped tensor of them is held)
CHOICE_BATCH = 8


def check_techniques(techniques: Sequence[str]) -> None:
    unknown = [t for t in techniques if t not in TECHNIQUES]
    if unknown:
        raise EdgekitError(f"unknown int8 technique(s) {', '.join(unknown)}; available: {', '.join(TECHNIQUES)}")


def for_backend(techniques: Sequence[str], backend: str) -> tuple[list[str], list[dict[str, str]]]:
    """(the techniques that reach `backend`'s int8 artifact, in ORDER; the others, each with why not).

    Why not refuse the others: asking `--range-mse --adaround` of several targets at once is reasonable, and
    each artifact then says what it got; a technique that cannot apply is never silently a no-op."""
    from edgekit.backends.registry import get_spec

    check_techniques(techniques)
    spec = get_spec(backend)
    gaps = dict(spec.ptq_gaps)
    applied, skipped = [], []
    for tech in (t for t in ORDER if t in techniques):
        need = CHANGES[tech]
        if need in spec.ptq_inputs:
            applied.append(tech)
        else:
            why = gaps.get(need, f"edgekit's {need} do not reach backend {backend}'s int8 artifact")
            skipped.append({"technique": tech, "changes": need, "why": f"not applied: {why}"})
    return applied, skipped


# ---------------------------------------------------------------------------------------------------------
# cross-layer equalisation
def equalize(prepared: Path, dest: Path) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """Equalise every Conv -> Relu -> Conv pair whose middle tensor has one reader; returns the new graph, the
    pairs equalised (with the spread of channel ranges before and after) and the Conv -> Clip -> Conv pairs
    skipped (ReLU6: see below)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(prepared))
    inits = {t.name: t for t in model.graph.initializer}
    consumers = consumers_of(model)
    pairs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for a in model.graph.node:
        if a.op_type != "Conv" or len(a.input) < 2 or a.input[1] not in inits:
            continue
        relu = consumers.get(a.output[0], [])
        if len(relu) == 1 and relu[0].op_type == "Clip":
            # ReLU6 and other Clips: clip(x / s_c, 0, 6) != clip(x, 0, 6) / s_c, and Clip's bound is one scalar
            # for all channels, so the bound cannot follow a per-channel scale: the pair is skipped, and said so
            nxt = consumers.get(relu[0].output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Conv":
                skipped.append({"first": a.name, "second": nxt[0].name, "activation": "Clip",
                                "why": "a per-channel scale cannot pass a clip bound shared by all channels"})
            continue
        if len(relu) != 1 or relu[0].op_type != "Relu":
            continue
        nxt = consumers.get(relu[0].output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or nxt[0].input[1] not in inits:
            continue
        b = nxt[0]
        wa = numpy_helper.to_array(inits[a.input[1]]).astype(np.float64)
        wb = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
        channels = wa.shape[0]
        gb = attr(b, "group", 1)
        if gb == 1 and wb.shape[1] == channels:
            axis = 1
        elif gb == channels and wb.shape[0] == channels and wb.shape[1] == 1:
            axis = 0  # depthwise reader: its input channel c is its output channel c
        else:
            continue
        r1 = np.abs(wa).reshape(channels, -1).max(1)
        r2 = np.abs(np.moveaxis(wb, axis, 0)).reshape(channels, -1).max(1)
        ok = (r1 > 0) & (r2 > 0)
        s = np.ones(channels)
        s[ok] = np.sqrt(r1[ok] / r2[ok])
        before = float(np.log10(r1[ok].max() / r1[ok].min())) if ok.any() else 0.0
        wa = wa / s.reshape(-1, *([1] * (wa.ndim - 1)))
        shape = [1] * wb.ndim
        shape[axis] = channels
        wb = wb * s.reshape(shape)
        inits[a.input[1]].CopyFrom(numpy_helper.from_array(wa.astype(np.float32), a.input[1]))
        inits[b.input[1]].CopyFrom(numpy_helper.from_array(wb.astype(np.float32), b.input[1]))
        if len(a.input) > 2 and a.input[2] in inits:
            bias = numpy_helper.to_array(inits[a.input[2]]).astype(np.float64) / s
            inits[a.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), a.input[2]))
        r1_after = np.abs(wa).reshape(channels, -1).max(1)
        after = float(np.log10(r1_after[ok].max() / r1_after[ok].min())) if ok.any() else 0.0
        pairs.append({"first": a.name, "second": b.name, "channels": channels,
                      "range_spread_decades_before": round(before, 2), "range_spread_decades_after": round(after, 2)})
    onnx.save(model, str(dest))
    return dest, pairs, skipped


# ---------------------------------------------------------------------------------------------------------
# per-tensor range choice
def _fake_quant(x: np.ndarray, lo: float, hi: float, symmetric: bool, qtype: str) -> np.ndarray:
    if symmetric:
        amax = max(abs(lo), abs(hi)) or 1.0
        scale = amax / 127.0
        return np.clip(np.round(x / scale), -128, 127) * scale
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = (0, 255) if qtype == "uint8" else (-128, 127)
    scale = (hi - lo) / (qmax - qmin) or 1.0
    zero = np.round(qmin - lo / scale)
    return (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale


def choose_ranges(prepared: Path, cal, candidates: dict[str, Any], options: dict[str, Any],
                  workdir: Path) -> tuple[Any, dict[str, Any]]:
    """Per tensor, the candidate range with the smallest fake-quantization MSE on the calibration values.

    The squared errors are summed a few images at a time: holding every tapped tensor of all calibration
    images at once cost about 80 MB per 240x240 image on an EfficientNet (12.9 GB for 64 images)."""
    from edgekit.data.calibration import Ranges
    from edgekit.quant.graphs import with_outputs
    from edgekit.quant.qgraph import session

    first = next(iter(candidates.values()))
    names = sorted(first.tensors)
    sess = session(with_outputs(prepared, names, workdir / "range-taps.onnx"), {})
    inp = sess.get_inputs()[0]
    outs = [o.name for o in sess.get_outputs()]
    step = inp.shape[0] if isinstance(inp.shape[0], int) else CHOICE_BATCH
    x = cal.x[:SAMPLES]
    symmetric = bool(options.get("activation_symmetric", False))
    qtype = options.get("activation_type", "uint8")
    errors = {name: dict.fromkeys((m for m, r in candidates.items() if name in r.tensors), 0.0) for name in names}
    for i in range(0, len(x), step):
        values = dict(zip(outs, sess.run(outs, {inp.name: x[i : i + step]}), strict=True))
        values.setdefault(inp.name, x[i : i + step])
        for name in names:
            v = values.get(name)
            if v is None:
                continue
            for method in errors[name]:
                lo, hi = candidates[method].tensors[name]
                errors[name][method] += float(np.sum((_fake_quant(v, lo, hi, symmetric, qtype) - v) ** 2))
        del values
    chosen: dict[str, tuple[float, float]] = {}
    picks: dict[str, int] = dict.fromkeys(candidates, 0)
    for name in names:
        best, best_err = None, np.inf
        for method, err in errors[name].items():  # candidates' order: ties keep the first (min-max)
            if err < best_err * (1 - 1e-9) or best is None:
                best, best_err = method, err
        chosen[name] = candidates[best].tensors[name]
        picks[best] += 1
    merged = Ranges("per-tensor choice", {"candidates": list(candidates), "criterion": "fake-quant MSE"}, chosen,
                    first.calibration, first.graph_sha256)
    return merged, {"tensors_per_method": picks}


# ---------------------------------------------------------------------------------------------------------
# per-tensor clipping range searched for the smallest quantization error
MSE_BINS = 2048
MSE_FRACTIONS = np.linspace(0.1, 1.0, 91)


def mse_ranges(prepared: Path, cal, ranges, options: dict[str, Any], workdir: Path) -> tuple[Any, dict[str, Any]]:
    """Per activation tensor, the clipping range (a fraction of its min-max range) whose expected int8 error
    on the calibration values, clipping plus rounding, is smallest.

    Why beyond range-choice: a residual-stream tensor of this kind of network has a standard deviation near
    a tenth of its largest value, so min-max spends most of the 256 levels on a few outliers; the best clip
    lies between the percentile and min-max candidates, and a search over the histogram finds it. Counted
    from one histogram per tensor filled a few images at a time, so memory stays small."""
    from edgekit.data.calibration import Ranges
    from edgekit.quant.graphs import with_outputs
    from edgekit.quant.qgraph import session

    names = sorted(ranges.tensors)
    sess = session(with_outputs(prepared, names, workdir / "mse-taps.onnx"), {})
    inp = sess.get_inputs()[0]
    outs = [o.name for o in sess.get_outputs()]
    step = inp.shape[0] if isinstance(inp.shape[0], int) else 8
    x = cal.x[:SAMPLES]
    bounds = {n: (min(ranges.tensors[n][0], 0.0), max(ranges.tensors[n][1], 0.0)) for n in names}
    hist = {n: np.zeros(MSE_BINS) for n in names}
    for i in range(0, len(x), step):
        vals = dict(zip(outs, sess.run(outs, {inp.name: x[i : i + step]}), strict=True))
        vals.setdefault(inp.name, x[i : i + step])
        for n in names:
            if n in vals and bounds[n][1] > bounds[n][0]:
                hist[n] += np.histogram(vals[n], MSE_BINS, range=bounds[n])[0]
        del vals
    symmetric = bool(options.get("activation_symmetric", False))
    chosen: dict[str, tuple[float, float]] = {}
    clipped = 0
    gains = []
    for n in names:
        lo, hi = bounds[n]
        h = hist[n]
        if h.sum() == 0 or hi <= lo:
            chosen[n] = ranges.tensors[n]
            continue
        centres = lo + (np.arange(MSE_BINS) + 0.5) * (hi - lo) / MSE_BINS
        errors = []
        for f in MSE_FRACTIONS:
            a, b = f * lo, f * hi
            if symmetric:
                a, b = -max(-a, b), max(-a, b)
                q = (b - a) / 254.0
            else:
                q = (b - a) / 255.0
            over = np.where(centres < a, (centres - a) ** 2, np.where(centres > b, (centres - b) ** 2, q * q / 12))
            errors.append(float((h * over).sum() / h.sum()))
        best = int(np.argmin(errors))
        f = float(MSE_FRACTIONS[best])
        chosen[n] = (f * ranges.tensors[n][0], f * ranges.tensors[n][1])
        if f < 1.0:
            clipped += 1
            gains.append(10 * np.log10(errors[-1] / max(errors[best], 1e-30)))
    merged = Ranges("mse-search", {"from": ranges.method, "criterion": "expected int8 error from a histogram",
                                   "fractions": [0.1, 1.0]}, chosen, ranges.calibration, ranges.graph_sha256)
    return merged, {"tensors_clipped": clipped, "tensors": len(names),
                    "median_tensor_sqnr_gain_db": round(float(np.median(gains)), 2) if gains else 0.0}


# ---------------------------------------------------------------------------------------------------------
# bias correction
def bias_correction(setup, cal, dest: Path, log: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Empirical bias correction of every weighted layer, in graph order (see the module docstring)."""
    import onnx
    from onnx import numpy_helper
    from tqdm import tqdm

    from edgekit.quant.graphs import with_outputs
    from edgekit.quant.qgraph import build, layer_names, run_session, session

    model = onnx.load(str(setup.prepared))
    layers = [n for n in model.graph.node if n.name in set(layer_names(setup.prepared))]
    inits = {t.name: t for t in model.graph.initializer}
    x = cal.x[:SAMPLES]
    onnx.save(model, str(dest))
    fp_sess = session(with_outputs(dest, [n.output[0] for n in layers], setup.workdir / "bc-fp.onnx"), {})
    fp_names = [o.name for o in fp_sess.get_outputs()]
    fp = dict(zip(fp_names, run_session(fp_sess, x), strict=True))
    corrected = 0
    shifts = []
    cur = replace(setup, prepared=dest)
    for node in tqdm(layers, desc="bias correction", unit="layer", leave=False):
        if node.op_type not in ("Conv", "Gemm"):
            continue
        q_path = setup.workdir / "bc-q.onnx"
        build(cur, [], q_path)
        out = node.output[0]
        # the quantized graph may name the conv's output after a folded ReLU: find the node by name
        qm = onnx.load(str(q_path))
        qnode = next((n for n in qm.graph.node if n.name == node.name), None)
        if qnode is None:
            continue
        sess = session(with_outputs(q_path, [qnode.output[0]], setup.workdir / "bc-qt.onnx"), setup.options)
        got = run_session(sess, x)[-1]
        want = fp[out]
        axes = (0, *range(2, want.ndim)) if node.op_type == "Conv" else (0,)
        delta = (want.astype(np.float64) - got).mean(axis=axes)
        if node.op_type == "Conv" and qnode.output[0] != out:
            # ReLU folded: only channels that are active carry a usable error; the mean over the clipped
            # pre-activation is still an unbiased estimate where the FP32 output is positive
            pos = (want > 0).mean(axis=axes)
            delta = np.where(pos > 0.05, delta, 0.0)
        if len(node.input) > 2 and node.input[2] in inits:
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((b + delta).astype(np.float32), node.input[2]))
        else:
            name = f"{node.name}_corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
            inits[name] = model.graph.initializer[-1]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        onnx.save(model, str(dest))
        corrected += 1
        shifts.append(float(np.abs(delta).max()))
    return dest, {"layers_corrected": corrected, "largest_shift": round(max(shifts), 6) if shifts else 0.0}


# ---------------------------------------------------------------------------------------------------------
def apply(setup, techniques: Sequence[str], cal, method: str, method_opts: dict[str, Any],
          log: Callable[[str], None] | None = None,
          before: dict[str, Any] | None = None,
          qat_options: dict[str, Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Apply the chosen techniques in ORDER; returns the new setup and, per technique, its measured effect.
    `before` is the held-out result of `setup` as it is, when already measured; `qat_options` override
    edgekit.quant.graph_qat.DEFAULTS (lr, epochs, ...)."""
    from edgekit.quant.calibrate import compute_ranges
    from edgekit.quant.qgraph import build_and_evaluate

    log = log or (lambda _m: None)
    check_techniques(techniques)
    wanted = [t for t in ORDER if t in techniques]
    before = before if before is not None else build_and_evaluate(setup, [], "ptq-start")
    steps: list[dict[str, Any]] = [{"technique": "none (plain PTQ)", "ranges": setup.ranges.method, **before}]
    for tech in wanted:
        details: dict[str, Any]
        if tech == "equalize":
            path, pairs, skipped = equalize(setup.prepared, setup.workdir / "equalized.onnx")
            setup = replace(setup, prepared=path, ranges=compute_ranges(path, cal, method, method_opts))
            details = {"pairs": pairs}
            if skipped:
                details["skipped_clip_pairs"] = {"count": len(skipped), "examples": skipped[:3]}
        elif tech == "range-choice":
            cands = {m: compute_ranges(setup.prepared, cal, m) for m in RANGE_CANDIDATES}
            merged, details = choose_ranges(setup.prepared, cal, cands, setup.options, setup.workdir)
            setup = replace(setup, ranges=merged)
        elif tech == "range-mse":
            merged, details = mse_ranges(setup.prepared, cal, setup.ranges, setup.options, setup.workdir)
            setup = replace(setup, ranges=merged)
        elif tech == "adaround":
            from edgekit.quant.adaround import learn_rounding

            # the ranges stay: every layer was fitted to the quantized graph built with them
            path, details = learn_rounding(setup, cal, setup.workdir / "adaround.onnx", log=log)
            details = {k: v for k, v in details.items() if k != "layers"} | {"per_layer": details["layers"]}
            setup = replace(setup, prepared=path)
        elif tech == "qat":
            from edgekit.quant.graph_qat import train

            # the activation ranges are trained too where edgekit's ranges reach the artifact; elsewhere they
            # stay as calibrated, as the backend's own converter will calibrate
            path, details, learned = train(setup, cal, setup.workdir / "qat.onnx", qat_options, log=log,
                                           learn_ranges="ranges" in setup.spec.ptq_inputs)
            setup = replace(setup, prepared=path, ranges=learned or setup.ranges)
        else:
            path, details = bias_correction(setup, cal, setup.workdir / "bias-corrected.onnx", log)
            ranges = setup.ranges
            if ranges.method in RANGE_CANDIDATES:  # a per-tensor choice is kept: same tensor names
                ranges = compute_ranges(path, cal, ranges.method, method_opts if ranges.method == method else None)
            setup = replace(setup, prepared=path, ranges=ranges)
        result = build_and_evaluate(setup, [], f"ptq-{tech}")
        steps.append({"technique": tech, **details, **result,
                      "agreement_change": round(result["agreement"] - steps[-1]["agreement"], 4),
                      "sqnr_change_db": round(result["sqnr_db"] - steps[-1]["sqnr_db"], 3)})
        log(f"{tech}: agreement {result['agreement']:.4f}, SQNR {result['sqnr_db']:.1f} dB on held-out samples")
    return setup, steps
