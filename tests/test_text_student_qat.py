"""A distilled text student folder (what `edgekit distill --teacher hf:DIR` writes: trimmed vocabulary, and a
2_Dense head when the student is narrower than its teacher) through `edgekit qat` with the teacher as target,
then `edgekit export` of the QAT'd folder to another target, on a tiny BERT teacher
(edgekit.data.tiny_text: a word-level tokenizer that this transformers version loads whole)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.data.text import sentences_path
from edgekit.data.tiny_text import save_tiny_bert

STUDENT = "layers=1,hidden=16,heads=2,intermediate=32"  # narrower than the teacher (32): a 2_Dense head


@pytest.mark.parametrize("extra", ["", ",embedding_rank=4"], ids=["full-table", "factorised-table"])
def test_distilled_student_goes_through_qat_and_export(cli, tmp_path, extra):
    lines = [s for s in sentences_path("train").read_text().splitlines() if s.strip()]
    train, held = tmp_path / "train.txt", tmp_path / "heldout.txt"  # small: the path matters here, not quality
    train.write_text("\n".join(lines[:48]) + "\n")
    held.write_text("\n".join(s for s in sentences_path("test").read_text().splitlines()[:20] if s.strip()) + "\n")
    teacher, student, out = save_tiny_bert(tmp_path / "teacher", lines), tmp_path / "student", tmp_path / "qat"
    r = cli("distill", "--teacher", f"hf:{teacher}", "--student-config", STUDENT + extra, "--data", train,
            "--eval", held, "--epochs", "1", "--batch-size", "32", "--terms", "output", "--out", student)
    assert r.rc == 0, r.err[-2000:]
    assert (student / "2_Dense").is_dir()  # the case the head support exists for
    r = cli("qat", "--teacher", f"hf:{teacher}", "--student", f"hf:{student}", "--data", train, "--eval", held,
            "--steps", "3", "--max-length", "16", "--anchor-weight", "1", "--out", out)
    assert r.rc == 0, r.err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["projection_head"].startswith("2_Dense 16 -> 32")
    assert "FP32 student" in report["loss"] and report["grid_error_steps"] < 1e-3
    art = report["artifact"]
    assert art["target"] == "x86-server-cpu" and art["precision"] == "dynamic-int8"
    # the int8 artifact is judged against the FP32 student it replaces, as well as against the teacher
    assert 0.9 < art["cosine_vs_fp32_student"]["mean"] <= 1.0 and art["cosine_vs_qat_model"]["mean"] > 0.99
    assert -1.0 <= art["cosine_vs_teacher"]["mean"] < 0.999  # a 16-wide student does not match its teacher
    # the QAT'd folder is the same kind of student: trimmed vocabulary, head and modules kept
    qat = out / "student_qat"
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(student).get_vocab()
    assert AutoTokenizer.from_pretrained(qat).get_vocab() == vocab
    assert json.loads((qat / "config.json").read_text()).get("embedding_rank") == (4 if extra else None)
    assert len(vocab) < len(AutoTokenizer.from_pretrained(teacher).get_vocab())  # trimmed by distill
    assert (qat / "2_Dense" / "model.safetensors").is_file() and (qat / "modules.json").is_file()
    from edgekit.train.distill.student import load_text_student

    model, tok = load_text_student(qat)
    batch = tok(["The model runs on a small device."], return_tensors="pt")
    assert model(batch["input_ids"], batch["attention_mask"]).shape == (1, 32)

    # and it exports, through the normal path, to a target other than the one QAT wrote
    e = cli("export", f"hf:{qat}", "--target", "jetson-orin-nano", "--precision", "int8", "--calib", train,
            "--eval", held, "--out", tmp_path / "jetson")
    assert e.rc == 0, e.err[-2000:]
    manifest = json.loads((tmp_path / "jetson" / "manifest.json").read_text())
    assert manifest["target"] == "jetson-orin-nano" and manifest["precision"] == "int8"
    assert np.isfinite(manifest["verification"]["cosine"]["mean"])
