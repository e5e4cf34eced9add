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
            _frac(r["accuracy"]), _frac(r["agreement"]), _sqnr(r), "-" if sp is None else f"{sp:.2f}x",
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
    """Indices of the points no other point beats on both axes (lower latency x, higher accuracy y),
    ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def check_plot_support() -> None:
    """Fail before measuring when --plot cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise EdgekitError("--plot needs matplotlib, which is not installed; install it with: "
                           "pip install 'edgekit[plot]'")


def write_plot(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Latency p50 (x, log scale) vs accuracy (agreement with FP32 when no labels): one panel per batch
    size, the Pareto front drawn as a step line through its points."""
    check_plot_support()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    measured = ok_records(records)
    batches = sorted({r["batch"] for r in measured}) or [1]
    backends = sorted({str(r.get("backend")) for r in measured})
    colour = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        recs = [r for r in measured if r["batch"] == b]
        use_acc = bool(recs) and all(r.get("accuracy") is not None for r in recs)
        metric = "accuracy" if use_acc else "agreement"
        recs = [r for r in recs if r.get(metric) is not None]
        pts = [(r["latency_ms"]["p50"], r[metric]) for r in recs]
        for backend in backends:  # one colour per backend; many points, so only the front is labelled
            mine = [p for r, p in zip(recs, pts, strict=True) if str(r.get("backend")) == backend]
            if mine:
                ax.scatter([x for x, _ in mine], [y for _, y in mine], s=28, color=colour[backend], zorder=3,
                           label=backend)
        front = pareto_front(pts)
        if front:
            fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
            ax.step(fx, fy, where="post", c="tab:red", lw=1.2, zorder=2)
            ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="tab:red", linewidths=1.6, zorder=4,
                       label="Pareto front")
            for k, i in enumerate(front):
                r = recs[i]
                ax.annotate(f"{r.get('backend')} {r.get('precision')}", pts[i], textcoords="offset points",
                            xytext=(6, 6 if k % 2 == 0 else -12), fontsize=8)
        if pts:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.margins(x=0.25, y=0.15)
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(f"latency p50 (ms), batch {b}")
        ax.set_ylabel(f"{metric} (fraction{'' if use_acc else ', top-1 vs FP32'})")
        ax.set_title(f"latency vs {metric}, batch {b}")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
