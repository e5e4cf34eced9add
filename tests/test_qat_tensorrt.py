"""QAT for TensorRT: `edgekit qat --quantizer tensorrt` trains with int8 symmetric activations (zero point 0)
and int8 symmetric per-channel weights, so the converted graph passes TensorRT's explicit-quantization rules
and `edgekit export --target jetson-orin-nano --precision int8` takes it as is (calibration: qat); the
default x86 quantizer's uint8 graph is refused with the way to fix it. Real torchao, real ONNX Runtime; one
QAT epoch on the zoo digits student (shipped weights) is enough for the rules, and ONNX Runtime running the
TensorRT-ready graph must still agree with the FP32 student on >= 99% of the digits test split.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from edgekit.artifact import load_artifact
from edgekit.data import zoo
from edgekit.errors import EdgekitError
from edgekit.graph.qdq import WEIGHTED_OPS, check_tensorrt_qdq, output_channel_axis
from edgekit.train import qat
from tests.conftest import no_partial_left

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`edgekit qat` (1 epoch) from the shipped FP32 student with each quantizer, and the FP32 test logits."""
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("qat-trt")
    weights = zoo.shipped_weights("student", 0)
    out = {"root": root, "test": zoo.digits_split("test")}
    with torch.no_grad():
        out["fp32_logits"] = zoo.digits_student()(torch.from_numpy(out["test"].x)).numpy()
    for name, extra in (("tensorrt", ["--quantizer", "tensorrt"]), ("x86", [])):  # x86: the default
        r = run_cli("qat", "--student-weights", weights, *extra, "--epochs", 1, "--no-progress",
                    "--out", root / name, "--report", root / f"{name}.json")
        assert r.rc == 0, r.err
        out[name] = {"onnx": root / name / "student_qat.onnx", "stdout": r.out,
                     "report": json.loads((root / f"{name}.json").read_text())}
    return out


def test_report_names_the_quantizer_and_its_format(runs):
    trt, x86 = runs["tensorrt"]["report"], runs["x86"]["report"]
    assert trt["quantizer"] == "tensorrt" and trt["activations"].startswith("int8 symmetric")
    assert x86["quantizer"] == "x86" and x86["activations"].startswith("uint8 asymmetric")
    assert trt["onnx"]["quantization"] == "qat"
    assert "--target jetson-orin-nano" in runs["tensorrt"]["stdout"]
    assert "--target x86-server-cpu" in runs["x86"]["stdout"]


def test_tensorrt_qat_graph_follows_tensorrt_rules(runs):
    """Checked on the graph itself (int8 zero points of 0, per-tensor activations, per-channel weights on
    the output-channel axis, float biases), then by edgekit's checker with no bias folding allowed."""
    model = onnx.load(str(runs["tensorrt"]["onnx"]))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    act_q = [n for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q and len(act_q) == sum(n.op_type == "QuantizeLinear" for n in qdq)  # weights are int8 already
    for node in qdq:
        zp = inits[node.input[2]]
        assert zp.data_type == TensorProto.INT8, node.name
        assert not np.any(numpy_helper.to_array(zp)), f"{node.name}: zero point must be 0"
    for node in act_q:
        assert numpy_helper.to_array(inits[node.input[1]]).size == 1, f"{node.name}: per-tensor activations"
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    assert len(weighted) == 4  # three convolutions and the classifier
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == TensorProto.INT8
        w = numpy_helper.to_array(inits[dq.input[0]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert numpy_helper.to_array(inits[dq.input[1]]).size == w.shape[axis] > 1, node.name
        assert axis == output_channel_axis(node, w.ndim), node.name
        if len(node.input) > 2 and node.input[2]:
            assert node.input[2] in inits and inits[node.input[2]].data_type == TensorProto.FLOAT, node.name
    summary = check_tensorrt_qdq(model)
    assert summary["activation_quantizers"] == len(act_q)
    assert all(w["per_channel"] and w["axis"] == 0 for w in summary["weights"].values())


def _agreement_with_fp32(art, runs) -> tuple[float, float]:
    with art.runner() as runner:
        top = runner.infer(runs["test"].x)[0].argmax(1)
    return float((top == runs["fp32_logits"].argmax(1)).mean()), float((top == runs["test"].y).mean())


def test_cli_exports_tensorrt_qat_to_jetson(runs, cli):
    out = runs["root"] / "jetson"
    r = cli("export", runs["tensorrt"]["onnx"], "--target", "jetson-orin-nano", "--precision", "int8",
            "--eval", "zoo:digits:test", "--out", out)
    assert r.rc == 0, r.err
    art = load_artifact(out)
    m = art.manifest
    assert m["calibration"]["method"] == "qat"
    d = m["backend_details"]
    assert d["quantization"]["folded_bias_dequantize"] == []  # no bias was quantized in the first place
    assert d["qdq_check"]["zero_points"] == "all 0 (int8)" and len(d["qdq_check"]["weights"]) == 4
    assert m["verification"]["agreement"] >= 0.99, m["verification"]  # vs the converted torch model
    agreement, accuracy = _agreement_with_fp32(art, runs)
    fp32_accuracy = runs["tensorrt"]["report"]["fp32_student_accuracy"]
    print(f"\nTensorRT QAT (1 epoch) through ONNX Runtime: accuracy {accuracy:.4f} (FP32 {fp32_accuracy:.4f}), "
          f"agreement with FP32 {agreement:.4f}")
    assert agreement >= 0.99
    assert fp32_accuracy - accuracy <= 0.01


def test_tensorrt_qat_also_exports_to_x86_server_cpu(runs, cli):
    out = runs["root"] / "x86-server"
    r = cli("export", runs["tensorrt"]["onnx"], "--target", "x86-server-cpu", "--precision", "int8",
            "--eval", "zoo:digits:test", "--out", out)
    assert r.rc == 0, r.err
    art = load_artifact(out)
    assert art.manifest["calibration"]["method"] == "qat"
    assert art.manifest["backend_details"]["quantization"]["activation_types"] == ["int8"]
    assert _agreement_with_fp32(art, runs)[0] >= 0.99


def test_x86_qat_graph_is_refused_by_tensorrt_with_the_fix(runs, cli, tmp_path):
    before = {p.name for p in tmp_path.iterdir()}
    r = cli("export", runs["x86"]["onnx"], "--target", "jetson-orin-nano", "--precision", "int8",
            "--out", tmp_path / "art")
    assert r.rc == 2, r.err
    line = r.err.strip().splitlines()[-1]
    assert line.startswith("edgekit export: error: Q/DQ node '") and "quantizes to uint8" in line, r.err
    assert "re-run edgekit qat with --quantizer tensorrt" in line
    assert {p.name for p in tmp_path.iterdir()} == before and no_partial_left(tmp_path)


def test_unknown_quantizer_is_a_one_line_user_error(cli, tmp_path):
    r = cli("qat", "--quantizer", "arm", "--epochs", 1, "--no-progress", "--out", tmp_path / "q")
    assert r.rc == 2 and r.out == ""
    assert r.err.count("\n") == 1, r.err
    assert "unknown QAT quantizer 'arm'" in r.err and "x86 (" in r.err and "tensorrt (" in r.err
    assert not (tmp_path / "q").exists()
    with pytest.raises(EdgekitError, match="available: x86"):
        qat.QATConfig(quantizer="int4")
