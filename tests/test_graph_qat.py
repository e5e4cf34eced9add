"""Label-free QAT of the quantized graph's weights (the `qat` int8 technique, edgekit.quant.graph_qat) on the
test-built depthwise-separable model where plain min-max int8 agrees with FP32 on < 95% of its eval set."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

X86 = {"activation_type": "uint8", "activation_symmetric": False, "weight_type": "int8", "per_channel": True}


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    import torch

    from edgekit.data import testmodels

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("graph-qat")
    model = testmodels.sensitive_dwsep()
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(root / "m.onnx"), dynamo=True,
                          external_data=False)
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    np.save(root / "calib.npy", train.x[:96])
    np.savez(root / "eval.npz", x=test.x[:300], y=test.y[:300])
    return root


def test_torch_run_of_the_qdq_graph_matches_onnx_runtime(sensitive, tmp_path):
    """The graph trained is the graph deployed: the torch interpretation of the exporter's Q/DQ graph gives
    ONNX Runtime's int8 outputs (up to its integer requantization), far closer than int8 is to FP32."""
    import onnx
    import torch

    from edgekit.common.metrics import sqnr_db
    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.graph_qat import GraphModule
    from edgekit.quant.qgraph import QuantSetup, build, run_session, session

    x = np.load(sensitive / "calib.npy")
    prepared = prepare_for_quantization(sensitive / "m.onnx", tmp_path / "prepared.onnx")
    ranges = compute_ranges(prepared, CalibrationSet(x, None, "t", {}, len(x), "all"), "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, x[:64], np.zeros(1), None, tmp_path)
    build(setup, [], tmp_path / "q.onnx")
    net = GraphModule(onnx.load(str(tmp_path / "q.onnx")), onnx.load(str(prepared)))
    with torch.no_grad():
        got = net(torch.from_numpy(x[:64])).numpy()
    ort_int8 = run_session(session(tmp_path / "q.onnx", X86), x[:64])[0]
    fp32 = run_session(session(prepared, X86), x[:64])[0]
    assert sqnr_db(ort_int8, got) > 30.0 > sqnr_db(fp32, ort_int8) + 10, (sqnr_db(ort_int8, got),
                                                                          sqnr_db(fp32, ort_int8))
    assert len(net.layers) == sum(n.op_type in ("Conv", "Gemm") for n in onnx.load(str(prepared)).graph.node)


def test_export_qat_beats_plain_int8_and_is_in_the_manifest(cli, sensitive, tmp_path):
    out = tmp_path / "qat"
    r = cli("export", sensitive / "m.onnx", "-t", "x86-server-cpu", "-p", "int8", "--calib",
            sensitive / "calib.npy", "--eval", sensitive / "eval.npz", "--out", out, "--qat")
    assert r.rc == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    steps = manifest["ptq_techniques"]
    assert [s["technique"] for s in steps] == ["none (plain PTQ)", "qat"]
    assert steps[0]["agreement"] < 0.95
    assert steps[1]["agreement"] >= steps[0]["agreement"] + 0.1, steps
    assert steps[1]["labels"] == "none" and steps[1]["final_loss"] < steps[1]["first_epoch_loss"]
    assert manifest["verification"]["agreement"] >= 0.9


def test_bad_qat_options_and_graphs_are_one_line_errors(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgekit.errors import EdgekitError
    from edgekit.quant.graph_qat import GraphModule, train

    with pytest.raises(EdgekitError, match="unknown qat option"):
        train(None, None, tmp_path / "x.onnx", {"learning_rate": 1.0})
    with pytest.raises(EdgekitError, match="lr > 0"):
        train(None, None, tmp_path / "x.onnx", {"lr": 0.0})
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], name="sm")], "g", [x], [y])
    model = helper.make_model(g)
    with pytest.raises(EdgekitError, match="has Softmax"):
        GraphModule(model, onnx.ModelProto())


def test_learned_activation_ranges_reach_the_rebuilt_graph(sensitive, tmp_path):
    """The activation scales QAT learns are the scales of the graph the exporter then builds (every learned
    quantizer, to float precision), they only ever narrow, and range_lr 0 leaves the ranges as calibrated."""
    import onnx

    from edgekit.data.calibration import CalibrationSet
    from edgekit.graph.qdq import constants
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.graph_qat import train
    from edgekit.quant.qgraph import QuantSetup, build

    x = np.load(sensitive / "calib.npy")[:32]
    prepared = prepare_for_quantization(sensitive / "m.onnx", tmp_path / "prepared.onnx")
    cset = CalibrationSet(x, None, "t", {}, len(x), "all")
    ranges = compute_ranges(prepared, cset, "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, x[:8], np.zeros(1), None, tmp_path)
    _, details, learned = train(setup, cset, tmp_path / "qat.onnx", {"epochs": 2, "range_lr": 0.05})
    assert learned is not None and learned.method == "qat-learned"
    info = details["activation_ranges"]
    assert info["learned"] >= 5 and info["narrowed_over_5_percent"] >= 1 and info["smallest_factor"] < 0.95
    for name, (lo, hi) in learned.tensors.items():
        lo0, hi0 = ranges.tensors[name]
        assert abs(lo) <= abs(lo0) + 1e-9 and abs(hi) <= abs(hi0) + 1e-9
    # scale of each learned quantizer in the rebuilt graph = calibrated scale x learned factor
    from dataclasses import replace

    build(setup, [], tmp_path / "before.onnx")
    build(replace(setup, prepared=tmp_path / "qat.onnx", ranges=learned), [], tmp_path / "after.onnx")
    before, after = (onnx.load(str(tmp_path / f)) for f in ("before.onnx", "after.onnx"))
    cb, ca = constants(before), constants(after)
    changed = 0
    for qb, qa in zip((n for n in before.graph.node if n.op_type == "QuantizeLinear"),
                      (n for n in after.graph.node if n.op_type == "QuantizeLinear"), strict=True):
        name = qb.input[0]
        if name not in ranges.tensors:  # a quantizer the exporter adds of its own (not calibrated, not learned)
            continue
        lo0, hi0 = ranges.tensors[name]
        lo, hi = learned.tensors[name]
        factor = (hi - lo) / (hi0 - lo0)
        assert np.allclose(np.asarray(ca[qa.input[1]]), np.asarray(cb[qb.input[1]]) * factor, rtol=1e-5)
        assert np.array_equal(np.asarray(ca[qa.input[2]]), np.asarray(cb[qb.input[2]]))
        changed += factor < 0.999
    assert changed >= 1
    _, details, kept = train(setup, cset, tmp_path / "qat0.onnx", {"epochs": 1, "range_lr": 0.0})
    assert kept is None and details["activation_ranges"] == "kept as calibrated"


def test_rgb_stem_is_padded_to_four_channels_with_identical_outputs(sensitive, tmp_path):
    """The x86 finish pads the 3-channel stem conv (input and int8 weight) to 4 channels: the graph holds the Pad
    and 4-channel weights, the record says so, and ONNX Runtime's outputs do not change by a single bit."""
    import shutil

    import onnx

    from edgekit.backends.onnxruntime import finish_int8
    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.qgraph import QuantSetup, build, run_session, session

    x = np.load(sensitive / "calib.npy")[:32]
    prepared = prepare_for_quantization(sensitive / "m.onnx", tmp_path / "prepared.onnx")
    ranges = compute_ranges(prepared, CalibrationSet(x, None, "t", {}, len(x), "all"), "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, x[:8], np.zeros(1), None, tmp_path)
    build(setup, [], tmp_path / "q.onnx")
    shutil.copyfile(tmp_path / "q.onnx", tmp_path / "padded.onnx")
    assert finish_int8(tmp_path / "padded.onnx", X86) == {}  # off unless the target asks
    record = finish_int8(tmp_path / "padded.onnx", {**X86, "pad_input_channels": 4})
    [pad] = record["padded_input_channels"]
    assert (pad["channels"], pad["padded_to"]) == (3, 4)
    model = onnx.load(str(tmp_path / "padded.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    stem = next(n for n in model.graph.node if n.name == pad["node"])
    assert list(inits[producers[stem.input[1]].input[0]].dims)[1] == 4
    pad_node = producers[producers[stem.input[0]].input[0]]  # input -> Q -> Pad (8-bit) -> DQ -> stem
    assert pad_node.op_type == "Pad" and producers[pad_node.input[0]].op_type == "QuantizeLinear"
    plain = run_session(session(tmp_path / "q.onnx", X86), x)[0]
    padded = run_session(session(tmp_path / "padded.onnx", X86), x)[0]
    assert np.array_equal(plain, padded)


def test_int8_logits_stay_float(sensitive, tmp_path):
    """The x86 int8 graph ends in the Gemm itself, not in an 8-bit rounding of the logits, says so in its
    record, and its logits are not on any 8-bit grid."""
    import onnx

    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.qgraph import QuantSetup, build, run_session, session

    x = np.load(sensitive / "calib.npy")[:32]
    prepared = prepare_for_quantization(sensitive / "m.onnx", tmp_path / "prepared.onnx")
    ranges = compute_ranges(prepared, CalibrationSet(x, None, "t", {}, len(x), "all"), "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, x[:8], np.zeros(1), None, tmp_path)
    record = build(setup, [], tmp_path / "q.onnx")
    model = onnx.load(str(tmp_path / "q.onnx"))
    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    assert producer.op_type == "Gemm" and record["float_outputs"] == [out]
    read = {name for n in model.graph.node for name in n.input}
    assert all(t.name in read for t in model.graph.initializer)  # the removed quantizer left no scale behind
    got = run_session(session(tmp_path / "q.onnx", X86), x)[0]
    assert len(np.unique(got)) > 255, len(np.unique(got))
    # with a layer kept in float, the Gemm still reads int8 weights (ONNX Runtime fuses DQ -> Gemm -> float
    # output into QGemm): its weights are not folded to float like those of layers that feed the kept one
    kept = next(n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv")
    record = build(setup, [kept], tmp_path / "kept.onnx")
    model = onnx.load(str(tmp_path / "kept.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert producers[gemm.input[1]].op_type == "DequantizeLinear"
    assert gemm.name not in record["kept_layers"].get("float_output_layers", {}).get("nodes", [])
