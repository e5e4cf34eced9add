"""Ways to show benchmark records: a terminal table, JSON (the records as they are), CSV (flattened), a
Markdown table with speed-ups, and a PNG of latency vs accuracy with the Pareto front marked.

Speed-ups are relative to a baseline record of the same model and batch size: the artifact given as the
baseline, else the torch eager FP32 one when it was measured (the baseline the design names).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.bench.records import columns, flatten
from edgekit.errors import EdgekitError

BASELINE_BACKEND = "torch-eager"


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
    """The record `rec` is compared with: same model and batch, from the baseline artifact or backend."""
    for r in ok_records(records):
        if r["batch"] != rec["batch"] or r.get("model") != rec.get("model") or _device(r) != _device(rec):
            continue
        if baseline is not None:
            if Path(r["artifact"]).resolve() == Path(baseline).resolve():
                return r
        elif r.get("backend") == BASELINE_BACKEND:
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


def _rows(records: Sequence[dict[str, Any]], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    several = len(device_names(records)) > 1
    headers = ["artifact", *(["device"] if several else []), "backend", "precision", "batch", "thr", "p50 ms",
               "p90 ms", "p99 ms", "mean±std ms", "items/s", "cold ms", "peak MB", "size KiB", "accuracy",
               "agreement", "SQNR dB", "speed-up"]
    rows = []
    for r in records:
        head = [r.get("name") or Path(r["artifact"]).name, *([_device(r) or "?"] if several else []),
                r.get("backend") or "?", r.get("precision") or "?",
                "-" if r.get("batch") is None else str(r["batch"]),
                "-" if r.get("threads") is None else str(r["threads"])]
        if r.get("status") != "ok":
            rows.append([*head, f"{(r.get('status') or 'error').upper()}: {r.get('error')}"])
            continue
        lat = r["latency_ms"]
        sp = speedup(records, r, baseline)
        rows.append([
            *head, _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]), f"{_ms(lat['mean'])}±{_ms(lat['std'])}",
            f"{r['throughput_per_s']:.0f}", _ms(r["cold_start_ms"]),
            "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.1f}", f"{r['model_bytes'] / 1024:.1f}",
            _frac(r["accuracy"]), _agreement_or_cosine(r), _sqnr(r), "-" if sp is None else f"{sp:.2f}x",
        ])
    return headers, rows


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
    return "\n".join(lines)


def markdown(records: Sequence[dict[str, Any]], baseline: str | None = None) -> str:
    headers, rows = _rows(records, baseline)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in
                                                              range(len(headers))) + "|"]
    for row in rows:
        cells = row if len(row) == len(headers) else [*row[:-1], row[-1], *[""] * (len(headers) - len(row))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
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
