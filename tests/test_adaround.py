"""Learned weight rounding (edgekit.quant.adaround) on a small depthwise-separable test model: the output SQNR
rises over plain int8 and the exported Q/DQ graph carries exactly the learned integers on ONNX Runtime's grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import export_resdw_net

X86 = {"activation_type": "uint8", "activation_symmetric": False, "weight_type": "int8", "per_channel": True}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import torch

    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.qgraph import QuantSetup, run_session, session

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adaround")
    export_resdw_net(root / "m.onnx", (8, 16, 32), trained_bn=True)
    x = _digits()
    prepared = prepare_for_quantization(root / "m.onnx", root / "prepared.onnx")
    cal = CalibrationSet(x[:64], None, "test", {}, 64, "all")
    ranges = compute_ranges(prepared, cal, "minmax")
    held = x[64:192]
    (root / "work").mkdir()
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, held, run_session(session(prepared, {}), held)[0],
                       None, root / "work")
    return setup, cal


def _digits() -> np.ndarray:
    from edgekit.data import testmodels

    return testmodels.digits_rgb("train").x[:192]


def test_learned_rounding_raises_sqnr_and_stays_on_the_int8_grid(small):
    import onnx
    from onnx import numpy_helper

    from edgekit.quant import adaround
    from edgekit.quant.graphs import dequantize
    from edgekit.quant.qgraph import build, build_and_evaluate

    setup, cal = small
    plain = build_and_evaluate(setup, [], "plain")
    path, record = adaround.learn_rounding(setup, cal, setup.workdir / "ar.onnx", iterations=200)
    learned = replace(setup, prepared=path)
    after = build_and_evaluate(learned, [], "learned")
    assert record["layers_rounded"] == 10 and not record["skipped"]  # 9 Conv and the Linear
    assert after["sqnr_db"] > plain["sqnr_db"] + 1.0, (plain, after)
    assert all(v["sqnr_learned_db"] >= v["sqnr_nearest_db"] for v in record["layers"].values())
    assert any(v["flipped"] > 0.01 for v in record["layers"].values())  # it did change roundings
    # the normal exporter turns the written float weights into exactly the chosen integers, within -127..127
    build(learned, [], setup.workdir / "out.onnx")
    q = onnx.load(str(setup.workdir / "out.onnx"))
    assert adaround.check_on_grid(path, q)["weights_off_grid"] == 0
    inits = {t.name: t for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    fmodel = onnx.load(str(path))
    finits = {t.name: numpy_helper.to_array(t) for t in fmodel.graph.initializer}
    checked = 0
    for node in (n for n in q.graph.node if n.op_type == "Conv"):
        dq = producers[node.input[1]]
        ints = numpy_helper.to_array(inits[dq.input[0]])
        assert ints.dtype == np.int8 and ints.min() >= -127
        w = finits[next(n for n in fmodel.graph.node if n.name == node.name).input[1]]
        np.testing.assert_allclose(dequantize(dq, inits), w, rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked == 9


def test_export_lists_range_mse_and_adaround_in_the_manifest(cli, small, tmp_path):
    import json

    setup, _ = small
    x = _digits()
    np.save(tmp_path / "calib.npy", x[:128])
    out = tmp_path / "out"
    r = cli("export", setup.prepared.parent / "m.onnx", "-t", "x86-server-cpu", "-p", "int8", "--calib",
            tmp_path / "calib.npy", "--out", out, "--range-mse", "--adaround")
    assert r.rc == 0, r.err
    steps = json.loads((out / "manifest.json").read_text())["ptq_techniques"]
    assert [s["technique"] for s in steps] == ["none (plain PTQ)", "range-mse", "adaround"]
    assert steps[1]["tensors_clipped"] > 0 and steps[2]["layers_rounded"] == 10
    assert all("sqnr_change_db" in s and "agreement_change" in s for s in steps[1:])
    assert len(steps[2]["per_layer"]) == 10
