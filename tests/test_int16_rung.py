"""The int16 rung (int16 weights on chosen layers, run by ONNX Runtime) on a small model, and the real
EfficientNet-Lite1 on real photo crops (slow)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

X86 = {"activation_type": "uint8", "activation_symmetric": False, "weight_type": "int8", "per_channel": True}


def _setup(root, onnx_path, cal_x, held_x, workdir):
    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.qgraph import QuantSetup, run_session, session

    prepared = prepare_for_quantization(onnx_path, root / "prepared.onnx")
    ranges = compute_ranges(prepared, CalibrationSet(cal_x, None, "test", {}, len(cal_x), "all"), "minmax")
    ref = run_session(session(prepared, {}), held_x)[0]
    workdir.mkdir(exist_ok=True)
    return QuantSetup("onnxruntime", prepared, ranges, X86, held_x, ref, None, workdir)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import torch

    from edgekit.data import testmodels

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("int16")
    # heavy-tailed weights (Student t, as trained layers often have): per-channel int8 loses the small ones
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10)).eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for lin in (model[1], model[3]):
            lin.weight.copy_(torch.from_numpy(rng.standard_t(1.5, size=tuple(lin.weight.shape)).astype(np.float32)
                                              * 0.02))
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(root / "m.onnx"), dynamo=True,
                          external_data=False)
    x = testmodels.digits_rgb("train").x
    return _setup(root, root / "m.onnx", x[:64], x[64:160], root / "work")


def test_int16_weights_raise_sqnr_and_are_stored_as_their_grid_values(small):
    import onnx
    from onnx import numpy_helper

    from edgekit.backends.onnxruntime import float_weights
    from edgekit.quant.qgraph import build, build_and_evaluate, layer_names

    layers = layer_names(small.prepared)
    plain = build_and_evaluate(small, [], "plain")
    wide = build_and_evaluate(small, [], "wide", int16=layers)
    # measured 23.6 -> 37.5 dB; before the ReLU was restored and ONNX Runtime kept from re-quantizing the
    # float weights to per-tensor int8 at load, the same graph gave 15.1 dB
    assert wide["sqnr_db"] > plain["sqnr_db"] + 8, (plain, wide)
    record = build(small, [], small.workdir / "w.onnx", int16=layers[:1])
    assert record["int16_layers"]["nodes"] == layers[:1]
    model = onnx.load(str(small.workdir / "w.onnx"))
    assert float_weights(model) == layers[:1]  # folded: the layer runs ORT's float kernel
    # the folded weight is the int16 rounding of the FP32 one: within an int16 step per channel, far inside int8's
    node = next(n for n in model.graph.node if n.name == layers[0])
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[1]))
    prep = onnx.load(str(small.prepared))
    pnode = next(n for n in prep.graph.node if n.name == layers[0])
    w0 = numpy_helper.to_array(next(t for t in prep.graph.initializer if t.name == pnode.input[1]))
    err = np.abs(w - w0).reshape(len(w), -1).max(1)
    amax = np.abs(w0).reshape(len(w0), -1).max(1)
    assert err.max() > 0 and np.all(err <= amax / 32767 * 1.01)


def test_int16_search_climbs_only_while_it_helps(small):
    from edgekit.quant import int16_search as rung
    from edgekit.quant.qgraph import build_and_evaluate

    start = build_and_evaluate(small, [], "start")
    ranking = rung.rank(small, samples=48)
    assert {r["layer"] for r in ranking} and all("gain_per_mmac" in r for r in ranking)
    goal_db = start["sqnr_db"] + 2
    layers, final, steps = rung.search(small, lambda r: r["sqnr_db"] >= goal_db, start, ranking, max_layers=8)
    assert layers and final["sqnr_db"] > start["sqnr_db"]
    assert [s["int16_added"] for s in steps if s["kept"]] == layers


def test_backend_capabilities_drive_the_budget():
    from edgekit.backends.registry import budget_backends, check_budget_backend, get_spec
    from edgekit.errors import EdgekitError

    assert get_spec("onnxruntime").layer_fallback == ("int16", "fp32")
    assert get_spec("tensorrt").layer_fallback == ("fp16",)
    assert budget_backends() == ["onnxruntime", "tensorrt"]
    with pytest.raises(EdgekitError, match="no per-layer float fallback"):
        check_budget_backend("tflite")


@pytest.mark.slow
def test_real_efficientnet_lite1_predicts_photos_and_int16_rung_beats_int8(tmp_path):
    import torch

    from edgekit.data import photos, realcnn
    from edgekit.quant.qgraph import build_and_evaluate

    torch.set_num_threads(1)
    model = realcnn.efficientnet_lite1()
    pics = photos.photos()
    with torch.no_grad():
        top = {k: int(model(torch.from_numpy(photos.full_view(pics[k], 240))).argmax()) for k in ("chelsea",
                                                                                               "coffee", "rocket")}
    assert 281 <= top["chelsea"] <= 285  # the ImageNet cat classes (tabby ... Egyptian cat)
    assert top["coffee"] in (504, 967, 968)  # coffee mug, espresso, cup
    assert top["rocket"] in (657, 744)  # missile, projectile
    cal, held = photos.split(16, 24, 240)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.from_numpy(cal[:1]),), str(tmp_path / "lite1.onnx"), dynamo=True,
                          external_data=False)
    setup = _setup(tmp_path, tmp_path / "lite1.onnx", cal, held, tmp_path / "work")
    from edgekit.quant.qgraph import layer_names

    plain = build_and_evaluate(setup, [], "plain")
    wide = build_and_evaluate(setup, [], "wide", int16=layer_names(setup.prepared))
    assert wide["sqnr_db"] > plain["sqnr_db"] + 3, (plain, wide)
