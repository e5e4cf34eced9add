"""The digits student exported to the ONNX Runtime targets: the accuracy contract of the foundation issue."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgekit.backends.onnxruntime import WEIGHT_OPS


@pytest.fixture(scope="module")
def digits_artifacts(tmp_path_factory):
    """One pipeline, three artifacts: the ONNX export and the ranges are made once and shared."""
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("digits")
    arts = {}
    with ExportPipeline("zoo:digits-student") as pipeline:
        for target, precision in [("x86-server-cpu", "fp32"), ("x86-server-cpu", "int8"),
                                  ("android-ort-mobile", "int8"), ("x86-server-cpu", "dynamic-int8")]:
            arts[(target, precision)] = pipeline.export(target, precision, out=root / f"{target}-{precision}")
    return arts


@pytest.mark.parametrize("key", [("x86-server-cpu", "fp32"), ("x86-server-cpu", "int8"),
                                 ("android-ort-mobile", "int8")])
def test_digits_student_meets_accuracy_contract(digits_artifacts, key):
    m = digits_artifacts[key].manifest
    v = m["verification"]
    assert v["data"] == "zoo:digits:test" and v["samples"] == 450
    assert v["agreement"] >= 0.99, v
    assert v["accuracy_drop"] <= 0.01, v
    assert 0.0 <= v["accuracy"] <= 1.0


def test_manifest_has_the_contract_fields(digits_artifacts):
    art = digits_artifacts[("x86-server-cpu", "int8")]
    m = json.loads((art.path / "manifest.json").read_text())
    for field in ("target", "backend", "precision", "files", "inputs", "outputs", "calibration",
                  "verification", "tool_versions", "created"):
        assert field in m, field
    assert m["inputs"][0]["layout"] == "NCHW" and m["inputs"][0]["shape"][1:] == [1, 16, 16]
    cal = m["calibration"]
    assert cal["source"] == "zoo:digits:train" and cal["samples"] == 300 and cal["available"] == 1347
    assert len(cal["sha256"]) == 64 and cal["method"] == "minmax" and cal["preprocessing"]["resize"]
    assert (art.path / cal["ranges_file"]).is_file()
    for name, meta in m["files"].items():
        assert (art.path / name).stat().st_size == meta["bytes"]
    assert m["tool_versions"]["onnxruntime"] and m["onnx_export"]["max_abs_err"]


def test_int8_graph_holds_every_conv_and_linear_weight_as_integers(digits_artifacts):
    art = digits_artifacts[("x86-server-cpu", "int8")]
    model = onnx.load(str(art.model_path))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weight_nodes = [n for n in model.graph.node if n.op_type in WEIGHT_OPS]
    assert len(weight_nodes) == 4  # three convolutions and the classifier
    for node in weight_nodes:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", node.name
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8, node.name
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        assert scale.size > 1 or node.op_type == "Gemm", f"{node.name}: weights should be per-channel"
    # x86 profile: uint8 activations (the fast ONNX Runtime path)
    q_inputs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zp = inits[q_inputs[0].input[2]]
    assert zp.data_type == onnx.TensorProto.UINT8


def test_ort_mobile_artifact_has_ort_file_and_operator_config(digits_artifacts):
    art = digits_artifacts[("android-ort-mobile", "int8")]
    assert set(art.manifest["files"]) == {"model.ort", "required_operators.config", "calibration_ranges.json"}
    config = (art.path / "required_operators.config").read_text()
    assert "QuantizeLinear" in config and "Conv" in config
    assert art.manifest["backend_details"]["optimization_style"] == "Runtime"


def test_dynamic_int8_runs_and_keeps_weights_integer(digits_artifacts):
    art = digits_artifacts[("x86-server-cpu", "dynamic-int8")]
    assert art.manifest["backend_details"]["float_weight_nodes"] == []
    assert art.manifest["verification"]["agreement"] >= 0.98


def test_runner_reproduces_the_manifest_check(digits_artifacts):
    """The Runner a user (or the benchmark) loads gives the numbers the manifest recorded."""
    from edgekit.artifact import load_artifact
    from edgekit.data import zoo
    from edgekit.export import run_batched
    from edgekit.common.metrics import accuracy

    art = load_artifact(digits_artifacts[("x86-server-cpu", "int8")].path)
    test = zoo.digits_split("test")
    with art.runner(threads=1) as runner:
        logits = run_batched(runner, test.x)[0]
    assert logits.shape == (450, 10) and logits.dtype == np.float32
    assert accuracy(logits, test.y) == pytest.approx(art.manifest["verification"]["accuracy"])


def test_ranges_are_computed_once_per_model_and_data(digits_artifacts):
    a = json.loads((digits_artifacts[("x86-server-cpu", "int8")].path / "calibration_ranges.json").read_text())
    b = json.loads((digits_artifacts[("android-ort-mobile", "int8")].path / "calibration_ranges.json").read_text())
    assert a == b and len(a["tensors"]) >= 5
