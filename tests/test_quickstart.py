"""`edgekit quickstart`, the README's first command: every stage runs for real, shortened (2 distillation
epochs, 1 QAT epoch, three targets: ONNX Runtime, TFLite and the torch eager baseline)."""

from __future__ import annotations

import csv
import json

import pytest

from edgekit.bench.records import validate_record as validate
from tests.conftest import no_partial_left

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("qs")
    out = root / "report"
    r = run_cli("quickstart", "--out", str(out), "--distill-epochs", "2", "--qat-epochs", "1", "--no-progress",
                "--targets", "x86-server-cpu,pixel-8,host-torch-cpu")
    return root, out, r


def test_quickstart_writes_the_whole_report_folder(quick):
    root, out, r = quick
    assert r.rc == 0, r.err
    assert no_partial_left(root)
    for name in ("report.md", "summary.json", "bench.json", "bench.csv", "bench.png", "models/student_qat.onnx",
                 "models/student_distilled.pt"):
        assert (out / name).is_file(), name
    arts = sorted(p.name for p in (out / "artifacts").iterdir())
    assert arts == ["host-torch-cpu-fp32", "pixel-8-fp32", "pixel-8-int8", "x86-server-cpu-fp32",
                    "x86-server-cpu-int8", "x86-server-cpu-int8-qat"]
    for a in arts:
        assert (out / "artifacts" / a / "manifest.json").is_file()


def test_quickstart_summary_has_every_stage_and_the_qat_artifact_skipped_calibration(quick):
    _, out, _ = quick
    s = json.loads((out / "summary.json").read_text())
    st = s["stages"]
    assert st["teacher"]["params"] > 10 * st["distilled_student"]["params"]
    for stage in ("teacher", "distilled_student", "student_alone", "qat_student"):
        assert 0.0 < st[stage]["accuracy"] <= 1.0, stage
    assert st["distilled_student"]["epochs"] == 2 and st["qat_student"]["epochs"] == 1
    by_name = {a["artifact"]: a for a in s["artifacts"]}
    assert by_name["artifacts/x86-server-cpu-int8-qat"]["calibration"] == "qat"
    assert by_name["artifacts/x86-server-cpu-int8"]["calibration"] == "minmax"
    assert by_name["artifacts/pixel-8-int8"]["backend"] == "tflite"


def test_quickstart_bench_records_follow_the_contract_and_feed_the_recommendations(quick):
    _, out, r = quick
    records = json.loads((out / "bench.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    assert len(records) == 6 and all(rec["status"] == "ok" for rec in records)
    assert all(validate(rec) == [] for rec in records)
    assert all(not rec["artifact"].startswith("/") for rec in records)  # relative to the report folder
    with open(out / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    s = json.loads((out / "summary.json").read_text())
    recs = {x["target"]: x for x in s["recommendations"]}
    assert recs["x86-server-cpu"]["measured"] and recs["pixel-8"]["measured"]
    assert recs["jetson-orin-nano"]["measured"] is False  # not exported in this run: the tree alone
    x86 = recs["x86-server-cpu"]
    assert x86["chosen_artifact"].startswith("artifacts/x86-server-cpu-")
    assert any(step.startswith("results:") for step in x86["path"])
    report = (out / "report.md").read_text()
    for heading in ("## Students", "## Artifacts", "## Benchmark", "## Recommendations"):
        assert heading in report
    assert "recommend x86-server-cpu (latency, measured)" in r.out
    # pixel-8's numbers come from this host, not a phone: ranked only as a proxy, and said so
    assert recs["pixel-8"]["proxy"] is True and recs["x86-server-cpu"]["proxy"] is False
    assert any(step.startswith("WARNING:") for step in recs["pixel-8"]["path"])
    assert "recommend pixel-8 (cost, measured on this host as a proxy (--allow-proxy))" in r.out


def test_quickstart_bad_target_fails_before_training_and_writes_nothing(cli, tmp_path):
    r = cli("quickstart", "--out", tmp_path / "q", "--targets", "no-such-board", "--no-progress")
    assert r.rc == 2 and "no-such-board" in r.err and len(r.err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    r = cli("quickstart", "--out", tmp_path / "q", "--distill-epochs", "0")
    assert r.rc == 2 and "distill-epochs" in r.err
    assert list(tmp_path.iterdir()) == []
