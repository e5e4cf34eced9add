"""The TensorRT target (issue 4): explicit Q/DQ int8, fp16, mixed, the legacy calibration cache, the trtexec
command, and the bad inputs. ONNX Runtime runs every graph on the CPU here (the accuracy check of the
artifact's numerics); the engine build and the engine runner are tested only where TensorRT and CUDA exist.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.tensorrt import (
    CALIBRATION_CACHE_FILE,
    engine_support,
    read_calibration_cache,
    trt_version_code,
)
from edgekit.errors import EdgekitError
from edgekit.graph.qdq import WEIGHTED_OPS, output_channel_axis, weighted_nodes
from tests.conftest import no_partial_left

HAVE_ENGINE, NO_ENGINE_REASON = engine_support()


@pytest.fixture(scope="module")
def pipeline():
    from edgekit.export import ExportPipeline

    with ExportPipeline("zoo:digits-student") as p:
        yield p


@pytest.fixture(scope="module")
def arts(pipeline, tmp_path_factory):
    """One pipeline: the ONNX export and the ranges are made once for every TensorRT artifact."""
    root = tmp_path_factory.mktemp("trt")
    out = {"int8": pipeline.export("jetson-orin-nano", "int8", out=root / "int8")}
    # mixed: keep the second convolution in fp32 and the classifier in fp16, named from the prepared graph
    names = weighted_nodes(onnx.load(str(out["int8"].path / "model_fp32.onnx")))
    out["mixed_nodes"] = {"fp32": [names[1]], "fp16": [names[-1]]}
    out["mixed"] = pipeline.export("jetson-orin-nano", "mixed", out=root / "mixed",
                                   exporter_options={"keep_fp32": [names[1]], "keep_fp16": [names[-1]]})
    out["mixed_default"] = pipeline.export("jetson-orin-nano", "mixed", out=root / "mixed-default")
    out["fp16"] = pipeline.export("jetson-orin-nano", "fp16", out=root / "fp16")
    out["fp16_io16"] = pipeline.export("nvidia-t4-server", "fp16", out=root / "fp16-io16",
                                       exporter_options={"io_dtype": "float16"})
    out["fp32"] = pipeline.export("nvidia-t4-server", "fp32", out=root / "fp32")
    return out


def _graph(art):
    model = onnx.load(str(art.model_path))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    return model, inits, producers


# -- int8 -------------------------------------------------------------------------------------------------
def test_int8_meets_accuracy_contract(arts):
    v = arts["int8"].manifest["verification"]
    assert v["data"] == "zoo:digits:test" and v["samples"] == 450
    assert v["agreement"] >= 0.99, v
    assert v["accuracy_drop"] <= 0.01, v
    assert v["runtime"].startswith("onnxruntime") or HAVE_ENGINE


def test_int8_graph_follows_tensorrt_qdq_rules(arts):
    """Checked on the graph itself, independently of edgekit's own checker."""
    model, inits, producers = _graph(arts["int8"])
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantizers
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.data_type == TensorProto.INT8, node.name
            assert not np.any(numpy_helper.to_array(zp)), f"{node.name}: zero point must be 0"
        if node.op_type == "QuantizeLinear":  # activations: per-tensor
            assert numpy_helper.to_array(inits[node.input[1]]).size == 1, node.name
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    assert len(weighted) == 4  # three convolutions and the classifier
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", node.name
        weight = numpy_helper.to_array(inits[dq.input[0]])
        assert weight.dtype == np.int8, node.name
        scale = numpy_helper.to_array(inits[dq.input[1]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        want = output_channel_axis(node, weight.ndim)
        assert scale.size == weight.shape[want] > 1 and axis == want, f"{node.name}: weights must be per-channel"
        bias = node.input[2]
        assert bias in inits and inits[bias].data_type == TensorProto.FLOAT, f"{node.name}: no Q/DQ on biases"
    # TensorRT's placement: weighted layers' outputs (the logits among them) are not quantized
    out_name = model.graph.output[0].name
    assert producers[out_name].op_type in WEIGHTED_OPS


def test_int8_manifest_holds_trtexec_and_engine_not_built(arts):
    if HAVE_ENGINE:
        pytest.skip("TensorRT and CUDA are here, so the engine is built (see test_engine_build_and_runner)")
    art = arts["int8"]
    d = art.manifest["backend_details"]
    assert d["engine"].startswith("not built (") and "tensorrt" in d["engine"], d["engine"]
    args = shlex.split(d["trtexec"])
    assert args[:4] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.engine", "--stronglyTyped"]
    assert "--timingCacheFile=timing.cache" in args
    assert "--minShapes=input:1x1x16x16" in args and "--maxShapes=input:8x1x16x16" in args  # target's profile
    assert not (art.path / "model.engine").exists()
    assert "onnxruntime" in d["verification_runner"]
    assert art.manifest["verification"]["runtime"].startswith("onnxruntime")


def test_calibration_cache_parses_back_to_the_ranges(arts):
    art = arts["int8"]
    legacy = art.manifest["backend_details"]["legacy_int8"]
    assert legacy["calibration_cache"] == CALIBRATION_CACHE_FILE and CALIBRATION_CACHE_FILE in art.manifest["files"]
    header, scales = read_calibration_cache(art.path / CALIBRATION_CACHE_FILE)
    expected = "TRT-100300-EntropyCalibration2"  # the target's TensorRT 10.3 (JetPack 6), when none is installed
    if not HAVE_ENGINE:
        assert header == expected == legacy["header"]
    ranges = json.loads((art.path / "calibration_ranges.json").read_text())["tensors"]
    assert set(scales) == set(ranges) and len(scales) >= 5
    for name, (lo, hi) in ranges.items():
        amax = max(abs(lo), abs(hi))
        assert scales[name] * 127 == pytest.approx(amax if amax > 0 else 127.0, rel=1e-6), name
    # the names are tensors of the FP32 graph shipped for the legacy path
    fp32 = onnx.load(str(art.path / legacy["onnx"]))
    tensors = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    assert set(scales) <= tensors


def test_trt_version_code():
    assert trt_version_code("10.3.0") == 100300
    assert trt_version_code("10.13.2.6") == 101302
    assert trt_version_code("8.6.1") == 8601


def test_runner_reproduces_the_manifest_check(arts):
    from edgekit.artifact import load_artifact
    from edgekit.data import zoo
    from edgekit.export import run_batched
    from edgekit.common.metrics import accuracy

    art = load_artifact(arts["int8"].path)
    test = zoo.digits_split("test")
    with art.runner(threads=1) as runner:
        logits = run_batched(runner, test.x)[0]
        assert runner.executes == ("tensorrt-engine" if HAVE_ENGINE else "onnxruntime-cpu")
    assert logits.shape == (450, 10) and logits.dtype == np.float32
    assert accuracy(logits, test.y) == pytest.approx(art.manifest["verification"]["accuracy"])


# -- fp16 -------------------------------------------------------------------------------------------------
def test_fp16_agreement_and_ops_kept_in_fp32(arts):
    art = arts["fp16"]
    v = art.manifest["verification"]
    assert v["agreement"] >= 0.995, v
    fp16 = art.manifest["backend_details"]["fp16"]
    assert {"Softmax", "ReduceMean", "LayerNormalization"} <= set(fp16["fp32_ops"])
    assert [n["op"] for n in fp16["fp32_nodes"]] == ["ReduceMean"]  # the student's global average pool
    model, inits, _ = _graph(art)
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS:
            assert inits[node.input[1]].data_type == TensorProto.FLOAT16, node.name
    kept = {n["name"] for n in fp16["fp32_nodes"]}
    casts_to_fp32 = {n.output[0] for n in model.graph.node if n.op_type == "Cast"
                     and next(a.i for a in n.attribute if a.name == "to") == TensorProto.FLOAT}
    for node in model.graph.node:
        if node.name in kept:
            assert node.input[0] in casts_to_fp32, f"{node.name} should read float32"
    assert art.manifest["inputs"][0]["dtype"] == "float32" and art.manifest["outputs"][0]["dtype"] == "float32"


def test_fp16_with_float16_io(arts):
    art = arts["fp16_io16"]
    assert art.manifest["inputs"][0]["dtype"] == "float16"
    assert art.manifest["backend_details"]["fp16"]["io_dtype"] == "float16"
    assert art.manifest["verification"]["agreement"] >= 0.995
    assert "--optShapes=input:8x1x16x16" in art.manifest["backend_details"]["trtexec"]  # the T4's profile
    with art.runner() as runner:  # float32 in, float32 out: the runner casts at the boundary
        out = runner.infer(np.zeros((2, 1, 16, 16), np.float32))[0]
    assert out.dtype == np.float32 and out.shape == (2, 10)


def test_fp32_is_the_onnx_unchanged(arts):
    art = arts["fp32"]
    assert art.manifest["verification"]["agreement"] == 1.0
    model, _, _ = _graph(art)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast") for n in model.graph.node)


# -- mixed ------------------------------------------------------------------------------------------------
def test_mixed_keeps_named_nodes_out_of_int8(arts):
    art = arts["mixed"]
    names = arts["mixed_nodes"]
    v = art.manifest["verification"]
    assert v["agreement"] >= 0.99 and v["accuracy_drop"] <= 0.01, v
    mixed = art.manifest["backend_details"]["quantization"]["mixed"]
    assert mixed["fp16_nodes"] == names["fp16"] and mixed["fp32_nodes"] == names["fp32"]
    model, inits, producers = _graph(art)
    by_name = {n.name: n for n in model.graph.node}
    for name in names["fp32"]:
        node = by_name[name]
        assert inits[node.input[1]].data_type == TensorProto.FLOAT, name
        assert producers[node.input[0]].op_type != "DequantizeLinear", name
    for name in names["fp16"]:
        node = by_name[name]
        assert inits[node.input[1]].data_type == TensorProto.FLOAT16, name
        assert producers[node.input[0]].op_type == "Cast", name
    quantized = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.name not in
                 {*names["fp16"], *names["fp32"]}]
    assert len(quantized) == 2
    for node in quantized:
        assert producers[node.input[1]].op_type == "DequantizeLinear", node.name
    assert art.manifest["backend_details"]["legacy_int8"]["calibration_cache"] == CALIBRATION_CACHE_FILE


def test_mixed_without_names_keeps_first_and_last_layers(arts):
    mixed = arts["mixed_default"].manifest["backend_details"]["quantization"]["mixed"]
    weighted = list(arts["int8"].manifest["backend_details"]["qdq_check"]["weights"])
    assert mixed["fp16_nodes"] == [weighted[0], weighted[-1]] and mixed["chosen_by"].startswith("default")
    assert arts["mixed_default"].manifest["verification"]["agreement"] >= 0.99


def test_mixed_with_an_unknown_node_names_the_available_ones(pipeline, tmp_path):
    with pytest.raises(EdgekitError, match=r"no node named conv_typo .* weighted nodes are: "):
        pipeline.export("jetson-orin-nano", "mixed", out=tmp_path / "bad",
                        exporter_options={"keep_fp16": ["conv_typo"]})
    assert not (tmp_path / "bad").exists() and no_partial_left(tmp_path)


def test_node_lists_need_precision_mixed(pipeline, tmp_path):
    with pytest.raises(EdgekitError, match="keep_fp16/keep_fp32 name nodes to keep out of int8 with precision 'mixed'"):
        pipeline.export("jetson-orin-nano", "int8", out=tmp_path / "bad", exporter_options={"keep_fp32": ["x"]})
    assert not (tmp_path / "bad").exists() and no_partial_left(tmp_path)


@pytest.mark.parametrize("options, message", [
    ({"batch_profile": [8, 1, 4]}, "batch_profile' must be [min, opt, max]"),
    ({"io_dtype": "bfloat16"}, "field 'io_dtype' is 'bfloat16'; allowed: one of float32, float16"),
    ({"keep_fp16": ["a"], "keep_fp32": ["a"]}, "in both keep_fp16 and keep_fp32"),
    ({"keep_fp16": 3}, "field 'keep_fp16' is 3; allowed: a list of non-empty strings"),
    ({"bogus": 1}, "unknown option(s) of backend 'tensorrt': 'bogus'; known: activation_symmetric"),
    ({"require_engine": True, "build_engine": False}, "contradict each other"),
])
def test_bad_options_fail_at_construction(options, message):
    from edgekit.backends.tensorrt import TensorRTExporter

    with pytest.raises(EdgekitError) as info:
        TensorRTExporter(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- a model that brings its own Q/DQ (QAT or another tool) ---------------------------------------------
def _qdq_model(path, act_zero_point: int, act_type=np.int8) -> None:
    """Q/DQ input -> Conv (int8 per-channel weights, int32 bias DequantizeLinear) -> Relu -> Flatten."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (4, 1, 3, 3)).astype(np.int8)
    w_scale = np.full(4, 0.01, np.float32)
    x_scale = np.array(0.05, np.float32)
    inits = [
        numpy_helper.from_array(x_scale, "x_scale"),
        numpy_helper.from_array(np.array(act_zero_point, act_type), "x_zp"),
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(np.arange(4, dtype=np.int32) * 7, "b_q"),
        numpy_helper.from_array(x_scale * w_scale, "b_scale"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="input_quant"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="input_dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="w_dequant", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["bd"], name="b_dequant", axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["y"], name="flatten"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def test_given_qdq_model_is_checked_and_its_bias_dequantize_folded(tmp_path):
    from edgekit.export import export_model

    _qdq_model(tmp_path / "qat.onnx", act_zero_point=0)
    art = export_model(str(tmp_path / "qat.onnx"), "jetson-orin-nano", "int8", out=tmp_path / "art")
    d = art.manifest["backend_details"]
    assert d["quantization"]["folded_bias_dequantize"] == ["b_dequant"]
    assert d["qdq_check"]["weights"]["conv"]["per_channel"] is True
    assert art.manifest["calibration"]["method"] != "minmax"  # the model's own ranges, no PTQ
    assert art.manifest["verification"]["agreement"] == 1.0 and art.manifest["verification"]["max_abs_err"] < 1e-5
    model = onnx.load(str(art.model_path))
    assert not any(n.name == "b_dequant" for n in model.graph.node)


@pytest.mark.parametrize("act_type, zero_point, message", [
    (np.uint8, 128, "Q/DQ node 'input_quant' quantizes to uint8; TensorRT's INT8 Q/DQ must be int8"),
    (np.int8, -2, "Q/DQ node 'input_quant' has a non-zero zero point (-2)"),
    (np.int8, 0, "node 'conv' has a quantized bias ('b_dequant'); TensorRT wants float biases"),
])
def test_qdq_checker_names_the_node(tmp_path, act_type, zero_point, message):
    from edgekit.graph.qdq import check_tensorrt_qdq

    _qdq_model(tmp_path / "m.onnx", zero_point, act_type)
    with pytest.raises(EdgekitError) as info:
        check_tensorrt_qdq(onnx.load(str(tmp_path / "m.onnx")))
    assert message in str(info.value) and "\n" not in str(info.value)


# -- bad input through the CLI: exit 2, a one-line error, nothing written ----------------------------------
def _assert_user_error(r, message, workdir, before):
    assert r.rc == 2, (r.rc, r.err)
    lines = r.err.strip().splitlines()
    # progress lines ("edgekit: ...") may precede the error; the error itself is one line, and the last
    assert lines[-1].startswith("edgekit export: error: ") and message in lines[-1], r.err
    assert all(line.startswith("edgekit") for line in lines), r.err
    assert r.out == ""
    assert {p.name for p in workdir.iterdir()} == before
    assert no_partial_left(workdir)


@pytest.mark.skipif(HAVE_ENGINE, reason="TensorRT and CUDA are installed here: --require-engine succeeds")
def test_require_engine_without_tensorrt_is_a_user_error(cli, tmp_path):
    before = {p.name for p in tmp_path.iterdir()}
    r = cli("export", "zoo:digits-student", "-t", "jetson-orin-nano", "--require-engine", "--out", "result",
            cwd=tmp_path)
    _assert_user_error(r, "needs the Python package 'tensorrt'", tmp_path, before)
    assert "pip install 'edgekit[tensorrt]'" in r.err and r.err.count("\n") == 1


def test_qdq_model_with_nonzero_zero_point_names_the_node(cli, tmp_path):
    _qdq_model(tmp_path / "asym.onnx", act_zero_point=3)
    before = {p.name for p in tmp_path.iterdir()}
    r = cli("export", "asym.onnx", "-t", "jetson-orin-nano", "-p", "int8", "--out", "result", cwd=tmp_path)
    _assert_user_error(r, "Q/DQ node 'input_quant' has a non-zero zero point (3)", tmp_path, before)


# -- only where TensorRT and CUDA exist ---------------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_ENGINE, reason=f"needs TensorRT and a CUDA device: {NO_ENGINE_REASON}")
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_engine_build_and_runner(pipeline, tmp_path, precision):  # pragma: no cover - GPU machines only
    art = pipeline.export("jetson-orin-nano", precision, out=tmp_path / precision,
                          exporter_options={"require_engine": True})
    d = art.manifest["backend_details"]
    assert d["engine"] == "built" and (art.path / d["engine_file"]).stat().st_size > 0
    assert (art.path / d["build"]["timing_cache"]).stat().st_size > 0
    assert d["build"]["tensorrt_version"] and d["build"]["gpu"]
    assert art.manifest["verification"]["runtime"].startswith("tensorrt")
    assert art.manifest["verification"]["agreement"] >= (0.99 if precision == "int8" else 0.995)
    with art.runner() as runner:
        assert runner.executes == "tensorrt-engine"
        assert runner.infer(np.zeros((3, 1, 16, 16), np.float32))[0].shape == (3, 10)
