"""The measured half of the precision helper: benchmark records judged against an accuracy budget. A static
tree cannot know that INT8 costs this particular model 3 points; the measurements can.

Each candidate is judged against its FP32 baseline by the rule the bench table uses too
(edgekit.bench.baseline: the same target's fp32 record at the same batch and device, else torch eager fp32):
every point lost must buy >= 2x speed-up, a size reduction may cost <= 5 points of recall (accuracy, or
agreement, when no recall is recorded), and the user's accuracy budget holds. The fastest survivor (p50)
wins; quantized artifacts slower than FP32 are flagged. Only records measured on a device of the target's
class count, unless `allow_proxy`.

Budgets are fractions, like every accuracy in edgekit (`max_accuracy_drop=0.01` is one percentage point);
the verdicts speak in points (percentage points, x100), which is how people compare models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.bench.baseline import EAGER_NAMES, runtime_name
from edgekit.bench.baseline import pick as pick_baseline
from edgekit.bench.provenance import same_class
from edgekit.errors import EdgekitError
from edgekit.targets import PRECISIONS, Target

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
    eager = any(n in EAGER_NAMES for n in (runtime, backend, (target or "").lower()))
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
    if max_drop is not None and points > 100.0 * max_drop + 1e-9:
        return reject(RULE_BUDGET, f"loses {points:.2f} points ({metric}); the budget is {100.0 * max_drop:g} "
                                   "points (max_accuracy_drop / --max-accuracy-drop)")
    return v


def check_drop(max_accuracy_drop: float | None) -> None:
    """`max_accuracy_drop` is a fraction of accuracy, like every accuracy in edgekit: 0.01 is one point."""
    if max_accuracy_drop is not None and not (math.isfinite(max_accuracy_drop) and 0.0 <= max_accuracy_drop <= 1.0):
        raise EdgekitError(f"max_accuracy_drop must be a fraction in [0, 1], e.g. 0.01 for one point (got "
                           f"{max_accuracy_drop:g}; --max-accuracy-drop on the command line takes points)")


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


def check_cosine(min_cosine: float | None) -> None:
    if min_cosine is not None and not (math.isfinite(min_cosine) and -1.0 <= min_cosine <= 1.0):
        raise EdgekitError(f"min_cosine (--min-cosine) must be within [-1, 1], e.g. 0.99 (got {min_cosine:g})")


def judge(records: Sequence[Mapping[str, Any]], target: Target, max_accuracy_drop: float | None = None,
          source: str = "results", allow_proxy: bool = False, min_cosine: float | None = None) -> Judgement:
    """Apply the accuracy budget (and, for embeddings, `min_cosine`) to the records measured on `target`; the
    fastest survivor (p50) wins.

    Only records measured on a device of the target's class count: a TensorRT artifact timed in ONNX Runtime on
    a CPU says nothing about a Jetson. Without `allow_proxy` such records are refused (EdgekitError naming
    --allow-proxy) when nothing else was measured, and ignored beside real ones; with it they are ranked under
    a loud warning in the path and in `Judgement.proxy`.
    """
    check_drop(max_accuracy_drop)
    check_cosine(min_cosine)
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
        ignored += [(a, f"{why}; allow_proxy=True (--allow-proxy) to rank it anyway") for a, why in proxies]
        if not any(p.target == target.name and not p.eager for p in parsed):
            raise EdgekitError(f"{source}: none of the {len(proxies)} record(s) for target '{target.name}' was "
                               f"measured on a {target.device_class} device ({proxies[0][0]}: {proxies[0][1]}); "
                               "measure on the device (edgekit bench --device ...) or pass allow_proxy=True "
                               "(--allow-proxy) to rank these numbers anyway")
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
        + (f"; at most {100.0 * max_accuracy_drop:g} points lost (max_accuracy_drop)" if max_accuracy_drop is not None
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
