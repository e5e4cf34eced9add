"""The benchmark plot: one panel per target, every point labelled by its artifact, no two labels overlapping
(measured with matplotlib's own renderer), stand-in measurements drawn hollow."""

from __future__ import annotations

import itertools

import pytest

from edgekit.bench import plot

# 13 artifacts across 5 targets, with crowded points (near-equal latency and agreement) on purpose
_ARTIFACTS = [
    ("x86-server-cpu", "x86-fp32", "fp32", 5.1, 1.0, None), ("x86-server-cpu", "x86-int8", "int8", 2.3, 0.985, None),
    ("x86-server-cpu", "x86-dyn-int8", "dynamic-int8", 2.4, 0.984, None),
    ("pixel-8", "pixel8-fp32", "fp32", 9.0, 1.0, None), ("pixel-8", "pixel8-fp16", "fp16", 8.8, 0.999, None),
    ("pixel-8", "pixel8-int8", "int8", 3.1, 0.97, None),
    ("jetson-orin-nano", "jetson-fp32", "fp32", 5.3, 1.0, "TensorRT"),
    ("jetson-orin-nano", "jetson-fp16", "fp16", 5.2, 0.9995, "TensorRT"),
    ("jetson-orin-nano", "jetson-int8", "int8", 5.25, 0.99, "TensorRT"),
    ("ascend-310p", "ascend-fp32", "fp32", 5.0, 1.0, "Ascend (CANN .om)"),
    ("ascend-310p", "ascend-fp16", "fp16", 5.05, 1.0, "Ascend (CANN .om)"),
    ("host-torch-cpu", "torch-eager", "fp32", 16.6, 1.0, None),
    ("host-torch-cpu", "torch-eager-b", "fp32", 16.0, 1.0, None),
]


def _records() -> list[dict]:
    return [{"status": "ok", "artifact": f"/tmp/{name}", "name": name, "target": target, "precision": precision,
             "batch": 1, "latency_ms": {"p50": p50}, "agreement": agreement, "accuracy": None,
             "stand_in_for": stand_in} for target, name, precision, p50, agreement, stand_in in _ARTIFACTS]


def test_13_labels_over_5_target_panels_do_not_overlap():
    import matplotlib.pyplot as plt

    fig, annotations = plot.figure(_records())
    try:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 5
        assert sorted(ax.get_title().splitlines()[0] for ax in visible) == sorted({a[0] for a in _ARTIFACTS})
        assert sorted(a.get_text() for a in annotations) == sorted(a[1] for a in _ARTIFACTS)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = {a.get_text(): a.get_window_extent(renderer) for a in annotations}
        for (na, a), (nb, b) in itertools.combinations(boxes.items(), 2):
            assert not a.overlaps(b), f"labels '{na}' and '{nb}' overlap: {a} / {b}"
        # each label stays inside the figure
        page = fig.bbox
        for name, box in boxes.items():
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, name
        # stand-in points are hollow squares, the others filled circles
        jetson = next(ax for ax in visible if ax.get_title().startswith("jetson-orin-nano"))
        assert "stand-in for TensorRT" in jetson.get_title()
        faces = [c.get_facecolors() for c in jetson.collections if len(c.get_offsets())]
        assert faces and all(len(f) == 0 or f[0][3] == 0 for f in faces)
        x86 = next(ax for ax in visible if ax.get_title().startswith("x86-server-cpu"))
        assert all(c.get_facecolors()[0][3] > 0 for c in x86.collections if len(c.get_offsets()))
    finally:
        plt.close(fig)


def test_write_plot_writes_a_png(tmp_path):
    path = plot.write_plot(_records(), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("points, front", [([(1, 0.9), (2, 0.95), (3, 0.94), (0.5, 0.5)], [3, 0, 1])])
def test_pareto_front(points, front):
    assert plot.pareto_front(points) == front
