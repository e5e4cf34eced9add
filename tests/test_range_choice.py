"""Per-tensor range choice (edgekit.quant.ptq_improve.choose_ranges) on a small depthwise-separable model:
each activation tensor gets the candidate range with the smallest fake-quantization error over all the
calibration images, and streaming the images a few at a time (to bound memory) picks the same ranges as
holding them all at once."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import export_resdw_net


@pytest.fixture(scope="module")
def graph(tmp_path_factory):

    from edgekit.data import testmodels
    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization

    root = tmp_path_factory.mktemp("range-choice")
    export_resdw_net(root / "m.onnx", (8, 16))
    x = testmodels.digits_rgb("train").x[:40]
    prepared = prepare_for_quantization(root / "m.onnx", root / "prepared.onnx")
    cal = CalibrationSet(x, None, "test", {}, len(x), "all")
    candidates = {m: compute_ranges(prepared, cal, m) for m in ("minmax", "percentile")}
    return root, prepared, cal, candidates


def _direct_choice(prepared, cal, candidates, options) -> dict[str, str]:
    """The reference: every tensor of every image at once, error per candidate, argmin."""
    from edgekit.quant.graphs import with_outputs
    from edgekit.quant.ptq_improve import _fake_quant
    from edgekit.quant.qgraph import run_session, session

    names = sorted(candidates["minmax"].tensors)
    sess = session(with_outputs(prepared, names, prepared.parent / "direct.onnx"), {})
    values = dict(zip([o.name for o in sess.get_outputs()], run_session(sess, cal.x), strict=True))
    values.setdefault(sess.get_inputs()[0].name, cal.x)
    pick = {}
    for name in names:
        errs = {m: float(np.sum((_fake_quant(values[name], *r.tensors[name], False, "uint8") - values[name]) ** 2))
                for m, r in candidates.items()}
        pick[name] = min(errs, key=errs.get)
    return pick


def test_range_choice_streams_and_picks_the_smallest_error(graph, monkeypatch):
    from edgekit.quant import ptq_improve

    root, prepared, cal, candidates = graph
    options = {"activation_type": "uint8", "activation_symmetric": False}
    expected = _direct_choice(prepared, cal, candidates, options)
    monkeypatch.setattr(ptq_improve, "CHOICE_BATCH", 3)  # 40 images in 14 runs, the last one short
    merged, report = ptq_improve.choose_ranges(prepared, cal, candidates, options, root)
    assert {n: merged.tensors[n] for n in expected} == {n: candidates[m].tensors[n] for n, m in expected.items()}
    assert sum(report["tensors_per_method"].values()) == len(merged.tensors)
    # both candidates win somewhere on this model, so the choice is a real one
    assert report["tensors_per_method"]["minmax"] > 0 and report["tensors_per_method"]["percentile"] > 0
