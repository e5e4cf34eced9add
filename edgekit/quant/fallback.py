"""Budgeted fallback: start from full INT8 and keep the most sensitive layers in higher precision, one at a
time, until top-1 agreement with FP32 (or the accuracy drop, with labels) holds on held-out data.

Why measured and not guessed: which layers int8 hurts depends on the weights and the data (a depthwise layer
whose channels span three decades of range, an activation with outliers), and layer-local error is a poor
predictor because errors add up downstream. So the candidates are ranked by what keeping each one in float
*alone* does to the model's output (`edgekit.quant.diagnose.rank_layers`) and the search verifies every step on
data the ranges were not computed from.

Keeping a layer "in higher precision" means: its weights stay float, and it reads its input activation in
float, not through the QuantizeLinear/DequantizeLinear pair the quantizer put there for the layer before it
(ONNX Runtime's `nodes_to_exclude` only does the first; a per-tensor activation quantizer on the input is
often the very thing that hurts). Where ONNX Runtime's quantizer folded a ReLU into that quantizer's range,
the ReLU is put back in front of the kept layer, so the float path computes what the FP32 model computes.

Backends: ONNX Runtime (kept layers in fp32: its CPU kernels have no fp16 convolution worth using) and
TensorRT's Q/DQ graph (kept layers in fp16, written as Casts around them, as the `mixed` precision does;
checked here with ONNX Runtime on the CPU, the same check `edgekit export` runs). TFLite's converter has no
per-layer float fallback in full-integer mode: see `check_backend`.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.metrics import sqnr_db, top1_agreement

SUPPORTED_BACKENDS = ("onnxruntime", "tensorrt")
#: activation ops ONNX Runtime's QDQ quantizer may fold into the following quantizer's range (and drop)
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")
#: fraction of the calibration samples held out to check the budget (never used for ranges)
HELD_OUT_FRACTION = 0.25
MIN_HELD_OUT = 20

TFLITE_NOTE = ("TFLite full-integer int8 has no per-layer float fallback in TensorFlow's converter (every op must "
               "be int8; only the experimental QuantizationDebugger's denylisted_nodes keeps chosen nodes float, "
               "which edgekit does not drive): use --backend onnxruntime or tensorrt for a budgeted export, or "
               "--allow-float-fallback for ops that have no int8 kernel")


@dataclass(frozen=True)
class Budget:
    """What must hold on the held-out data: agreement >= min_agreement and/or accuracy drop <= max_drop.

    Both are fractions (a drop of 1 percentage point is 0.01); `edgekit export --max-accuracy-drop PCT` takes
    points and divides by 100.
    """

    min_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if self.min_agreement is None and self.max_accuracy_drop is None:
            raise EdgekitError("a fallback budget needs --min-agreement FRACTION and/or --max-accuracy-drop PCT")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise EdgekitError(f"--min-agreement must be a fraction in (0, 1], e.g. 0.98 (got {self.min_agreement})")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise EdgekitError(f"--max-accuracy-drop must be in [0, 100] percentage points (got "
                               f"{100 * self.max_accuracy_drop:g})")

    def holds(self, result: dict[str, Any]) -> bool:
        if self.min_agreement is not None and result["agreement"] < self.min_agreement:
            return False
        drop = result.get("accuracy_drop", math.inf)
        return self.max_accuracy_drop is None or drop <= self.max_accuracy_drop + 1e-12

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.min_agreement is not None:
            out["min_agreement"] = self.min_agreement
        if self.max_accuracy_drop is not None:
            out["max_accuracy_drop"] = self.max_accuracy_drop
        return out


def check_backend(backend: str, budget: Budget | None, labels: bool) -> None:
    """Fail before any work when the backend cannot do a budgeted export or the data cannot check the budget."""
    if budget is None:
        return
    if backend == "tflite":
        raise EdgekitError(TFLITE_NOTE)
    if backend not in SUPPORTED_BACKENDS:
        raise EdgekitError(f"budgeted fallback (--min-agreement / --max-accuracy-drop) works for backends "
                           f"{', '.join(SUPPORTED_BACKENDS)}; this target runs '{backend}'")
    if budget.max_accuracy_drop is not None and not labels:
        raise EdgekitError("--max-accuracy-drop needs labels in the calibration data (an .npz with array y, or "
                           "zoo:digits); without labels use --min-agreement, which compares with FP32 only")


def split_calibration(cset, seed: int = 0):
    """(calibration part, held-out part) of a CalibrationSet, each with its own provenance."""
    from edgekit.quant.calibrate import CalibrationSet

    cal, held = split_held_out(cset.x, cset.y, seed)
    parts = []
    for idx, what in ((cal, "calibration part"), (held, "held-out part")):
        parts.append(CalibrationSet(np.ascontiguousarray(cset.x[idx]), None if cset.y is None else cset.y[idx],
                                    cset.source, cset.preprocessing, cset.available,
                                    f"{cset.selection}; {what}: {len(idx)} samples (seeded split, seed {seed})"))
    return parts[0], parts[1]


def split_held_out(x: np.ndarray, y: np.ndarray | None, seed: int = 0,
                   fraction: float = HELD_OUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Indices (calibration part, held-out part) of a seeded split; the ranges never see the held-out part."""
    n = len(x)
    held = max(MIN_HELD_OUT, round(fraction * n))
    if n - held < 1:
        raise EdgekitError(f"a budgeted export needs at least {MIN_HELD_OUT + 1} calibration samples ({MIN_HELD_OUT} "
                           f"are held out to check the budget); got {n}: pass more with --calib / --calib-samples")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n - held]), np.sort(order[n - held :])


# ---------------------------------------------------------------------------------------------------------
# the quantized graph with some layers kept in float
@dataclass
class QuantSetup:
    """Everything needed to build and check a quantized graph of one model for one backend."""

    backend: str  # onnxruntime | tensorrt
    prepared: Path  # the quantization-ready FP32 graph (ranges are keyed on it)
    ranges: Any  # edgekit.quant.calibrate.Ranges
    options: dict[str, Any]  # the target's backend options
    held_x: np.ndarray
    reference: np.ndarray  # FP32 outputs on held_x
    held_y: np.ndarray | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgekit-fallback-")))

    @property
    def kept_precision(self) -> str:
        return "fp16" if self.backend == "tensorrt" else "fp32"


def layer_names(prepared: Path) -> list[str]:
    """The candidate layers: weighted nodes (Conv/ConvTranspose/Gemm/MatMul with constant weights), graph order."""
    import onnx

    from edgekit.quant.qdq import weighted_nodes

    return weighted_nodes(onnx.load(str(prepared), load_external_data=False))


def check_layers(prepared: Path, names: Sequence[str]) -> None:
    available = layer_names(prepared)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise EdgekitError(f"no weighted layer named {', '.join(unknown)} in the quantization-ready graph; its "
                           f"layers are: {', '.join(available)}")


def build(setup: QuantSetup, kept: Sequence[str], dest: Path) -> dict[str, Any]:
    """Write the backend's Q/DQ graph with `kept` layers in higher precision to `dest`; returns the record the
    manifest keeps (the quantizer's, plus the kept layers)."""
    import onnx

    from edgekit.backends.onnxruntime import quantize_static_qdq

    kept = list(kept)
    if setup.backend == "tensorrt":
        from edgekit.backends.tensorrt import TRT_QUANT_FORMAT
        from edgekit.quant.qdq import NO_OUTPUT_QUANTIZATION

        fmt = {**TRT_QUANT_FORMAT, "per_channel": bool(setup.options.get("per_channel", True))}
        extra = {"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": NO_OUTPUT_QUANTIZATION}
        record = quantize_static_qdq(setup.prepared, dest, setup.ranges, fmt, nodes_to_exclude=kept,
                                     extra_options=extra)
    else:
        record = quantize_static_qdq(setup.prepared, dest, setup.ranges, setup.options, nodes_to_exclude=kept)
    if kept:
        model = onnx.load(str(dest))
        prepared = onnx.load(str(setup.prepared), load_external_data=False)
        restored = float_inputs(model, prepared, kept)
        folded: list[str] = []
        if setup.backend == "tensorrt":
            from edgekit.quant.qdq import nodes_to_fp16

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


def fold_float_output_weights(model) -> list[str]:
    """For each weighted node ONNX Runtime cannot fuse into an int8 kernel (its output is not read by exactly
    one QuantizeLinear: it feeds a kept layer), replace DequantizeLinear(constant) on its weight and bias by
    the float constant it computes, in place; returns the nodes changed.

    Why: ONNX Runtime runs such a node as a float op whose weight is computed by a DequantizeLinear on every
    run, and a weight that is not a constant also keeps the op out of its NCHWc (blocked) convolution: a
    depthwise layer measured 10x slower that way than in the FP32 graph. The numbers do not change: the
    folded constant is exactly what DequantizeLinear computes ((q - zero_point) * scale in float32).
    """
    from onnx import numpy_helper

    from edgekit.backends.onnxruntime import WEIGHT_OPS

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    changed: list[str] = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        readers = consumers.get(node.output[0], [])
        if node.output[0] not in outputs and len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
            continue  # DQ -> op -> Q: ONNX Runtime fuses it into its int8 kernel
        done = False
        for idx in (1, 2):
            if idx >= len(node.input) or not node.input[idx]:
                continue
            dq = producers.get(node.input[idx])
            if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input if i):
                continue
            q = numpy_helper.to_array(inits[dq.input[0]])
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zero = (numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2]
                    else np.zeros_like(scale, dtype=np.int32))
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * q.ndim
                shape[axis % q.ndim] = scale.size
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            value = ((q.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)
            name = f"{node.input[idx]}_folded"
            if name not in inits:
                model.graph.initializer.append(numpy_helper.from_array(value, name))
                inits[name] = model.graph.initializer[-1]
            node.input[idx] = name
            done = True
        if done:
            changed.append(node.name)
    if changed:
        _drop_unread_qdq(model)
    return changed


def float_inputs(model, prepared, kept: Sequence[str]) -> list[str]:
    """Make each kept node read its activation inputs in float, in place; returns the tensors so restored.

    A kept node's input comes through DequantizeLinear(QuantizeLinear(t)); it is rewired to t. When the
    quantizer folded a ReLU/Clip into that quantizer (t is then the pre-activation tensor), the activation is
    re-inserted from the FP32 graph. Q/DQ pairs left with no reader are removed.
    """
    import onnx
    from onnx import helper

    producers = {o: n for n in model.graph.node for o in n.output}
    prep_nodes = {n.name: n for n in prepared.graph.node}
    prep_producers = {o: n for n in prepared.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    prep_inits = {t.name: t for t in prepared.graph.initializer}
    wanted = set(kept)
    restored: list[str] = []
    added: list[Any] = []
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue
            source = q.input[0]
            # the tensor this input is in the FP32 graph, and whether the quantizer dropped its activation
            prep_input = prep_nodes[node.name].input[i] if node.name in prep_nodes else source
            act = prep_producers.get(prep_input)
            have = producers.get(source)
            if (act is not None and act.op_type in FOLDABLE_ACTIVATIONS and have is not None
                    and have.op_type != act.op_type):
                out = f"{source}_{act.op_type.lower()}_float"
                if out not in {o for n in added for o in n.output}:
                    extra_inputs = [n for n in act.input[1:] if n]
                    for c in extra_inputs:
                        if c in prep_inits and c not in inits:
                            model.graph.initializer.append(prep_inits[c])
                            inits.add(c)
                    added.append(helper.make_node(act.op_type, [source, *act.input[1:]], [out],
                                                  name=f"{out}_node", **{a.name: helper.get_attribute_value(a)
                                                                          for a in act.attribute}))
                source = out
            node.input[i] = source
            restored.append(source)
    if added:
        model.graph.node.extend(added)
    _drop_unread_qdq(model)
    _topological_sort(model)
    onnx.checker.check_model(model)
    return restored


def _drop_unread_qdq(model) -> None:
    while True:
        read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        ids = {id(n) for n in dead}
        keep = [n for n in model.graph.node if id(n) not in ids]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    from edgekit.quant.qdq import prune_initializers

    prune_initializers(model)


def _topological_sort(model) -> None:
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise EdgekitError(f"cannot order the graph after keeping layers in float (cycle near {rest[0].name})")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


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
                           "sqnr_db": _db(sqnr_db(setup.reference, got))}
    if setup.held_y is not None:
        y = setup.held_y.reshape(-1)
        ref_acc = float((setup.reference.reshape(len(y), -1).argmax(1) == y).mean())
        acc = float((got.reshape(len(y), -1).argmax(1) == y).mean())
        out.update({"accuracy": acc, "reference_accuracy": ref_acc, "accuracy_drop": ref_acc - acc})
    return out


def _db(x: float) -> float:
    return 200.0 if math.isinf(x) else round(x, 3)


def build_and_evaluate(setup: QuantSetup, kept: Sequence[str], tag: str) -> dict[str, Any]:
    path = setup.workdir / f"{tag}.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    build(setup, kept, path)
    return evaluate(setup, path)


# ---------------------------------------------------------------------------------------------------------
# the search
@dataclass
class FallbackPlan:
    """The layers kept in higher precision and how the search got there (all measured on held-out data)."""

    budget: Budget | None
    kept: list[str]
    kept_precision: str
    start: dict[str, Any]  # full int8
    final: dict[str, Any]
    steps: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    held_out: int
    cost: dict[str, Any] = field(default_factory=dict)
    #: the all-int8 techniques the budget tried before keeping layers in float (see `budgeted_search`)
    techniques: list[dict[str, Any]] = field(default_factory=list)

    @property
    def techniques_applied(self) -> list[str]:
        return [t["technique"] for t in self.techniques if t["applied"]]

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget.to_json() if self.budget else None, "held_out_samples": self.held_out,
                "kept_layers": self.kept, "kept_precision": self.kept_precision,
                "full_int8": self.start, "int8_techniques": self.techniques,
                "int8_techniques_applied": self.techniques_applied, "result": self.final, "steps": self.steps,
                "ranking": self.ranking[:10], "cost": self.cost,
                "method": "first the all-int8 techniques in int8_techniques (each kept when it met the budget or "
                          "raised the output SQNR); then, if the budget still failed, layers ranked by the "
                          "output-SQNR gain of keeping each alone in higher precision, added in that order until "
                          "the budget held on the held-out samples, then any layer not needed for the budget "
                          "dropped again"}


#: techniques that keep every layer int8 (so cost no latency), tried in this order by `budgeted_search` before
#: any layer is kept in float: the cheapest fix first. A technique the user already asked for is not repeated.
FIRST_TRY: tuple[str, ...] = ("equalize",)


def budgeted_search(setup: QuantSetup, budget: Budget, cal, method: str, method_opts: dict[str, Any], *,
                    applied: Sequence[str] = (), first_try: Sequence[str] | None = None,
                    log: Callable[[str], None] | None = None) -> tuple[QuantSetup, FallbackPlan]:
    """The budgeted export's search: all-int8 techniques first, then layer fallback (`search`) if still needed.

    Each technique in `first_try` (default FIRST_TRY) not in `applied` is tried on the current graph while the
    budget fails; it is kept when the budget then holds or the output SQNR on the held-out samples rose, else
    dropped. Returns the setup the plan applies to (equalisation changes the graph and its ranges) and the plan,
    whose `techniques` records every try and whose `start` is the full-int8 graph before them.
    """
    from edgekit.quant import ptq_improve

    log = log or (lambda _m: None)
    start = build_and_evaluate(setup, [], "full-int8")
    log(f"full int8 on {len(setup.held_x)} held-out samples: agreement {start['agreement']:.4f}, "
        f"SQNR {start['sqnr_db']:.1f} dB")
    current, tried = start, []
    for tech in FIRST_TRY if first_try is None else first_try:
        if tech in applied or budget.holds(current):
            continue
        candidate, steps = ptq_improve.apply(setup, [tech], cal, method, method_opts, before=current)
        result = {k: v for k, v in steps[-1].items() if k != "technique"}
        keep = budget.holds(result) or result["sqnr_db"] > current["sqnr_db"]
        tried.append({"technique": tech, "applied": keep, **result})
        log(f"budget: {tech} (all layers int8): agreement {result['agreement']:.4f}, SQNR "
            f"{result['sqnr_db']:.1f} dB on held-out samples; {'kept' if keep else 'not kept'}")
        if keep:
            setup, current = candidate, {k: result[k] for k in current if k in result}
    plan = search(setup, budget, log=log, start=current)
    plan.start, plan.techniques = start, tried
    return setup, plan


def search(setup: QuantSetup, budget: Budget, ranking: list[dict[str, Any]] | None = None,
           log: Callable[[str], None] | None = None, max_kept: int | None = None,
           start: dict[str, Any] | None = None) -> FallbackPlan:
    """Greedy budgeted fallback. `ranking` (from diagnose.rank_layers) is computed when not given; `start` is
    the full-int8 result of `setup` when already measured."""
    log = log or (lambda _m: None)
    if start is None:
        start = build_and_evaluate(setup, [], "full-int8")
        log(f"full int8 on {len(setup.held_x)} held-out samples: agreement {start['agreement']:.4f}, "
            f"SQNR {start['sqnr_db']:.1f} dB")
    steps: list[dict[str, Any]] = []
    kept: list[str] = []
    final = start
    if not budget.holds(start):
        if ranking is None:
            from edgekit.quant.diagnose import rank_layers

            ranking = rank_layers(setup, log=log)
        order = [r["layer"] for r in ranking]
        limit = len(order) if max_kept is None else min(max_kept, len(order))
        from tqdm import tqdm

        for layer in tqdm(order[:limit], desc="fallback", unit="layer", leave=False):
            kept.append(layer)
            final = build_and_evaluate(setup, kept, f"kept-{len(kept)}")
            steps.append({"added": layer, "kept": list(kept), **final})
            log(f"keeping {len(kept)} layer(s) ({layer} added): agreement {final['agreement']:.4f}, "
                f"SQNR {final['sqnr_db']:.1f} dB")
            if budget.holds(final):
                break
        else:
            raise EdgekitError(
                f"the budget {budget.to_json()} does not hold even with {len(kept)} layer(s) kept in "
                f"{setup.kept_precision} (agreement {final['agreement']:.4f} on {len(setup.held_x)} held-out "
                "samples): relax the budget, try --range-choice / --bias-correction, or use QAT "
                "(edgekit qat)")
        # drop layers the budget does not need (an early pick may be redundant once later ones are kept)
        for layer in list(kept[:-1]):
            trial = [k for k in kept if k != layer]
            result = build_and_evaluate(setup, trial, f"drop-{layer}")
            if budget.holds(result):
                kept, final = trial, result
                steps.append({"dropped": layer, "kept": list(kept), **result})
                log(f"{layer} is not needed for the budget: dropped")
    return FallbackPlan(budget, kept, setup.kept_precision, start, final, steps, ranking or [], len(setup.held_x))


# ---------------------------------------------------------------------------------------------------------
# cost: what the kept layers cost in compute (any backend) and in measured latency (ONNX Runtime)
def macs_per_layer(prepared: Path) -> dict[str, int]:
    """Multiply-accumulates of each weighted layer for one sample (from the graph's inferred shapes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(prepared), load_external_data=False))
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
              for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.name not in set(layer_names(prepared)) or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        y = shapes.get(node.output[0])
        if y is None:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            out[node.name] = int(np.prod(y[1:]) * np.prod(w[1:]))
        else:  # Gemm / MatMul: outputs x reduction
            out[node.name] = int(np.prod(y[1:]) * (w[0] if len(w) == 2 else np.prod(w[:-1])))
    return out


def latency_ms(path: Path, options: dict[str, Any], x: np.ndarray, rounds: int = 5, iters: int = 20) -> float:
    """Median single-thread batch-1 latency of one graph (for interleaved comparisons use `compare_latency`)."""
    return compare_latency({"m": path}, options, x, rounds, iters)["m"]


def compare_latency(paths: dict[str, Path], options: dict[str, Any], x: np.ndarray, rounds: int = 5,
                    iters: int = 20) -> dict[str, float]:
    """Median batch-1 latency (ms, one thread) of several graphs, timed in interleaved rounds so drift on a
    shared machine touches all alike."""
    import time

    sessions = {k: session(p, options) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x[:1].astype(np.float16 if s.get_inputs()[0].type == "tensor(float16)"
                                                       else np.float32)} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():
        for _ in range(5):
            s.run(None, feeds[k])
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(float(np.median(v)), 4) for k, v in times.items()}


def plan_cost(setup: QuantSetup, plan: FallbackPlan, measure_latency: bool = True) -> dict[str, Any]:
    """MACs left in float and, for ONNX Runtime, measured latency of full int8 vs the budgeted graph."""
    macs = macs_per_layer(setup.prepared)
    total = sum(macs.values()) or 1
    kept_macs = sum(macs.get(k, 0) for k in plan.kept)
    cost: dict[str, Any] = {"macs_total": total, "macs_kept": kept_macs,
                            "macs_kept_fraction": round(kept_macs / total, 4),
                            "per_layer_macs": {k: macs.get(k, 0) for k in plan.kept}}
    if measure_latency and setup.backend == "onnxruntime":
        full, budgeted = setup.workdir / "cost-full.onnx", setup.workdir / "cost-budgeted.onnx"
        build(setup, [], full)
        graphs = {"fp32": setup.prepared, "full_int8": full}
        if plan.kept:
            build(setup, plan.kept, budgeted)
            graphs["budgeted"] = budgeted
        lat = compare_latency(graphs, setup.options, setup.held_x)
        lat.setdefault("budgeted", lat["full_int8"])  # no layer kept: the budgeted graph is the full-int8 one
        cost["latency_ms"] = {**lat, "how": "ONNX Runtime CPU, 1 thread, batch 1, median of 5 interleaved rounds "
                                            "of 20 runs, on the export machine (fp32: the FP32 graph the int8 one "
                                            "was made from)"}
        cost["speedup_vs_fp32"] = round(lat["fp32"] / lat["budgeted"], 3) if lat["budgeted"] > 0 else None
    elif setup.backend == "tensorrt":
        cost["latency_ms"] = "not measured here (needs TensorRT on the device); see macs_kept_fraction"
    return cost


# ---------------------------------------------------------------------------------------------------------
# exporters that write the plan (used by ExportPipeline when a budget is given)
def budgeted_exporter(backend: str, plan: FallbackPlan, setup: QuantSetup, options: dict[str, Any]):
    """The backend's exporter, changed only in how it writes int8: with the plan's layers kept."""
    if backend == "onnxruntime":
        return _OrtBudgeted(plan, setup, **options)
    if backend == "tensorrt":
        return _TensorRTBudgeted(plan, setup, **options)
    raise EdgekitError(TFLITE_NOTE if backend == "tflite" else f"no budgeted fallback for backend '{backend}'")


def _ort_base():
    from edgekit.backends.onnxruntime import OrtExporter

    return OrtExporter


def _trt_base():
    from edgekit.backends.tensorrt import TensorRTExporter

    return TensorRTExporter


class _OrtBudgeted(_ort_base()):  # type: ignore[misc]
    def __init__(self, plan: FallbackPlan, setup: QuantSetup, **options: Any) -> None:
        super().__init__(**options)
        self.plan, self.setup = plan, setup

    def export(self, request):
        if request.precision != "int8" or request.onnx.quantization is not None:
            return super().export(request)
        import onnx

        from edgekit.backends.base import ExportResult
        from edgekit.backends.onnxruntime import X64_POLICY, float_weights, session_config
        from edgekit.graph.onnx_export import describe

        out = request.out_dir / "model.onnx"
        setup = replace(self.setup, prepared=request.prepared, ranges=request.ranges)
        record = build(setup, self.plan.kept, out)
        record["nodes_kept_float"] = list(self.plan.kept)
        config = session_config(request.target.backend_options)
        details: dict[str, Any] = {"precision": "int8", "session_config": config, "x64quantprecision": X64_POLICY,
                                   "quantization": record,
                                   "float_weight_nodes": float_weights(onnx.load(str(out)))}
        inputs, outputs, opset = describe(out)
        details["opset"] = opset
        return ExportResult("model.onnx", inputs, outputs, details)


class _TensorRTBudgeted(_trt_base()):  # type: ignore[misc]
    """TensorRT's `mixed` path with the plan's layers as keep_fp16, and their inputs read in float."""

    def __init__(self, plan: FallbackPlan, setup: QuantSetup, **options: Any) -> None:
        super().__init__(**options)
        self.plan, self.setup = plan, setup

    def export(self, request):
        if request.precision != "int8" or request.onnx.quantization is not None or not self.plan.kept:
            return super().export(request)
        self.options = {**self.options, "keep_fp16": list(self.plan.kept)}
        result = super().export(replace(request, precision="mixed"))
        result.details["precision"] = "int8 with budgeted fp16 fallback (TensorRT mixed)"
        return result

    def _int8(self, request, out, opts):
        setup = replace(self.setup, prepared=request.prepared, ranges=request.ranges)
        record = build(setup, self.plan.kept, out)
        from edgekit.backends.tensorrt import TRT_QUANT_FORMAT

        record.update({"source": f"edgekit ranges ({request.ranges.method}), the shared calibration set",
                       "format_rules": dict(TRT_QUANT_FORMAT),
                       "mixed": {"fp16_nodes": list(self.plan.kept), "fp32_nodes": [],
                                 "chosen_by": "budgeted fallback (see manifest fallback)"}})
        return record
