"""QAT through torchao PT2E with distillation from the FP32 teacher: the converted student exports to a Q/DQ
ONNX graph that `edgekit export --precision int8` takes as is (calibration: qat), and through ONNX Runtime
it is within half a point of the FP32 student and at least as accurate as post-training quantization."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.onnxruntime import float_weights
from edgekit.data import zoo
from edgekit.export import ExportPipeline
from edgekit.graph.onnx_export import QUANTIZATION_METADATA_KEY, fold_constant_quantize, quantization_of
from edgekit.train import qat
from edgekit.train.distill import DistillConfig, TrainConfig, Trainer, accuracy_on
from edgekit.train.distill.trainer import Data

DISTILL_EPOCHS = 15
QAT_EPOCHS = 3
QAT_LR = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The FP32 distilled zoo student, its PTQ int8 export, and its QAT (+ distillation) int8 export."""
    root = tmp_path_factory.mktemp("qat")
    train, test = zoo.digits_split("train"), zoo.digits_split("test")
    teacher = zoo.digits_teacher()
    torch.manual_seed(0)
    student = zoo.student_untrained()
    Trainer(student, TrainConfig(epochs=DISTILL_EPOCHS, progress=False), DistillConfig(), teacher).fit(train)
    torch.save(student.state_dict(), root / "distilled.pt")
    fp32_accuracy = accuracy_on(student, Data(test.x, test.y))
    with ExportPipeline(copy.deepcopy(student), zoo.INPUT_SHAPE) as pipeline:
        ptq = pipeline.export("x86-server-cpu", "int8", calib="zoo:digits", eval_data="zoo:digits:test",
                              out=root / "ptq")
    result = qat.qat(teacher, copy.deepcopy(student), train, test,
                     train_config=TrainConfig(epochs=QAT_EPOCHS, lr=QAT_LR, progress=False, desc="qat"))
    with ExportPipeline(result.model, zoo.INPUT_SHAPE) as pipeline:
        qat_art = pipeline.export("x86-server-cpu", "int8", eval_data="zoo:digits:test", out=root / "qat-int8")
    return {"root": root, "teacher": teacher, "student": student, "fp32": fp32_accuracy, "ptq": ptq,
            "qat": result, "qat_art": qat_art, "train": train, "test": test}


def test_qat_int8_within_half_point_of_fp32_and_not_below_ptq(setup):
    """Done-when: QAT + distillation int8 student exported through ONNX Runtime (x86-server-cpu) is within
    0.5 point of the FP32 student and >= the PTQ int8 export of the same student."""
    qat_v = setup["qat_art"].manifest["verification"]
    ptq_v = setup["ptq"].manifest["verification"]
    fp32 = setup["fp32"]
    print(f"\nFP32 student {fp32:.4f}; PTQ int8 (ORT) {ptq_v['accuracy']:.4f}; QAT int8 (ORT) "
          f"{qat_v['accuracy']:.4f}; QAT int8 (torch) {setup['qat'].metrics['student_accuracy']:.4f}")
    assert ptq_v["reference_accuracy"] == pytest.approx(fp32, abs=1e-6)
    assert fp32 - qat_v["accuracy"] <= 0.005  # "within half a point": a drop of at most 0.5 (it may gain)
    assert qat_v["accuracy"] >= ptq_v["accuracy"]


def test_qat_artifact_is_the_qdq_graph_without_calibration(setup):
    m = setup["qat_art"].manifest
    assert m["calibration"]["method"] == "qat"
    assert "ranges_file" not in m["calibration"]
    q = m["backend_details"]["quantization"]
    assert q["source"] == "qat" and q["activation_types"] == ["uint8"] and q["per_channel_weights"]
    model = onnx.load(str(setup["qat_art"].path / m["model_file"]))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert float_weights(model) == []
    int8_weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1]
    assert len(int8_weights) == 4  # three convolutions and the classifier
    assert m["onnx_export"]["max_abs_err"]  # checked against the converted torch model
    assert not (setup["qat_art"].path / "calibration_ranges.json").exists()


def test_qat_metrics(setup):
    metrics = setup["qat"].metrics
    assert metrics["student_params"] == zoo.count_params(setup["student"])
    assert metrics["teacher_params"] == zoo.count_params(setup["teacher"])
    assert 0 < metrics["cka"] <= 1 and metrics["student_macs"] > 0
    assert metrics["fp32_student_accuracy"] == pytest.approx(setup["fp32"])
    assert len(setup["qat"].train.history) == QAT_EPOCHS


def test_cli_export_of_qat_onnx_records_qat(setup, cli, tmp_path):
    path = qat.save_onnx(setup["qat"].model, zoo.INPUT_SHAPE, tmp_path / "student_qat.onnx",
                         real_inputs=setup["test"].x)
    assert quantization_of(path.path) == "qat"
    meta = {p.key: p.value for p in onnx.load(str(path.path)).metadata_props}
    assert meta[QUANTIZATION_METADATA_KEY] == "qat"
    out = tmp_path / "art"
    r = cli("export", path.path, "--target", "x86-server-cpu", "--precision", "int8", "--eval", "zoo:digits:test",
            "--out", out)
    assert r.rc == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "qat"
    assert manifest["verification"]["accuracy"] == pytest.approx(
        setup["qat_art"].manifest["verification"]["accuracy"], abs=0.0023)


def test_cli_export_of_qat_pt2_in_a_fresh_process(setup, tmp_path):
    """A fresh process has not imported torchao, so loading the .pt2 needs the Q/DQ ops registered."""
    pt2 = qat.save_program(setup["qat"].model, torch.from_numpy(setup["test"].x[:2]), tmp_path / "q.pt2")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgekit", "export", str(pt2), "--target", "x86-server-cpu",
                           "--precision", "int8", "--eval", "zoo:digits:test", "--out", str(tmp_path / "a")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "qat"


def test_cli_qat_from_distilled_weights(setup, cli, tmp_path):
    out = tmp_path / "q"
    r = cli("qat", "--student-weights", setup["root"] / "distilled.pt", "--epochs", 1, "--no-progress",
            "--out", out, "--report", tmp_path / "qat.json")
    assert r.rc == 0, r.err
    report = json.loads((tmp_path / "qat.json").read_text())
    assert report["stage"] == "qat" and report["onnx"]["quantization"] == "qat"
    assert report["fp32_student_accuracy"] == pytest.approx(setup["fp32"])
    for key in ("teacher_params", "student_params", "teacher_accuracy", "student_accuracy", "retention", "cka"):
        assert report[key] is not None, key
    for name in ("student_qat.onnx", "student_qat.pt2", "student_fp32.pt", "checkpoint.pt", "report.json"):
        assert (out / name).is_file(), name
    bad = cli("qat", "--student-weights", setup["root"] / "distilled.pt", "--feature", "a=b", "--epochs", 1,
              "--no-progress", "--out", tmp_path / "bad")
    assert bad.rc == 2 and "feature" in bad.err


def _qdq_conv_model(weight: np.ndarray, scale: np.ndarray) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(W) where W is a float initializer quantized at run time (QuantizeLinear)."""
    zp_w = np.zeros(len(scale), dtype=np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "sw"),
             numpy_helper.from_array(zp_w, "zw"), numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
             numpy_helper.from_array(np.array(128, np.uint8), "zx")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_fold_constant_weight_quantize_and_export_it(tmp_path):
    """Float weights behind a QuantizeLinear are folded to int8 initializers: same outputs, no float weight."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    scale = (np.abs(weight).reshape(3, -1).max(1) / 127).astype(np.float32)
    model = _qdq_conv_model(weight, scale)
    src = tmp_path / "user_qdq.onnx"
    onnx.save(model, str(src))
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    folded_model = onnx.load(str(src))
    assert fold_constant_quantize(folded_model) == ["wq"]
    assert [n.op_type for n in folded_model.graph.node].count("QuantizeLinear") == 1  # the activation's stays
    inits = {t.name: t for t in folded_model.graph.initializer}
    assert "w" not in inits and inits["wq"].data_type == TensorProto.INT8
    q = numpy_helper.to_array(inits["wq"])
    assert np.array_equal(q, np.clip(np.rint(weight / scale.reshape(3, 1, 1, 1)), -128, 127).astype(np.int8))
    onnx.save(folded_model, str(tmp_path / "folded.onnx"))
    after = ort.InferenceSession(str(tmp_path / "folded.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(after, before, atol=1e-6)

    # a user's pre-quantized graph through the ONNX Runtime exporter: copied, weights folded, no calibration
    art = ExportPipeline(str(src)).export("x86-server-cpu", "int8", out=tmp_path / "art")
    details = art.manifest["backend_details"]["quantization"]
    assert details["folded_weight_quantize"] == 1 and details["activation_types"] == ["uint8"]
    assert art.manifest["calibration"]["method"].startswith("pre-quantized")
    exported = onnx.load(str(art.path / "model.onnx"))
    assert all(t.data_type != TensorProto.FLOAT or len(t.dims) < 2 for t in exported.graph.initializer)
