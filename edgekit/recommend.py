"""The precision decision helper: which precision (and which training techniques) to ship on a target.

Two halves. `decide` walks a small decision tree over the target profile's fields (device class, CPU
architecture, the precisions its backend offers) plus the user's priority and workload, and records every node
it passed so the user can see *why*. `judge` then checks measured benchmark records against an accuracy
budget: a static tree cannot know that INT8 costs this particular model 3 points, the measurements can.

The tree reads fields, never target names, so a user's own target file gets the same reasoning as a
built-in one:

    priority latency
      gpu                       -> mixed (FP16 + INT8), PTQ
      cpu / edge-cpu            -> dynamic INT8
      npu                       -> static INT8, PTQ
      mcu                       -> static (full-integer) INT8, PTQ
    priority cost
      workload batch            -> distillation + pruning (+ the class's throughput precision: mixed on gpu,
                                   INT8 elsewhere)
      workload online
        ARM Cortex-A class CPU  -> runtime has int4-weight?  yes: 4-bit weights + distillation
                                                             no:  distillation + INT8, saying why
        any other device        -> distillation + INT8

"ARM Cortex-A class" = device_class edge-cpu with an ARM cpu_arch (not ARM servers, GPU modules or Cortex-M MCUs).
Without --workload, cost decisions take online for edge devices (edge-cpu, mcu, or a gpu/npu on an ARM host)
and batch for servers; latency decisions are online by nature.

Whatever a leaf wants, the target may not offer; the precision then falls back along `FALLBACK_ORDER`
(accelerators and MCUs skip dynamic-int8) and the path says so.

With measurements, each candidate is judged against its FP32 baseline by the rule the bench table uses too
(edgekit.bench.baseline: the same target's fp32 record at the same batch and device, else torch eager fp32):
every point lost must buy >= 2x speed-up, a size reduction may cost <= 5 points of recall (accuracy, or
agreement, when no recall is recorded), and the user's --max-accuracy-drop holds. The fastest survivor (p50)
wins; quantized artifacts slower than FP32 are flagged. Only records measured on a device of the target's class
count, unless --allow-proxy.

Accuracies are fractions in [0, 1]; "points" are percentage points (x100) of them, as everywhere in edgekit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.bench.baseline import pick as pick_baseline
from edgekit.bench.baseline import runtime_name
from edgekit.bench.provenance import same_class
from edgekit.errors import EdgekitError
from edgekit.common.facade import make_callable
from edgekit.targets import PRECISIONS, Target, load_target

PRIORITIES = ("latency", "cost")
WORKLOADS = ("online", "batch")
TECHNIQUES = ("distill", "prune", "qat", "ptq")

#: where a wanted precision goes when the target does not offer it, nearest first. INT8-family wishes stay
#: integer as long as they can (the reason they were wanted is integer kernels); everything ends at fp32,
#: which every backend offers. When nothing listed matches, the target's own default precision is used.
FALLBACK_ORDER: dict[str, tuple[str, ...]] = {
    "mixed": ("fp16", "int8", "fp32"),
    "fp16": ("fp32",),
    "int8": ("dynamic-int8", "mixed", "fp16", "fp32"),
    "dynamic-int8": ("int8", "fp32"),
    "int4-weight": ("int8", "dynamic-int8", "fp32"),
    "fp32": (),
}
#: dynamic quantization computes activation ranges at run time on CPU kernels; GPUs, NPUs and MCUs need
#: static ranges, so it is never a fallback there.
_STATIC_ONLY_CLASSES = ("gpu", "npu", "mcu")
#: device classes that run on the device itself (one request at a time) rather than in a server
_EDGE_CLASSES = ("edge-cpu", "mcu")
_ARM_ARCHES = ("aarch64", "arm64", "arm")

#: rule ids, as they appear in `rejected[].rule`
RULE_SPEEDUP = "2x-per-point"
RULE_SIZE = "size-recall"
RULE_BUDGET = "max-accuracy-drop"
RULE_NO_LATENCY = "no-latency"
RULE_NO_ACCURACY = "no-accuracy"
RULE_COSINE = "min-cosine"

RULE_NO_BASELINE = "no-baseline"
SPEEDUP_PER_POINT = 2.0
SIZE_RECALL_POINTS = 5.0

_EAGER_NAMES = ("torch", "pytorch", "torch-eager", "torch_eager", "eager")


# --------------------------------------------------------------------------------------------------------
# the tree
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeDecision:
    """Where the static tree ends. `leaf` is a stable id (tests and reports key on it); `path` is readable."""

    leaf: str
    wanted: str  # what the leaf asked for, before the target's precisions were consulted
    precision: str  # what the target offers, after fallback
    techniques: tuple[str, ...]
    workload: str
    path: tuple[str, ...]


def is_arm(cpu_arch: str) -> bool:
    arch = cpu_arch.lower()
    return arch in _ARM_ARCHES or arch.startswith("armv")


def is_cortex_a_class(target: Target) -> bool:
    """An application-class ARM core on the device itself (phones, boards). Not an ARM server CPU (class cpu,
    Neoverse), not a GPU module's host CPU (class gpu), not a Cortex-M (class mcu)."""
    return target.device_class == "edge-cpu" and is_arm(target.cpu_arch)


def default_workload(target: Target) -> str:
    """An edge device serves its own requests one at a time; a server-class device is usually fed batches.
    An ARM host makes a gpu or npu an embedded module (Jetson-class), hence online."""
    if target.device_class in _EDGE_CLASSES or (target.device_class in ("gpu", "npu") and is_arm(target.cpu_arch)):
        return "online"
    return "batch"


def _techniques(base: Sequence[str], precision: str) -> tuple[str, ...]:
    """The training/export steps for `precision`. Static INT8 (and the INT8 half of mixed) needs activation
    ranges: when a training loop runs anyway (distillation), fake-quant fine-tuning (QAT) with the teacher's
    targets is nearly free and recovers more than calibration alone; otherwise post-training calibration."""
    out = list(base)
    if precision in ("int8", "mixed"):
        out.append("qat" if "distill" in base else "ptq")
    return tuple(t for t in TECHNIQUES if t in out)


def resolve_precision(target: Target, wanted: str) -> tuple[str, str]:
    """The precision to use on `target` for a leaf that wants `wanted`, and the path step that says how."""
    offered = ", ".join(target.precisions)
    if wanted in target.precisions:
        return wanted, f"target offers {wanted}? yes ({target.backend}: {offered})"
    chain = [p for p in FALLBACK_ORDER[wanted]
             if not (p == "dynamic-int8" and target.device_class in _STATIC_ONLY_CLASSES)]
    order = " -> ".join((wanted, *chain))
    for p in chain:
        if p in target.precisions:
            return p, (f"target offers {wanted}? no ({target.backend}: {offered}) -> falling back to {p} "
                       f"(order {order})")
    return target.default_precision, (
        f"target offers {wanted}? no ({target.backend}: {offered}), nor any of {order} -> "
        f"the target's default precision {target.default_precision}")


def decide(target: Target, priority: str = "latency", workload: str | None = None) -> TreeDecision:
    """Walk the tree for `target`; every node appends one readable step to the path."""
    if priority not in PRIORITIES:
        raise EdgekitError(f"unknown priority '{priority}'; choose one of {', '.join(PRIORITIES)}")
    if workload is not None and workload not in WORKLOADS:
        raise EdgekitError(f"unknown workload '{workload}'; choose one of {', '.join(WORKLOADS)}")
    cls = target.device_class
    path = [f"target {target.name}: device_class {cls}, backend {target.backend}, cpu_arch {target.cpu_arch}"]
    if workload is None and priority == "latency":
        workload = "online"  # latency-sensitive means someone waits for each answer
        workload_step = "workload: online (latency priority)"
    elif workload is None:
        workload = default_workload(target)
        workload_step = f"workload: {workload} (default for device_class {cls}"
        workload_step += f" on {target.cpu_arch})" if cls in ("gpu", "npu") else ")"
    else:
        workload_step = f"workload: {workload} (--workload)"
    base: tuple[str, ...] = ()

    if priority == "latency":
        path.append("priority: latency -> decide by device class")
        if workload == "batch":
            path.append(f"{workload_step}; under latency priority the device class decides alone")
        if cls == "gpu":
            leaf, wanted = "latency/gpu", "mixed"
            path.append("device class gpu -> mixed precision (FP16 + INT8): tensor cores run both; INT8 where "
                        "it costs little, FP16 where it does not")
        elif cls in ("cpu", "edge-cpu"):
            leaf, wanted = "latency/cpu", "dynamic-int8"
            path.append(f"device class {cls} (a CPU) -> dynamic INT8: int8 weights and GEMMs with activation "
                        "ranges taken at run time, no calibration set to get wrong")
        elif cls == "npu":
            leaf, wanted = "latency/npu", "int8"
            path.append("device class npu -> static INT8: NPUs run calibrated fixed-point graphs natively; "
                        "ranges must be known before compilation")
        else:  # mcu
            leaf, wanted = "latency/mcu", "int8"
            path.append("device class mcu -> full-integer INT8: microcontrollers have little or no floating "
                        "point and kilobytes of memory")
    else:
        path.append("priority: cost -> decide by workload")
        path.append(workload_step)
        if workload == "batch":
            base = ("distill", "prune")
            wanted = "mixed" if cls == "gpu" else "int8"
            leaf = "cost/batch"
            path.append(f"batch inference -> distillation + pruning: fewer FLOPs per sample cut the bill at any "
                        f"precision; precision {wanted}, the throughput precision of device class {cls}")
        elif is_cortex_a_class(target):
            base = ("distill",)
            path.append(f"edge device with an ARM Cortex-A class CPU? yes (device_class {cls}, cpu_arch "
                        f"{target.cpu_arch}) -> 4-bit weights + distillation where the runtime supports it")
            if "int4-weight" in target.precisions:
                leaf, wanted = "cost/arm-int4", "int4-weight"
                path.append(f"runtime supports 4-bit weights? yes ({target.backend} offers int4-weight) -> "
                            "4-bit weights take an eighth of FP32's bytes and half of INT8's; distillation "
                            "recovers the accuracy they cost")
            else:
                leaf, wanted = "cost/arm-int8", "int8"
                path.append(f"runtime supports 4-bit weights? no ({target.backend} offers "
                            f"{', '.join(target.precisions)}; no int4-weight kernels) -> distillation + INT8 "
                            "instead: INT8 is the smallest weight format this runtime executes natively")
        else:
            base = ("distill",)
            leaf, wanted = "cost/edge-int8", "int8"
            where = "edge device" if default_workload(target) == "online" else "online serving on a server"
            path.append(f"{where} (device_class {cls}; the 4-bit rule is for ARM Cortex-A class edge CPUs) -> "
                        "distillation + INT8: a smaller student at a quarter of FP32's bytes per weight")
    precision, step = resolve_precision(target, wanted)
    path.append(step)
    techniques = _techniques(base, precision)
    path.append(f"recommend {precision}" + (f" with {' + '.join(techniques)}" if techniques else ""))
    return TreeDecision(leaf, wanted, precision, techniques, workload, tuple(path))


# --------------------------------------------------------------------------------------------------------
# measured results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One benchmark record, normalised; optional fields are None when the record lacks them."""

    index: int
    artifact: str
    target: str | None
    precision: str
    runtime: str | None
    batch: int | None
    p50_ms: float | None
    accuracy: float | None
    agreement: float | None
    recall: float | None
    model_bytes: int | None
    eager: bool  # a torch eager run: an FP32 reference, never a candidate for another target
    #: mean and worst cosine to FP32 (embeddings, hidden states), None when not measured
    cosine: tuple[float, float] | None = None


@dataclass(frozen=True)
class Verdict:
    """One candidate judged against its FP32 baseline. `rule` is None when it passed."""

    artifact: str
    precision: str
    baseline: str
    p50_ms: float | None
    speedup: float | None
    points_lost: float | None
    metric: str | None  # "accuracy" or "agreement" (the proxy when no labelled accuracy exists)
    size_ratio: float | None  # candidate bytes / baseline bytes
    rule: str | None = None
    reason: str = ""
    flag: str = ""  # set for a quantized artifact slower than FP32


@dataclass(frozen=True)
class Judgement:
    source: str
    baseline: str
    verdicts: tuple[Verdict, ...]
    chosen: Verdict | None
    ignored: tuple[tuple[str, str], ...]  # (artifact, why it was not a candidate)
    max_accuracy_drop: float | None
    path: tuple[str, ...]
    proxy: tuple[tuple[str, str], ...] = ()  # (artifact, why) ranked although not measured on the target's class
    min_cosine: float | None = None

    @property
    def rejected(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.rule is not None)

    @property
    def flagged(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.flag)


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """A bench JSON file: a list of records, or an object with a `records` list."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise EdgekitError(f"cannot read results file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise EdgekitError(f"{p}: not a text file; results= (--results) takes the JSON that `edgekit bench --json` "
                           "writes") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise EdgekitError(f"{p}: not valid JSON (nested too deeply to read)") from None
    return records_from(data, str(p))


STATUSES = ("ok", "skipped", "error")


def check_record(rec: Mapping[str, Any], index: int, source: str) -> None:
    """The typed fields of one record, whatever its status: a wrong type is refused here, in one line, rather
    than silently read as missing (a text `batch` or a list `target` is a broken file, not a null)."""
    from edgekit.common import schema

    where = f"{source}: record {index}"
    status = rec.get("status", "ok")
    schema.string(where, "status", status, STATUSES)
    for key in ("artifact", "target", "precision", "name", "error", "backend"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise schema.bad(where, key, rec[key], "a string or null")
    for key, lo in (("batch", 1), ("threads", 0), ("model_bytes", 0), ("warmup", 0), ("iters", 0)):
        if rec.get(key) is not None:
            schema.integer(where, key, rec[key], lo)
    if status == "ok":
        parse_record(rec, index, source)


def records_from(data: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    if not isinstance(data, list):
        raise EdgekitError(f"{source}: expected a JSON list of benchmark records or an object with a 'records' "
                           f"list (got {type(data).__name__})")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise EdgekitError(f"{source}: record {i} is not a JSON object (got {type(rec).__name__})")
        check_record(rec, i, source)
    return data


def _number(rec: Mapping[str, Any], key: str, where: str, fraction: bool = False) -> float | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EdgekitError(f"{where}: field '{key}' must be a number (got {value!r})")
    if fraction and not 0.0 <= value <= 1.0:
        raise EdgekitError(f"{where}: field '{key}' must be a fraction in [0, 1] (got {value}); "
                           "edgekit records accuracies as fractions, not percentages")
    return float(value)


def _latency(rec: Mapping[str, Any], where: str) -> float | None:
    lat = rec.get("latency_ms")
    value = lat.get("p50", lat.get("mean")) if isinstance(lat, dict) else lat
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise EdgekitError(f"{where}: field 'latency_ms' must hold a positive p50 (got {value!r})")
    return float(value)


def parse_record(rec: Mapping[str, Any], index: int, source: str) -> Record:
    target = rec.get("target") if isinstance(rec.get("target"), str) else None
    precision = rec.get("precision")
    artifact = rec.get("artifact")
    label = str(artifact) if artifact else f"record {index} ({target or '?'} {precision or '?'})"
    where = f"{source}: record {index} ('{label}')"
    if not isinstance(precision, str):
        raise EdgekitError(f"{where}: missing field 'precision'")
    runtime = runtime_name(rec.get("runtime"))
    backend = runtime_name(rec.get("backend"))
    eager = any(n in _EAGER_NAMES for n in (runtime, backend, (target or "").lower()))
    batch = rec.get("batch")
    size = rec.get("model_bytes")
    return Record(
        index=index, artifact=label, target=target, precision=precision, runtime=runtime or backend,
        batch=batch if isinstance(batch, int) and not isinstance(batch, bool) else None,
        p50_ms=_latency(rec, where),
        accuracy=_number(rec, "accuracy", where, fraction=True),
        agreement=_number(rec, "agreement", where, fraction=True),
        recall=_number(rec, "recall", where, fraction=True),
        model_bytes=size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None,
        eager=eager, cosine=_cosine(rec, where),
    )


def _cosine(rec: Mapping[str, Any], where: str) -> tuple[float, float] | None:
    value = rec.get("cosine")
    if value is None:
        return None
    try:
        mean, worst = float(value["mean"]), float(value["worst"])
    except (TypeError, KeyError, ValueError):
        raise EdgekitError(f"{where}: field 'cosine' must be {{\"mean\": x, \"worst\": y}} (got {value!r})") from None
    if not (-1.0 - 1e-6 <= worst <= mean <= 1.0 + 1e-6):
        raise EdgekitError(f"{where}: field 'cosine' must have -1 <= worst <= mean <= 1 (got {value!r})")
    return mean, worst


def _judge_one(cand: Record, base: Record, max_drop: float | None, min_cosine: float | None = None) -> Verdict:
    speedup = base.p50_ms / cand.p50_ms if cand.p50_ms is not None and base.p50_ms is not None else None
    is_base = cand is base
    if cand.accuracy is not None and base.accuracy is not None:
        metric, points = "accuracy", 100.0 * (base.accuracy - cand.accuracy)
    elif is_base:
        metric, points = None, 0.0
    elif cand.agreement is not None:
        # the FP32 reference agrees with itself; top-1 agreement is the accuracy proxy without labels
        metric, points = "agreement", 100.0 * (1.0 - cand.agreement)
    elif cand.cosine is not None:
        # an embedding has no top-1: its mean cosine to FP32 is the proxy (1 - cosine, in points)
        metric, points = "cosine", max(0.0, 100.0 * (1.0 - cand.cosine[0]))
    else:
        metric, points = None, None
    size_ratio = (cand.model_bytes / base.model_bytes
                  if cand.model_bytes is not None and base.model_bytes is not None else None)
    v = Verdict(cand.artifact, cand.precision, base.artifact, cand.p50_ms, speedup, points, metric, size_ratio)

    def reject(rule: str, reason: str) -> Verdict:
        return replace(v, rule=rule, reason=reason)

    if cand.p50_ms is None:
        return reject(RULE_NO_LATENCY, "no latency_ms measured; cannot compare its speed")
    if points is None or speedup is None:
        return reject(RULE_NO_ACCURACY, "neither accuracy, agreement nor cosine measured; cannot judge its loss")
    if min_cosine is not None and not is_base:
        if cand.cosine is None:
            return reject(RULE_COSINE, f"no cosine to FP32 measured; --min-cosine is {min_cosine:g}")
        if cand.cosine[0] < min_cosine - 1e-12:
            return reject(RULE_COSINE, f"mean cosine to FP32 {cand.cosine[0]:.4f} (worst {cand.cosine[1]:.4f}) is "
                                       f"below --min-cosine {min_cosine:g}")
    flag = ""
    if cand.precision != "fp32" and speedup < 1.0:
        flag = f"quantized but slower than FP32 ({speedup:.2f}x, p50 {cand.p50_ms:.3g} vs {base.p50_ms:.3g} ms)"
        v = replace(v, flag=flag)
    needed = SPEEDUP_PER_POINT * points
    if points > 0 and speedup < needed - 1e-9:
        return reject(RULE_SPEEDUP, f"loses {points:.2f} points ({metric}) for a {speedup:.2f}x speed-up over "
                                    f"FP32; each point lost must buy {SPEEDUP_PER_POINT:g}x, so it needs "
                                    f">= {needed:.2f}x")
    smaller = size_ratio < 1.0 if size_ratio is not None else cand.precision != "fp32"
    if smaller:
        if cand.recall is not None and base.recall is not None:
            recall_metric, recall_points = "recall", 100.0 * (base.recall - cand.recall)
        else:
            recall_metric, recall_points = f"{metric} (no recall measured)", points
        if recall_points > SIZE_RECALL_POINTS + 1e-9:
            return reject(RULE_SIZE, f"its size reduction costs {recall_points:.2f} points of {recall_metric}; "
                                     f"at most {SIZE_RECALL_POINTS:g} allowed")
    if max_drop is not None and points > max_drop + 1e-9:
        return reject(RULE_BUDGET, f"loses {points:.2f} points ({metric}); the budget (max_accuracy_drop) is "
                                   f"{max_drop:g}")
    return v


def _check_drop(max_accuracy_drop: float | None) -> None:
    if max_accuracy_drop is not None and not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
        raise EdgekitError(f"max_accuracy_drop (--max-accuracy-drop) must be a non-negative number of points "
                           f"(got {max_accuracy_drop:g})")


def _proxy_reason(rec: Mapping[str, Any], target: Target) -> str | None:
    """Why a record's numbers are not from a device of the target's class, or None when they are (or the record
    does not say where it was measured: hand-written results are taken at their word)."""
    if same_class(dict(rec), target.device_class) is not False:
        return None
    where = rec.get("executed_on") or "?"
    if rec.get("stand_in_for"):
        where += f", a stand-in for {rec['stand_in_for']}"
    mo = rec.get("measured_on") or {}
    return f"measured on a {mo.get('device_class')} device ({where}), not a {target.device_class} like {target.name}"


def _check_cosine(min_cosine: float | None) -> None:
    if min_cosine is not None and not (math.isfinite(min_cosine) and -1.0 <= min_cosine <= 1.0):
        raise EdgekitError(f"--min-cosine must be within [-1, 1], e.g. 0.99 (got {min_cosine:g})")


def judge(records: Sequence[Mapping[str, Any]], target: Target, max_accuracy_drop: float | None = None,
          source: str = "results", allow_proxy: bool = False, min_cosine: float | None = None) -> Judgement:
    """Apply the accuracy budget (and, for embeddings, `min_cosine`) to the records measured on `target`; the
    fastest survivor (p50) wins.

    Only records measured on a device of the target's class count: a TensorRT artifact timed in ONNX Runtime on
    a CPU says nothing about a Jetson. Without `allow_proxy` such records are refused (EdgekitError naming
    --allow-proxy) when nothing else was measured, and ignored beside real ones; with it they are ranked under
    a loud warning in the path and in `Judgement.proxy`.
    """
    _check_drop(max_accuracy_drop)
    _check_cosine(min_cosine)
    ignored: list[tuple[str, str]] = []
    parsed = []
    proxies: list[tuple[str, str]] = []
    raw: dict[int, Mapping[str, Any]] = {}
    for i, r in enumerate(records):
        status = r.get("status", "ok")  # records without a status (hand-written results) count as measured
        if status != "ok":  # a failed or skipped measurement has no numbers to judge
            label = str(r.get("artifact") or f"record {i}")
            ignored.append((label, f"status {status}" + (f": {r['error']}" if r.get("error") else "")))
            continue
        why = _proxy_reason(r, target)
        parsed_one = parse_record(r, i, source)
        if why is not None and (r.get("target") == target.name or parsed_one.eager):
            if not allow_proxy and not parsed_one.eager:
                proxies.append((parsed_one.artifact, why))
                continue
            if not allow_proxy:  # a torch eager reference measured elsewhere: not a baseline for this device
                ignored.append((parsed_one.artifact, why))
                continue
            if not parsed_one.eager:
                proxies.append((parsed_one.artifact, why))
        raw[i] = r
        parsed.append(parsed_one)
    if proxies and not allow_proxy:
        ignored += [(a, f"{why}; --allow-proxy to rank it anyway") for a, why in proxies]
        if not any(p.target == target.name and not p.eager for p in parsed):
            raise EdgekitError(f"{source}: none of the {len(proxies)} record(s) for target '{target.name}' was "
                               f"measured on a {target.device_class} device ({proxies[0][0]}: {proxies[0][1]}); "
                               "measure on the device (edgekit bench --device ...) or pass --allow-proxy to rank "
                               "these numbers anyway")
    # a device's other backends (target.alternatives) may offer precisions its default backend lacks
    offered = {p for t in (target, *target.alternatives.values()) for p in t.precisions}
    mine: list[Record] = []
    eager: list[Record] = []
    for r in parsed:
        if r.target != target.name:
            if r.eager:
                eager.append(r)
            else:
                ignored.append((r.artifact, f"measured for target '{r.target}', not '{target.name}'"))
        elif r.precision not in PRECISIONS:
            ignored.append((r.artifact, f"unknown precision '{r.precision}'"))
        elif r.precision not in offered:
            ignored.append((r.artifact, f"precision {r.precision} is not offered by target '{target.name}' "
                                        f"(offers {', '.join(sorted(offered))})"))
        else:
            mine.append(r)
    if not mine:
        present = sorted({r.target for r in parsed if r.target and not r.eager})
        raise EdgekitError(f"{source}: no records for target '{target.name}'"
                           + (f" (targets present: {', '.join(present)})" if present else " (no records)"))
    baselines = [r for r in mine if r.precision == "fp32" and r.p50_ms is not None]
    baselines += [r for r in eager if r.precision == "fp32" and r.p50_ms is not None]
    if not baselines:
        found = ", ".join(sorted({r.precision for r in mine}))
        raise EdgekitError(f"{source}: no FP32 baseline for target '{target.name}': need an fp32 record of it with "
                           f"a latency (or a torch eager fp32 record); found precisions {found}")
    by_index = {b.index: b for b in baselines}
    usable = [raw[b.index] for b in sorted(baselines, key=lambda b: b.index)]
    verdicts = []
    for c in mine:  # the shared baseline rule, the bench table's too
        picked = pick_baseline(usable, raw[c.index])
        base = next((b for i, b in by_index.items() if picked is not None and raw[i] is picked), None)
        if base is None:
            verdicts.append(Verdict(c.artifact, c.precision, "", c.p50_ms, None, None, None, None,
                                    rule=RULE_NO_BASELINE, reason="no fp32 record of its target (or torch eager) "
                                    "at its batch size on its device to compare its speed with"))
            continue
        verdicts.append(_judge_one(c, base, max_accuracy_drop, min_cosine))
    passed = [v for v in verdicts if v.rule is None]
    chosen = min(passed, key=lambda v: (v.p50_ms, v.points_lost or 0.0, v.size_ratio or 1.0), default=None)
    main_base = min(baselines, key=lambda b: (b.eager, b.index))
    metrics = sorted({v.metric for v in verdicts if v.metric})
    path = []
    if allow_proxy and proxies:
        path.append(f"WARNING: {len(proxies)} record(s) were NOT measured on a {target.device_class} like "
                    f"{target.name} (e.g. {proxies[0][0]}: {proxies[0][1]}): ranked only because of "
                    "--allow-proxy; their speed-ups say nothing about the target, only their agreement and "
                    "accuracy carry over")
    path += [
        f"results: {len(mine)} record(s) for {target.name} from {source}"
        + (f", {len(ignored)} ignored" if ignored else "")
        + (f", {len(eager)} torch eager reference(s)" if eager else ""),
        f"FP32 baseline: {main_base.artifact}" + (" (torch eager)" if main_base.eager else "")
        + f", p50 {main_base.p50_ms:.3g} ms"
        + (f", accuracy {main_base.accuracy:.4f}" if main_base.accuracy is not None else ""),
        f"accuracy loss measured by {' and '.join(metrics) if metrics else 'nothing'}"
        + (" (agreement with FP32 is the proxy where no labelled accuracy exists)" if "agreement" in metrics else ""),
        f"rules: each point lost must buy >= {SPEEDUP_PER_POINT:g}x over FP32; a size reduction may cost at most "
        f"{SIZE_RECALL_POINTS:g} points of recall"
        + (f"; at most {max_accuracy_drop:g} points lost (max_accuracy_drop)" if max_accuracy_drop is not None
           else "")
        + (f"; mean cosine to FP32 >= {min_cosine:g} (min_cosine)" if min_cosine is not None else ""),
    ]
    for v in verdicts:
        if v.rule:
            path.append(f"reject {v.artifact} ({v.precision}) by {v.rule}: {v.reason}")
        if v.flag:
            path.append(f"flag {v.artifact} ({v.precision}): {v.flag}")
    if chosen is not None:
        path.append(f"fastest passing: {chosen.artifact} ({chosen.precision}, p50 {chosen.p50_ms:.3g} ms, "
                    f"{chosen.speedup:.2f}x, {chosen.points_lost:.2f} points lost)")
    else:
        path.append("no measured candidate passed -> ship the FP32 export")
    return Judgement(source, main_base.artifact, tuple(verdicts), chosen, tuple(ignored), max_accuracy_drop,
                     tuple(path), tuple(proxies) if allow_proxy else (), min_cosine)


# --------------------------------------------------------------------------------------------------------
# both together
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    target: str
    priority: str
    tree: TreeDecision
    precision: str
    techniques: tuple[str, ...]
    path: tuple[str, ...]
    judgement: Judgement | None = None

    @property
    def chosen_artifact(self) -> str | None:
        return self.judgement.chosen.artifact if self.judgement and self.judgement.chosen else None

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form; `rejected` and `chosen_artifact` only when results were given."""
        out: dict[str, Any] = {
            "target": self.target, "priority": self.priority, "workload": self.tree.workload,
            "precision": self.precision, "techniques": list(self.techniques), "path": list(self.path),
            "leaf": self.tree.leaf, "tree_precision": self.tree.precision,
        }
        j = self.judgement
        if j is not None:
            out["chosen_artifact"] = self.chosen_artifact
            out["rejected"] = [{"artifact": v.artifact, "precision": v.precision, "rule": v.rule, "reason": v.reason}
                               for v in j.rejected]
            out["flagged"] = [{"artifact": v.artifact, "precision": v.precision, "note": v.flag} for v in j.flagged]
            out["baseline"] = j.baseline
            out["candidates"] = [
                {"artifact": v.artifact, "precision": v.precision, "baseline": v.baseline, "p50_ms": v.p50_ms,
                 "speedup": v.speedup, "points_lost": v.points_lost, "metric": v.metric,
                 "size_ratio": v.size_ratio, "passed": v.rule is None}
                for v in j.verdicts
            ]
            out["ignored"] = [{"artifact": a, "reason": why} for a, why in j.ignored]
            out["max_accuracy_drop"] = j.max_accuracy_drop
            out["proxy"] = [{"artifact": a, "reason": why} for a, why in j.proxy]
            out["min_cosine"] = j.min_cosine
        return out


def recommend(target: str | Path | Target, results: Any = None, priority: str = "latency",
              max_accuracy_drop: float | None = None, workload: str | None = None,
              source: str | None = None, allow_proxy: bool = False, min_cosine: float | None = None
              ) -> Recommendation:
    """The tree's answer, overridden by measurements when `results` (bench records) are given: a measured
    accuracy loss outranks the tree's general expectation for a device class.

    `target`: a name, a .toml path or a Target. `results`: bench records (what `edgekit.bench` returns), a
    BenchResult, or the path of a bench JSON file. `max_accuracy_drop`: percentage points of accuracy.
    """
    if not isinstance(target, Target):
        target = load_target(str(target))
    if isinstance(results, str | Path):
        source = source or str(results)
        results = load_results(results)
    elif results is not None and hasattr(results, "records"):
        results = results.records
    source = source or "results"
    tree = decide(target, priority, workload)
    _check_drop(max_accuracy_drop)
    _check_cosine(min_cosine)
    if min_cosine is not None and results is None:
        raise EdgekitError("--min-cosine judges measured artifacts: pass --results bench.json too")
    if results is None:
        return Recommendation(target.name, priority, tree, tree.precision, tree.techniques, tree.path)
    j = judge(results, target, max_accuracy_drop, source, allow_proxy=allow_proxy, min_cosine=min_cosine)
    precision = j.chosen.precision if j.chosen is not None else "fp32"
    path = [*tree.path, *j.path]
    techniques = tree.techniques
    if precision != tree.precision:
        path.append(f"measurements override the tree: {precision} instead of {tree.precision}")
        techniques = _techniques([t for t in tree.techniques if t in ("distill", "prune")], precision)
    return Recommendation(target.name, priority, tree, precision, techniques, tuple(path), j)


def format_text(rec: Recommendation) -> list[str]:
    """The human form: the path node by node, the answer, and the measured table when there is one."""
    lines = [f"recommendation for {rec.target} (priority {rec.priority}, workload {rec.tree.workload})"]
    if rec.judgement is not None and rec.judgement.proxy:
        lines.append(f"WARNING: ranked {len(rec.judgement.proxy)} record(s) NOT measured on a device like "
                     f"{rec.target} (--allow-proxy): their speed says nothing about it")
    lines.append("path:")
    lines += [f"  {i}. {step}" for i, step in enumerate(rec.path, 1)]
    lines.append(f"precision   {rec.precision}")
    lines.append(f"techniques  {', '.join(rec.techniques) or '(none: export only)'}")
    j = rec.judgement
    if j is None:
        return lines
    lines.append(f"chosen      {rec.chosen_artifact or '(none)'}")
    headers = ("artifact", "precision", "p50 ms", "speed-up", "points lost", "metric", "size", "verdict")
    rows = []
    for v in j.verdicts:
        verdict = "chosen" if v is j.chosen else ("pass" if v.rule is None else f"rejected: {v.rule}")
        if v.flag:
            verdict += " (slower than FP32)"
        rows.append((
            v.artifact, v.precision, "-" if v.p50_ms is None else f"{v.p50_ms:.3f}",
            "-" if v.speedup is None else f"{v.speedup:.2f}x",
            "-" if v.points_lost is None else f"{v.points_lost:.2f}", v.metric or "-",
            "-" if v.size_ratio is None else f"{v.size_ratio:.2f}x", verdict,
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for v in j.rejected:
        lines.append(f"rejected    {v.artifact}: {v.rule}: {v.reason}")
    for v in j.flagged:
        lines.append(f"flagged     {v.artifact}: {v.flag}")
    for artifact, why in j.ignored:
        lines.append(f"ignored     {artifact}: {why}")
    return lines


make_callable(__name__, "recommend")
