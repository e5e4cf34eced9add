"""QAT, diagnose and the budgeted fallback on multi-input (transformer) models, on a tiny randomly initialised
BERT saved as a Hugging Face folder: diagnose ranks every projection / embedding table by what it alone costs
the embedding's cosine; a --min-cosine budget keeps the ranked layers float until it holds; text QAT leaves the
weights exactly on the exporter's dynamic-int8 grid, so the exported artifact holds the QAT model's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """The tiny BERT with one outlier column per projection, so per-channel int8 rounding costs something."""
    import torch

    def outliers(model) -> None:
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight[:, 0] *= 8.0

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mi"), tweak=outliers)


def test_fake_quant_is_the_exporters_grid():
    """The grid QAT trains on is the one the exporter stores: the embedding tables' per-row int8 and ONNX
    Runtime's symmetric per-channel weights (max|w| / 127, range [-127, 127])."""
    import torch

    from edgekit.quant.embedding import quantize_rows
    from edgekit.train.text_grid import fake_quant, grid_error

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)).astype(np.float32) * rng.uniform(0.01, 3, size=(50, 1)).astype(np.float32)
    q, scale = quantize_rows(table)
    ours = fake_quant(torch.from_numpy(table)).numpy()
    np.testing.assert_allclose(ours, q.astype(np.float32) * scale[:, None], rtol=0, atol=1e-7)
    lin = torch.nn.Linear(16, 8)
    assert grid_error(lin) > 0.01
    with torch.no_grad():
        lin.weight.copy_(fake_quant(lin.weight))
    assert grid_error(lin) < 1e-4


def test_text_qat_weights_on_grid_and_artifact_reproduces_them(tiny_bert, tmp_path, cli):
    """`edgekit qat` on hf: folders: the QAT student's weights lie on the grid, the exporter's int8 weights
    are those very values, and the artifact reproduces the QAT model's embedding."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import AutoModel

    out = tmp_path / "q"
    r = cli("qat", "--teacher", f"hf:{tiny_bert}", "--student", f"hf:{tiny_bert}", "--data", "zoo:sentences",
            "--eval", "zoo:sentences:test", "--steps", "6", "--lr", "1e-3", "--max-length", "32", "--out", out)
    assert r.rc == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["grid_error_steps"] < 1e-3
    art = report["artifact"]
    assert art["cosine_vs_qat_model"]["mean"] > 0.9999
    qat_model = AutoModel.from_pretrained(out / "student_qat")
    fp32 = AutoModel.from_pretrained(tiny_bert)
    q_w = qat_model.encoder.layer[0].attention.self.query.weight.detach()
    assert not torch.equal(q_w, fp32.encoder.layer[0].attention.self.query.weight)  # training moved it
    # every int8 MatMul weight of the artifact, dequantized, is one of the QAT model's Linear weights (transposed)
    model = onnx.load(str(out / "artifact" / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    linear = [m.weight.detach().numpy().T for m in qat_model.modules() if isinstance(m, torch.nn.Linear)]
    found = 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        w = inits[node.input[1]].astype(np.float32)
        scale = inits[node.input[1].replace("_quantized", "_scale")]
        deq = w * scale[None, :]
        match = [lw for lw in linear if lw.shape == deq.shape and np.allclose(lw, deq, rtol=0, atol=1e-6)]
        assert match, f"{node.name}: exported int8 weights are not the QAT model's"
        found += 1
    assert found == 12
    assert "artifact" in r.out and "weights on the int8 grid" in r.out


def test_diagnose_ranks_transformer_layers_and_writes_report(tiny_bert, tmp_path, cli):
    out = tmp_path / "diag.json"
    r = cli("diagnose", f"hf:{tiny_bert}", "--calib", "zoo:sentences", "--samples", "16", "--json", out,
            "--top", "5")
    assert r.rc == 0, r.err
    report = json.loads(out.read_text())
    ranking = report["ranking"]
    ops = {row["op"] for row in ranking}
    assert ops == {"MatMul", "Gather"} and len(ranking) == 13  # 12 projections + the word-embedding table
    cos = [row["cosine_alone"] for row in ranking]
    assert cos == sorted(cos) and cos[0] < cos[-1] <= 1.0
    assert report["metric"] == "cosine" and report["int8"]["cosine"]["mean"] <= cos[0] + 1e-9
    assert all(row["layer_sqnr_db"] is not None for row in ranking)
    assert "cos alone" in r.out and ranking[0]["layer"][-30:] in r.out


def test_cosine_budget_keeps_the_ranked_layers_float(tiny_bert, tmp_path):
    """A --min-cosine between full int8 and FP32: the search must keep layers float to meet it (a search that
    did nothing would miss it), and the written artifact keeps exactly those nodes in float."""
    import onnx

    from edgekit.export import export

    full = export(f"hf:{tiny_bert}", "x86-server-cpu", "dynamic-int8", calib="zoo:sentences",
                  out=tmp_path / "full")
    full_cos = full.manifest["verification"]["cosine"]["mean"]
    assert full_cos < 1.0 - 1e-7
    goal = 1.0 - (1.0 - full_cos) / 3  # a third of the full-int8 loss
    art = export(f"hf:{tiny_bert}", "x86-server-cpu", "dynamic-int8", calib="zoo:sentences",
                 eval="zoo:sentences:test", out=tmp_path / "budget", min_cosine=goal)
    m = art.manifest
    fb = m["fallback"]
    assert fb["holds"] and fb["kept_layers"] and fb["full_int8"]["cosine"]["mean"] < goal
    assert fb["result"]["cosine"]["mean"] >= goal
    assert m["budget"]["status"] == "met" and m["verification"]["cosine"]["mean"] >= goal
    graph = onnx.load(str(art.path / "model.onnx"))
    float_nodes = {n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gather")}
    assert set(fb["kept_layers"]) <= float_nodes


def test_cosine_budget_bad_input(tiny_bert, tmp_path, cli):
    r = cli("export", f"hf:{tiny_bert}", "-t", "x86-server-cpu", "-p", "int8", "--calib", "zoo:sentences",
            "--min-cosine", "1.5", "--out", tmp_path / "a")
    assert r.rc == 2 and "--min-cosine" in r.err and not (tmp_path / "a").exists()
    r = cli("export", f"hf:{tiny_bert}", "-t", "x86-server-cpu", "-p", "int8", "--calib", "zoo:sentences",
            "--min-agreement", "0.99", "--out", tmp_path / "b")
    assert r.rc == 2 and "--min-cosine" in r.err and not (tmp_path / "b").exists()
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "int8", "--min-cosine", "0.99",
            "--out", tmp_path / "c")
    assert r.rc == 2 and "one float input" in r.err and not (tmp_path / "c").exists()
    r = cli("qat", "--teacher", f"hf:{tiny_bert}", "--student", f"hf:{tiny_bert}", "--data", "zoo:digits",
            "--out", tmp_path / "d")
    assert r.rc == 2 and "sentence" in r.err and not (tmp_path / "d").exists()


def test_edgekit_qat_api_takes_hf_models(tiny_bert):
    """`edgekit.qat` with hf: models is the text QAT: a few steps, no export, weights snapped onto the grid."""
    import edgekit
    from edgekit.train.qat_text import TextQATConfig
    from edgekit.train.text_grid import grid_error

    result = edgekit.qat(f"hf:{tiny_bert}", f"hf:{tiny_bert}", "zoo:sentences", "zoo:sentences:test",
                         config=TextQATConfig(steps=2, max_length=16), target=None)
    assert grid_error(result.model) < 1e-3 and result.folder is None
    c = result.metrics["torch_cosine_vs_teacher"]
    assert c["fp32_student"]["mean"] > 0.99999 and c["simulated_int8_before_qat"]["mean"] < 1.0
    with pytest.raises(edgekit.EdgekitError, match="hf:DIR"):
        edgekit.qat(f"hf:{tiny_bert}", "not-a-folder", "zoo:sentences", target=None)
