"""Ways to show benchmark records: a terminal table, JSON (the records as they are), CSV (flattened), a
Markdown table with speed-ups, and a PNG of latency vs accuracy with the Pareto front marked.

Speed-ups are relative to a baseline record of the same batch size and device: the artifact given as the
baseline, else the rule `recommend` uses too (edgekit.bench.baseline): the same target's fp32 artifact, else
torch eager fp32. Rows that ran as a stand-in for a device runtime are marked `*` with a footnote.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.bench.baseline import pick as pick_baseline
from edgekit.bench.provenance import ran_on
from edgekit.bench.records import columns, flatten
from edgekit.errors import EdgekitError

STAND_IN_NOTE = ("* ran in ONNX Runtime on this CPU as a stand-in for the device runtime named in 'ran on': its "
                 "latency and memory say nothing about that device; its agreement checks the artifact's numerics")


def ok_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _frac(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _sqnr(r: dict[str, Any]) -> str:
    if r.get("sqnr_db") is not None:
        return f"{r['sqnr_db']:.1f}"
    return "exact" if r.get("agreement") is not None else "-"


def baseline_for(records: Sequence[dict[str, Any]], rec: dict[str, Any], baseline: str | None = None):
    """The record `rec` is compared with: the artifact given as `baseline` (same batch and device), else the
    shared rule of edgekit.bench.baseline (the same target's fp32 artifact, else torch eager fp32)."""
    if baseline is None:
        return pick_baseline(ok_records(records), rec)
    for r in ok_records(records):
        if r["batch"] == rec["batch"] and _device(r) == _device(rec) \
                and Path(r["artifact"]).resolve() == Path(baseline).resolve():
            return r
    return None


def speedup(records: Sequence[dict[str, Any]], rec: dict[str, Any], baseline: str | None = None) -> float | None:
    """Baseline p50 latency / this record's p50 latency (> 1: faster than the baseline)."""
    base = baseline_for(records, rec, baseline)
    if base is None or rec.get("status") != "ok":
        return None
    return base["latency_ms"]["p50"] / rec["latency_ms"]["p50"]


def _device(r: dict[str, Any]) -> str | None:
    d = r.get("device")
    return d.get("name") if isinstance(d, dict) else None


def device_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct device names in first-seen order (a device column appears when there are several)."""
    return list(dict.fromkeys(n for n in (_device(r) for r in records) if n))


def _agreement_or_cosine(r: dict[str, Any]) -> str:
    """Top-1 agreement for logits; for an embedding or hidden state its cosine to FP32, mean (worst)."""
    cos = r.get("cosine")
    if r.get("agreement") is None and isinstance(cos, dict):
        return f"cos {cos['mean']:.4f} ({cos['worst']:.3f})"
    return _frac(r.get("agreement"))


def speedup_header(baseline: str | None) -> str:
    return f"speed-up vs {Path(baseline).name}" if baseline else "speed-up vs fp32"


def _name(r: dict[str, Any]) -> str:
    name = r.get("name") or Path(r["artifact"]).name
    return f"{name}*" if r.get("stand_in_for") else name


def _rows(records: Sequence[dict[str, Any]], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    several = len(device_names(records)) > 1
    headers = ["artifact", *(["device"] if several else []), "ran on", "backend", "precision", "batch", "thr",
               "p50 ms", "p95 ms", "p99 ms", "runs", "mean±std ms", "items/s", "cold ms", "peak MB", "size KiB",
               "accuracy", "agreement", "SQNR dB", speedup_header(baseline)]
    rows = []
    for r in records:
        head = [_name(r), *([_device(r) or "?"] if several else []), ran_on(r) if r.get("status") == "ok" else "-",
                r.get("backend") or "?", r.get("precision") or "?",
                "-" if r.get("batch") is None else str(r["batch"]),
                "-" if r.get("threads") is None else str(r["threads"])]
        if r.get("status") != "ok":
            rows.append([*head, f"{(r.get('status') or 'error').upper()}: {r.get('error')}"])
            continue
        lat = r["latency_ms"]
        sp = speedup(records, r, baseline)
        rows.append([
            *head, _ms(lat["p50"]), _ms(lat.get("p95")), _ms(lat.get("p99")), str(r.get("iters") or "-"),
            f"{_ms(lat['mean'])}±{_ms(lat.get('std'))}", f"{r['throughput_per_s']:.0f}", _ms(r["cold_start_ms"]),
            "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.1f}", f"{r['model_bytes'] / 1024:.1f}",
            _frac(r["accuracy"]), _agreement_or_cosine(r), _sqnr(r), "-" if sp is None else f"{sp:.2f}x",
        ])
    return headers, rows


def _eval_lines(measured: Sequence[dict[str, Any]]) -> list[str]:
    """One line per distinct evaluation set: its source, size, and a warning when it is the calibration data."""
    seen: dict[tuple, list[str]] = {}
    for r in measured:
        ev = r.get("eval_data")
        if isinstance(ev, dict):
            key = (ev.get("source"), ev.get("samples"), ev.get("calibration_data"))
            seen.setdefault(key, []).append(_name(r))
    lines = []
    for (source, samples, calib), names in seen.items():
        what = (" - the artifact's own calibration data, a weak check: pass --eval DATA with held-out data"
                if calib else "")
        who = "" if len(seen) == 1 else f" ({', '.join(names)})"
        lines.append(f"quality measured on {samples} samples of {source}{who}{what}")
    return lines


def notes(records: Sequence[dict[str, Any]], baseline: str | None = None) -> list[str]:
    """The lines under a table: the baseline rule, the stand-in footnote, the evaluation data."""
    measured = ok_records(records)
    out = [f"{speedup_header(baseline)}: p50 of " + (f"artifact {baseline}" if baseline else
           "the same target's fp32 artifact (same batch and device), else torch eager fp32; '-' when neither "
           "was measured")]
    if any(r.get("stand_in_for") for r in measured):
        out.append(STAND_IN_NOTE)
    return out + _eval_lines(measured)


def table(records: Sequence[dict[str, Any]], baseline: str | None = None) -> str:
    """The terminal table, preceded by the device and settings once (they are the same for all rows)."""
    headers, rows = _rows(records, baseline)
    full = [r for r in rows if len(r) == len(headers)]
    widths = [max([len(h)] + [len(r[i]) for r in full]) for i, h in enumerate(headers)]
    lines = []
    measured = ok_records(records)
    if measured:
        seen: set[str | None] = set()
        for r in measured:  # one line per device, in the order the devices were given
            if _device(r) not in seen:
                seen.add(_device(r))
                d = r["device"]
                lines.append(f"device {d.get('name')}: {d.get('cpu_model')}, {d.get('cores')} cores, {d.get('os')}")
        s = measured[0].get("settings", {})
        how = "interleaved rounds" if s.get("interleaved") else "rounds, one artifact at a time"
        lines.append(f"warm-up >= {s.get('warmup_min_iters')} runs and >= {s.get('warmup_min_seconds')} s; "
                     f">= {s.get('min_iters')} runs and >= {s.get('min_seconds')} s per artifact and batch, in "
                     f"{s.get('rounds')} {how}; accuracy/agreement are fractions, agreement and "
                     f"SQNR vs FP32 ({measured[0].get('eval', {}).get('reference', '?')})")
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        if len(row) == len(headers):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1])
    if measured:
        lines += notes(records, baseline)
    return "\n".join(lines)


def profile_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """`--profile`: per artifact, the time shares and the top ops, or why there is no profile."""
    lines = []
    for r in ok_records(records):
        prof = r.get("profile")
        if not isinstance(prof, dict):
            continue
        name = _name(r)
        if not prof.get("available"):
            lines.append(f"profile {name}: {prof.get('reason')}")
            continue
        share = prof["time_share"]
        top = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in prof["top_ops"][:5])
        convs = prof.get("conv_share") or {}
        split = (f"; convs: depthwise {100 * convs['depthwise']:.0f}%, other {100 * convs['other']:.0f}%"
                 if convs.get("depthwise") else "")
        lines.append(f"profile {name}: {prof['total_ms_per_run']:.3f} ms/run in kernels; int8 "
                     f"{100 * share['int8']:.0f}%, float {100 * share['float']:.0f}%, Q/DQ "
                     f"{100 * share['quantize_dequantize']:.0f}%, layout {100 * prof.get('layout_share', 0):.0f}%"
                     f"{split}; top: {top}")
    return lines


def markdown(records: Sequence[dict[str, Any]], baseline: str | None = None) -> str:
    headers, rows = _rows(records, baseline)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i < 4 else "---:" for i in
                                                              range(len(headers))) + "|"]
    for row in rows:
        cells = row if len(row) == len(headers) else [*row[:-1], row[-1], *[""] * (len(headers) - len(row))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if ok_records(records):
        lines += ["", *(f"{n.replace('*', chr(92) + '*', 1) if n.startswith('*') else n}  " for n in
                        notes(records, baseline))]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(list(records)), indent=2) + "\n")
    return path


def write_csv(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [flatten(_json_safe(r)) for r in records]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (see edgekit.bench.plot)."""
    from edgekit.bench.plot import pareto_front as front

    return front(points)


def check_plot_support() -> None:
    """Fail before measuring when --plot cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise EdgekitError("--plot needs matplotlib, which is not installed; install it with: "
                           "pip install 'edgekit[plot]'")


def write_plot(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Latency vs accuracy, one panel per target, points labelled by artifact (edgekit.bench.plot)."""
    check_plot_support()
    from edgekit.bench.plot import write_plot as plot

    return plot(records, path)
