"""Learned weight rounding (AdaRound, Nagel et al. 2020), layer by layer against the float layer's output.

Why: rounding every int8 weight to its nearest grid point minimises each weight's own error, not the layer's
output error; on a depthwise-heavy CNN the output SQNR of plain int8 stays near 15 dB although every layer's
weight SQNR is 40 dB or more, because the rounding errors of a channel add up coherently over its inputs.
Choosing, per weight, up or down so that the layer's *output* on calibration images matches the float
layer's output removes much of that.

How, per Conv/Gemm in graph order:
- the layer's input is read from the quantized graph in which all earlier layers already carry their
  learned rounding; the target is the float weights applied to that same input, both through the
  activation that follows (ReLU6 / ReLU), since what is clipped away costs nothing. The target is not the
  float graph's own output (the "asymmetric" variant): measured on EfficientNet-Lite1 that variant spends
  the rounding on upstream activation noise it cannot remove, and made the layer's weight-only error
  worse (38.7 -> 32.8 dB on a projection layer) where this target improves it (38.7 -> 42 dB);
- the grid is exactly the one ONNX Runtime's quantizer uses for that graph: its own per-channel scale read
  from the quantized graph, symmetric int8 -127..127; each weight is floor(w/s) + h with h in [0, 1] a
  rectified sigmoid, pushed to 0 or 1 by AdaRound's annealed regulariser, then rounded hard; the float bias
  is fitted along with it (it is stored int32 at a far finer scale);
- the result is written as float weights that lie exactly on that grid (q * s), so the normal exporter
  quantizes them to the chosen integers; `check_on_grid` verifies that on the exported graph.

Cost: one quantized-graph run per layer and a few hundred Adam steps on sampled output positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: AdaRound's rectified-sigmoid stretch and its regulariser's annealing (the paper's values)
ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END, WARMUP = 20.0, 2.0, 0.2
ITERATIONS = 300
SAMPLES = 64
LR = 1e-2
REG_WEIGHT = 0.01
#: multiply-accumulates one optimisation step may cost, and the most sampled rows it takes
STEP_MACS = 5e6
STEP_ROWS = 2048
#: sampled output positions per layer, and the most patch values kept for them (about 256 MB)
MAX_POSITIONS = 8192
PATCH_FLOATS = 64e6
#: qmin..qmax of ONNX Runtime's symmetric int8 weights
QMIN, QMAX = -127, 127


@dataclass
class LayerPlan:
    """Where one weighted node's tensors live in the float and the quantized graph."""

    name: str
    op: str
    float_input: str
    clip: tuple[float, float] | None  # the activation applied to the output before comparing
    attrs: dict[str, Any]


def plan_layers(model) -> list[LayerPlan]:
    """Conv and Gemm nodes with constant weights, in graph order."""
    from edgekit.graph.qdq import attr, constants, consumers_of, following_activation

    consts = constants(model)
    consumers = consumers_of(model)
    plans = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in consts:
            continue
        if n.op_type == "Gemm" and (attr(n, "transA", 0) or not attr(n, "transB", 0)):
            continue  # only x @ W^T + b, the form torch's Linear exports
        _, _, clip = following_activation(n, consumers, consts)
        attrs = {a.name: (list(a.ints) if a.ints else a.i) for a in n.attribute}
        plans.append(LayerPlan(n.name, n.op_type, n.input[0], clip, attrs))
    return plans


def _weight_dq(qmodel, node_name: str):
    """(quantized node, weight DequantizeLinear, bias producer or None) in the quantized graph."""
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    qnode = next((n for n in qmodel.graph.node if n.name == node_name), None)
    if qnode is None:
        return None, None, None
    dq = producers.get(qnode.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return qnode, None, None
    bias = producers.get(qnode.input[2]) if len(qnode.input) > 2 and qnode.input[2] else None
    return qnode, dq, bias


def _scale(dq, inits: dict[str, Any], weight: np.ndarray) -> np.ndarray:
    """The weight DequantizeLinear's scale broadcast against the weight (per channel or per tensor)."""
    from onnx import numpy_helper

    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    if scale.size == 1:
        return np.full([1] * weight.ndim, float(scale.reshape(-1)[0]), np.float32)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % weight.ndim
    shape = [1] * weight.ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def kind(plan: LayerPlan, w: np.ndarray) -> str | None:
    """How a layer becomes a matrix product over sampled output positions: "dense" (Gemm, or a Conv with one
    group: im2col patches times the weight matrix), "depthwise" (one input channel per output channel:
    patches times each channel's own kernel), or None (other grouped convolutions: not handled)."""
    if plan.op == "Gemm":
        return "dense"
    group = int(plan.attrs.get("group", 1))
    if group == 1:
        return "dense"
    return "depthwise" if w.shape[1] == 1 and group == w.shape[0] else None


def positions(n: int, h: int, w: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct (image, row, column) output positions, seeded, ordered by image."""
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(n * h * w, size=min(count, n * h * w), replace=False))
    return np.stack(np.unravel_index(flat, (n, h, w)), axis=1)


def patches(plan: LayerPlan, x: np.ndarray, w_shape: tuple[int, ...], pos: np.ndarray, out_hw: tuple[int, int]
            ) -> np.ndarray:
    """The layer's input patches at output positions `pos`: (M, Cin*kh*kw), or (M, C, kh*kw) for depthwise."""
    import torch
    import torch.nn.functional as F

    if plan.op == "Gemm":
        return x[pos[:, 0]].reshape(len(pos), -1)
    a = plan.attrs
    kh, kw = w_shape[2:]
    pads = list(a.get("pads", [0, 0, 0, 0]))
    rows = []
    for img in np.unique(pos[:, 0]):
        sel = pos[pos[:, 0] == img]
        t = torch.from_numpy(x[img : img + 1])
        t = F.pad(t, [pads[1], pads[3], pads[0], pads[2]])
        cols = F.unfold(t, (kh, kw), dilation=a.get("dilations", 1), stride=a.get("strides", 1))[0]
        rows.append(cols[:, sel[:, 1] * out_hw[1] + sel[:, 2]].T.numpy())
    p = np.concatenate(rows)
    return p.reshape(len(p), -1, kh * kw) if kind(plan, np.empty(w_shape)) == "depthwise" else p


def float_output(plan: LayerPlan, w: np.ndarray, b: np.ndarray | None, xp: np.ndarray) -> np.ndarray:
    """The float layer on the given (quantized-graph) input patches, through its activation: the target."""
    w2 = w.reshape(w.shape[0], -1).astype(np.float32)
    y = (xp * w2).sum(-1) if kind(plan, w) == "depthwise" else xp @ w2.T
    if b is not None:
        y = y + b
    return np.clip(y, *plan.clip).astype(np.float32) if plan.clip else y.astype(np.float32)


def fit_layer(plan: LayerPlan, w: np.ndarray, b: np.ndarray | None, scale: np.ndarray, x_q: np.ndarray,
              target: np.ndarray, iterations: int = ITERATIONS, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None,
                                                                                      dict[str, float]]:
    """Learned rounding of one layer from its quantized-input patches `x_q` and float outputs `target` at the
    same sampled positions: (integer weights, fitted bias, layer output SQNR nearest vs learned)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    depthwise = kind(plan, w) == "depthwise"
    wt = torch.from_numpy(w.astype(np.float32).reshape(w.shape[0], -1))
    s = torch.from_numpy(np.ascontiguousarray(scale.reshape(-1, 1) if scale.size > 1 else scale.reshape(1, 1)))
    base = torch.floor(wt / s)
    rest = (wt / s - base).clamp(1e-4, 1 - 1e-4)
    # h(V) = rest at the start: the soft weight begins exactly at the float weight
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    bias = torch.from_numpy(b.astype(np.float32)).clone().requires_grad_(True) if b is not None else None
    lo, hi = plan.clip if plan.clip else (-math.inf, math.inf)
    xq, tg = torch.from_numpy(x_q), torch.from_numpy(target)
    rows = int(min(len(xq), STEP_ROWS, max(256, STEP_MACS // max(w.size, 1))))

    def run(x, weight, bb):
        y = (x * weight).sum(-1) if depthwise else x @ weight.T
        y = y + bb if bb is not None else y
        return y.clamp(lo, hi) if plan.clip else y

    def soft():
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        return s * (base + h).clamp(QMIN, QMAX), h

    def sqnr(weight, bb) -> float:
        with torch.no_grad():
            num = den = 0.0
            chunk = max(64, int(8e6 // max(w.size, 1)))  # bounded temporaries for wide depthwise layers
            for i in range(0, len(xq), chunk):
                t = tg[i : i + chunk]
                e = run(xq[i : i + chunk], weight, bb) - t
                num += float((t.double() ** 2).sum())
                den += float((e.double() ** 2).sum())
            return 10 * math.log10(num / den) if den > 0 else 200.0

    nearest_q = torch.round(wt / s).clamp(QMIN, QMAX)
    before = sqnr(nearest_q * s, bias)
    params = [{"params": [v], "lr": LR}]
    if bias is not None:
        params.append({"params": [bias], "lr": 1e-3})
    opt = torch.optim.Adam(params)
    warm = int(WARMUP * iterations)
    norm = (tg**2).mean().clamp_min(1e-12)
    for it in range(iterations):
        idx = torch.randint(0, len(xq), (rows,), generator=gen)
        weight, h = soft()
        loss = ((run(xq[idx], weight, bias) - tg[idx]) ** 2).mean() / norm
        if it >= warm:
            frac = (it - warm) / max(1, iterations - warm)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(math.pi * frac))
            loss = loss + REG_WEIGHT * (1 - (2 * h - 1).abs() ** beta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = (base + (v >= 0).float()).clamp(QMIN, QMAX)
        bias_out = bias.detach() if bias is not None else None
        after = sqnr(q * s, bias_out)
        if after < before:  # never worse than nearest rounding on the layer's own output
            q, after = nearest_q, before
            bias_out = torch.from_numpy(b.astype(np.float32)) if b is not None else None
    flipped = float((q != nearest_q).float().mean())
    return (q.numpy().astype(np.int64).reshape(w.shape), None if bias_out is None else bias_out.numpy(),
            {"sqnr_nearest_db": round(before, 2), "sqnr_learned_db": round(after, 2), "flipped": round(flipped, 4)})


def _tap(path: Path, name: str, options: dict[str, Any], x: np.ndarray, workdir: Path) -> np.ndarray:
    from edgekit.quant.graphs import with_outputs
    from edgekit.quant.qgraph import run_session, session

    sess = session(with_outputs(path, [name], workdir / f"adaround-tap-{path.stem}.onnx"), options)
    idx = [o.name for o in sess.get_outputs()].index(name)
    return run_session(sess, x, batch=16)[idx]


def learn_rounding(setup, cal, dest: Path, samples: int | None = None, iterations: int | None = None,
                   log: Callable[[str], None] | None = None, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """Learned rounding of every Conv/Gemm of `setup.prepared` (see the module docstring); writes the float
    graph whose weights lie on the chosen int8 grid points to `dest`. Returns it and the per-layer record."""
    import time

    import onnx
    from onnx import numpy_helper
    from tqdm import tqdm

    from edgekit.quant.qgraph import build

    t0 = time.time()
    log = log or (lambda _m: None)
    samples, iterations = samples or SAMPLES, iterations or ITERATIONS  # read at call time: tunable
    x = cal.x[:samples]
    model = onnx.load(str(setup.prepared))
    finits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    qpath = setup.workdir / "adaround-q.onnx"
    build(setup, [], qpath)
    qmodel = onnx.load(str(qpath))
    qinits = {t.name: t for t in qmodel.graph.initializer}
    skipped: dict[str, str] = {}
    plans: list[LayerPlan] = []
    weights: dict[str, np.ndarray] = {}
    for plan in plan_layers(model):
        node = nodes[plan.name]
        w = numpy_helper.to_array(finits[node.input[1]]).astype(np.float32)
        qnode, dq, _ = _weight_dq(qmodel, plan.name)
        if dq is None or dq.input[0] not in qinits:
            skipped[plan.name] = "not int8 in the quantized graph"
        elif kind(plan, w) is None:
            skipped[plan.name] = "grouped convolution (neither dense nor depthwise)"
        elif plan.op == "Gemm" and len(x) < w.shape[1]:
            skipped[plan.name] = (f"{len(x)} calibration samples are {len(x)} input rows for {w.shape[1]} inputs: "
                                  "the rounding would fit those samples, not the layer")
        else:
            plans.append(plan)
            weights[plan.name] = w
    layers: dict[str, dict[str, Any]] = {}
    for k, plan in enumerate(tqdm(plans, desc="learned rounding", unit="layer", leave=False)):
        node, w = nodes[plan.name], weights[plan.name]
        qnode, dq, bias_src = _weight_dq(qmodel, plan.name)
        b = (numpy_helper.to_array(finits[node.input[2]]).astype(np.float32)
             if len(node.input) > 2 and node.input[2] in finits else None)
        scale = _scale(dq, qinits, w)
        onnx.save(qmodel, str(qpath))
        x_q = _tap(qpath, qnode.input[0], setup.options, x, setup.workdir)
        width = w.size if kind(plan, w) == "depthwise" else w[0].size
        out_hw = _out_hw(plan, x_q.shape[2:], w.shape[2:]) if plan.op == "Conv" else (1, 1)
        pos = positions(len(x_q), *out_hw, int(min(MAX_POSITIONS, PATCH_FLOATS // width)), seed + k)
        xp = patches(plan, x_q, w.shape, pos, out_hw)
        del x_q
        q, b_new, stats = fit_layer(plan, w, b, scale, xp, float_output(plan, w, b, xp), iterations, seed + k)
        del xp
        # the quantized graph gets the chosen integers, so the next layer's input carries them
        qdtype = numpy_helper.to_array(qinits[dq.input[0]]).dtype
        qinits[dq.input[0]].CopyFrom(numpy_helper.from_array(q.astype(qdtype), dq.input[0]))
        if b_new is not None and bias_src is not None and bias_src.op_type == "DequantizeLinear" \
                and bias_src.input[0] in qinits:
            bscale = numpy_helper.to_array(qinits[bias_src.input[1]]).astype(np.float64)
            qb = np.round(b_new.astype(np.float64) / bscale).astype(np.int32)
            qinits[bias_src.input[0]].CopyFrom(numpy_helper.from_array(qb, bias_src.input[0]))
        elif b_new is not None and len(qnode.input) > 2 and qnode.input[2] in qinits:
            qinits[qnode.input[2]].CopyFrom(numpy_helper.from_array(b_new.astype(np.float32), qnode.input[2]))
        # the float graph gets weights exactly on that grid: the exporter re-derives the same scale and integers
        finits[node.input[1]].CopyFrom(numpy_helper.from_array((q * scale.astype(np.float64)).astype(np.float32),
                                                               node.input[1]))
        if b_new is not None:
            finits[node.input[2]].CopyFrom(numpy_helper.from_array(b_new.astype(np.float32), node.input[2]))
        layers[plan.name] = stats
        log(f"learned rounding {plan.name}: layer SQNR {stats['sqnr_nearest_db']} -> {stats['sqnr_learned_db']} dB "
            f"({stats['flipped']:.1%} of weights rounded the other way) [{time.time() - t0:.0f}s]")
    onnx.save(model, str(dest))
    gains = [v["sqnr_learned_db"] - v["sqnr_nearest_db"] for v in layers.values()]
    return dest, {"layers_rounded": len(layers), "samples": len(x), "iterations": iterations,
                  "mean_layer_sqnr_gain_db": round(float(np.mean(gains)), 2) if gains else 0.0,
                  "seconds": round(time.time() - t0, 1), "layers": layers, "skipped": skipped}


def _out_hw(plan: LayerPlan, in_hw, k_hw) -> tuple[int, int]:
    a = plan.attrs
    pads = list(a.get("pads", [0, 0, 0, 0]))
    strides = a.get("strides", [1, 1])
    dil = a.get("dilations", [1, 1])
    return tuple(int((in_hw[i] + pads[i] + pads[i + 2] - dil[i] * (k_hw[i] - 1) - 1) // strides[i] + 1)
                 for i in range(2))


def check_on_grid(prepared: Path, exported, layers=None) -> dict[str, Any]:
    """How many weights of each int8 layer in the exported Q/DQ graph differ from the float weight of the
    learned graph divided by the exporter's scale: 0 everywhere when the exporter kept the chosen integers."""
    import onnx
    from onnx import numpy_helper

    fmodel = onnx.load(str(prepared), load_external_data=False)
    finits = {t.name: numpy_helper.to_array(t) for t in fmodel.graph.initializer}
    fnodes = {n.name: n for n in fmodel.graph.node}
    qmodel = exported if not isinstance(exported, (str, Path)) else onnx.load(str(exported))
    qinits = {t.name: t for t in qmodel.graph.initializer}
    off: dict[str, int] = {}
    for name, node in fnodes.items():
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in finits:
            continue
        if layers is not None and name not in layers:  # e.g. a layer learned rounding skipped
            continue
        _, dq, _ = _weight_dq(qmodel, name)
        if dq is None or dq.input[0] not in qinits:
            continue
        w = finits[node.input[1]].astype(np.float64)
        q = numpy_helper.to_array(qinits[dq.input[0]]).astype(np.int64)
        if q.shape != w.shape:  # input channels the exporter padded for its kernels (pad_input_channels)
            q = q[tuple(slice(0, n) for n in w.shape)]
        off[name] = int((np.abs(w / _scale(dq, qinits, w).astype(np.float64) - q) > 1e-3).sum())
    return {"layers": len(off), "weights_off_grid": sum(off.values())}


def check_artifact(backend: str, learned: Path, artifact_file: Path) -> dict[str, Any] | None:
    """Whether the written artifact holds the integers learned rounding chose: the Q/DQ graph's own int8
    weights for a Q/DQ backend, the stored int8 weights the backend declares a reader for otherwise (None:
    neither, nothing to check)."""
    from edgekit.backends.registry import get_spec, load_function

    spec = get_spec(backend)
    if spec.int8_weight_reader:
        return check_stored_grid(learned, load_function(spec.int8_weight_reader)(artifact_file))
    if spec.qdq_style:
        return check_on_grid(learned, artifact_file)
    return None


def check_stored_grid(learned: Path, stored) -> dict[str, Any]:
    """Per Conv/Gemm of the learned graph, its per-channel scale (max|w|/127) and integers against int8 weights
    another converter stored (`stored`: objects with values, scales and the axis the scales run along).

    A layer is matched to the stored weight whose per-channel scales equal its own on most channels, in the same
    order (layouts differ: OIHW against OHWI / 1HWC); its integers are compared channel by channel as sorted
    values, which a layout change does not alter. A converter may give single channels another scale (TFLite
    raises the weight scale of a channel whose int32 bias would overflow at input scale x weight scale: near-zero
    weights under a large folded bias): those channels are counted as rescaled, their integers not compared.
    A layer with no such stored weight is unmatched: the converter re-derived its grid (e.g. folded an op in)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(learned), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    matched, unmatched, off, rescaled, compared = 0, [], 0, 0, 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        w = w.reshape(w.shape[0], -1)
        amax = np.abs(w).max(1)
        scale = np.where(amax > 0, amax / QMAX, 1.0)
        q = np.sort(np.round(w / scale[:, None]).astype(np.int64), 1)
        best = None
        for t in stored:
            if len(t.scales) != len(scale) or t.values.size != w.size:
                continue
            same = np.isclose(t.scales, scale, rtol=1e-5, atol=0) | (amax == 0)
            if same.mean() >= 0.5 and (best is None or same.sum() > best[1].sum()):
                best = (t, same)
        if best is None:
            unmatched.append(node.name)
            continue
        t, same = best
        tq = np.sort(np.moveaxis(t.values, t.axis, 0).reshape(len(scale), -1).astype(np.int64), 1)
        matched += 1
        off += int((tq[same] != q[same]).sum())
        compared += int(q[same].size)
        rescaled += int((~same).sum())
    return {"layers_matched": matched, "layers_unmatched": unmatched, "weights_compared": compared,
            "weights_differing": off, "channels_rescaled_by_converter": rescaled}
