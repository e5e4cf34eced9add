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
