"""The latency-vs-accuracy picture of a benchmark: one panel per target, each point labelled by its artifact.

Artifacts built for different targets are never on one Pareto front (a TensorRT engine and a TFLite model
do not compete for the same device), so each target gets its own panel and front. Labels are placed greedily,
one at a time, at the first of several offsets around their point whose text box (measured with the figure's
renderer) overlaps no label already placed, no point and no panel edge; a label that fits nowhere near its
point goes to the nearest free spot with a leader line. Points measured as a stand-in for the device runtime
(a TensorRT or Ascend artifact run in ONNX Runtime on this CPU) are hollow, and the legend says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: label offsets from the point, in typographic points, tried in this order; then the same at larger radii
_OFFSETS = ((6, 5), (6, -11), (-6, 5), (-6, -11), (0, 10), (0, -16), (10, -3), (-10, -3))
_RADII = (1.0, 1.8, 2.8, 4.0, 5.5)
_MARKER_PX = 6.0
_DPI = 110  # half-width of a point's keep-out box, in pixels


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


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def place_labels(ax, xy: Sequence[tuple[float, float]], labels: Sequence[str], renderer, fontsize: float = 7.5,
                 avoid: Sequence[Any] = ()) -> list[Any]:
    """Annotate each point with its label where the label overlaps nothing placed so far (see module doc).

    `avoid` holds extra display-space boxes to keep clear (e.g. other panels' labels). Returns the
    annotations in the order of `labels`.
    """
    from matplotlib.transforms import Bbox

    disp = ax.transData.transform(list(xy)) if xy else []
    dpi_scale = ax.figure.dpi / 72.0
    markers = [Bbox.from_extents(x - _MARKER_PX, y - _MARKER_PX, x + _MARKER_PX, y + _MARKER_PX) for x, y in disp]
    frame = ax.get_window_extent(renderer)
    taken: list[Any] = list(avoid)
    # crowded points first (most neighbours within 60 px): they have the fewest free spots
    crowd = [sum(math.dist(p, q) < 60 for q in disp) for p in disp]
    order = sorted(range(len(labels)), key=lambda i: (-crowd[i], disp[i][0]))
    placed: dict[int, Any] = {}
    for i in order:
        ann = ax.annotate(labels[i], xy[i], xytext=(0, 0), textcoords="offset points", fontsize=fontsize,
                          zorder=6, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        best, best_cost = None, math.inf
        for radius in _RADII:
            for dx, dy in _OFFSETS:
                ox, oy = dx * radius, dy * radius
                ann.set_position((ox, oy))
                ann.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
                box = ann.get_window_extent(renderer)
                box = Bbox.from_extents(box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
                cost = sum(_overlaps(box, t) for t in taken) * 10 + sum(_overlaps(box, m) for m in markers) * 3
                if not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1):
                    cost += 5
                cost += math.hypot(ox, oy) * dpi_scale / 1000.0  # nearer is better among equals
                if cost < best_cost:
                    best, best_cost = (ox, oy, ann.get_horizontalalignment()), cost
            if best_cost < 1:
                break
        assert best is not None
        ann.set_position(best[:2])
        ann.set_horizontalalignment(best[2])
        if math.hypot(*best[:2]) > 14:
            ax.annotate("", xy[i], xytext=best[:2], textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3})
        taken.append(ann.get_window_extent(renderer))
        placed[i] = ann
    return [placed[i] for i in range(len(labels))]


def _label(r: dict[str, Any]) -> str:
    return str(r.get("name") or Path(str(r.get("artifact"))).name)


def figure(records: Sequence[dict[str, Any]]):
    """(figure, label annotations): latency p50 (x; log scale for a wide spread) vs accuracy (agreement with
    FP32 when a target's records have no labels), one panel per target at the smallest batch size measured,
    the target's Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    measured = [r for r in records if r.get("status") == "ok"]
    batch = min((r["batch"] for r in measured), default=1)
    measured = [r for r in measured if r["batch"] == batch]
    targets = list(dict.fromkeys(str(r.get("target")) for r in measured)) or ["(nothing measured)"]
    ncols = min(3, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False, dpi=_DPI)
    precisions = sorted({str(r.get("precision")) for r in measured})
    colour = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(precisions)}
    panels = []
    for ax, target in zip(axes.flat, targets, strict=False):
        recs = [r for r in measured if str(r.get("target")) == target]
        metric = "accuracy" if recs and all(r.get("accuracy") is not None for r in recs) else "agreement"
        recs = [r for r in recs if r.get(metric) is not None]
        pts = [(r["latency_ms"]["p50"], r[metric]) for r in recs]
        for r, (x, y) in zip(recs, pts, strict=True):
            c = colour[str(r.get("precision"))]
            if r.get("stand_in_for"):
                ax.scatter([x], [y], s=46, facecolors="none", edgecolors=[c], linewidths=1.6, marker="s", zorder=4)
            else:
                ax.scatter([x], [y], s=36, color=c, zorder=4)
        front = pareto_front(pts)
        if len(front) > 1:
            ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", c="tab:red", lw=1.0,
                    alpha=0.6, zorder=2)
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            lo, hi = min(xs), max(xs)
            if hi / lo > 3:  # a wide spread reads better on a log axis; a narrow one has no ticks there
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
                pad = (hi / lo) ** 0.35
                ax.set_xlim(lo / pad, hi * pad)
            else:
                xpad = max(0.35 * (hi - lo), 0.15 * hi)
                ax.set_xlim(max(lo - xpad, 0.0), hi + xpad)
            ylo, yhi = min(ys), max(ys)
            ypad = max(0.25 * (yhi - ylo), 0.01)
            ax.set_ylim(ylo - 1.4 * ypad, yhi + 1.4 * ypad)
        stand_in = next((r["stand_in_for"] for r in recs if r.get("stand_in_for")), None)
        title = f"{target}" + (f"\n(hollow: ran here as a stand-in for {stand_in})" if stand_in else "")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"latency p50 (ms), batch {batch}", fontsize=8)
        ax.set_ylabel(f"{metric} (fraction{'' if metric == 'accuracy' else ', top-1 vs FP32'})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        panels.append((ax, pts, [_label(r) for r in recs]))
    for ax in list(axes.flat)[len(targets):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colour[p], label=p) for p in precisions]
    handles.append(plt.Line2D([], [], ls="", marker="s", mfc="none", color="0.3",
                              label="stand-in (ran in ONNX Runtime on this CPU)"))
    handles.append(plt.Line2D([], [], color="tab:red", alpha=0.6, label="Pareto front (per target)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    renderer = fig.canvas.get_renderer()
    annotations = []
    for ax, pts, labels in panels:
        annotations += place_labels(ax, pts, labels, renderer)
    return fig, annotations


def write_plot(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The figure as a PNG."""
    import matplotlib.pyplot as plt

    fig, _ = figure(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path
