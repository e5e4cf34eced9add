"""The factorised word-embedding table of a text student (`embedding_rank=R`): parameters counted as V*R +
R*d, initialised as the best rank-R approximation of the teacher's rows, saved and reloaded (by edgekit and
by the `hf:` model source) bit for bit, and exported as a Gather of the V x R rows plus a MatMul."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import EdgekitError

RANK = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgekit.data.text_corpus import everyday_sentences
    from edgekit.data.tiny_text import save_tiny_bert
    from edgekit.train.distill.text_stage import load_hf_teacher

    folder = save_tiny_bert(tmp_path_factory.mktemp("teacher"), everyday_sentences())  # ~600 tokens, width 32
    teacher, tok = load_hf_teacher(folder)
    return teacher, tok


def _student(teacher, tok, rank: int):
    from edgekit.train.distill.student import build_student, parse_student_config

    spec = parse_student_config(f"layers=1,hidden=32,heads=4,intermediate=32,vocab=shared,embedding_rank={rank}")
    ids = [tok(s)["input_ids"] for s in ("the cat sat on the mat", "a dog ran in the park")]
    return build_student(teacher, tok.get_vocab(), spec, ids)


def test_rank_counts_and_initialises_as_truncated_svd(tiny):
    from edgekit.models.factorised_embedding import FactorisedEmbedding

    teacher, tok = tiny
    full, low = _student(teacher, tok, 0), _student(teacher, tok, RANK)
    vocab, width = teacher.config.vocab_size, teacher.config.hidden_size
    emb = low.model.bert.embeddings.word_embeddings
    assert isinstance(emb, FactorisedEmbedding)
    assert full.params() - low.params() == vocab * width - (vocab * RANK + RANK * width)
    table = teacher.embeddings.word_embeddings.weight.float()
    s = torch.linalg.svdvals(table)
    best = float((s[RANK:] ** 2).sum())  # the error of the best rank-8 table (Eckart-Young)
    err = float(((emb.weight.detach() - table) ** 2).sum())
    assert err == pytest.approx(best, rel=1e-3)
    assert any("rank 8 keeps" in n for n in low.notes)


def test_rank_must_be_below_the_width():
    from edgekit.train.distill.student import parse_student_config

    with pytest.raises(EdgekitError, match="embedding_rank must be 0"):
        parse_student_config("layers=1,hidden=32,heads=4,embedding_rank=32")
    with pytest.raises(EdgekitError, match="whole number"):
        parse_student_config("layers=1,hidden=32,heads=4,embedding_rank=x")


def test_saved_factorised_student_reloads_and_exports_as_gather_plus_matmul(tiny, tmp_path):
    import onnx

    from edgekit.export import export_model
    from edgekit.models.hf import load_model
    from edgekit.train.distill.student import load_text_student, save_student

    teacher, tok = tiny
    student = _student(teacher, tok, RANK)
    out = tmp_path / "student"
    save_student(student, out, tok)
    batch = tok(["the cat sat on the mat"], return_tensors="pt")
    want = student.model.eval()(batch["input_ids"], batch["attention_mask"])
    model, _ = load_text_student(out)
    assert torch.equal(model(batch["input_ids"], batch["attention_mask"]), want)
    hf = load_model(out)  # what `hf:DIR` export reads: the same weights, not a random table
    hidden = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.allclose(hidden.mean(1), want, atol=1e-6)

    spec = "input_ids:int64:1x16,attention_mask:int64:1x16"
    art = export_model(f"hf:{out}", "x86-server-cpu", "fp32", input_spec=spec,
                       dynamic=("sequence",), out=tmp_path / "onnx")
    graph = onnx.load(str(art.model_path)).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    vocab = teacher.config.vocab_size
    rows = [n for n, s in shapes.items() if s == (vocab, RANK)]
    assert rows and not [n for n, s in shapes.items() if s == (vocab, 32)]  # no full table anywhere
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in rows]
    assert gathers and any(m.op_type == "MatMul" and gathers[0].output[0] in m.input for m in graph.node)
    assert np.isclose(art.manifest["verification"]["cosine"]["mean"], 1.0, atol=1e-4)
