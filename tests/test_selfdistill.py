"""Self-distillation QAT on unlabelled samples beats plain min-max PTQ on the test-built sensitive model."""

from __future__ import annotations

import torch

from edgekit.common.metrics import top1_agreement


def test_self_distillation_qat_beats_ptq_without_labels(tmp_path):
    from edgekit.data import testmodels
    from edgekit.export import ExportPipeline, run_batched
    from edgekit.data.calibration import CalibrationSet
    from edgekit.train import selfdistill

    model = testmodels.sensitive_dwsep()
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    x = train.x[:300]  # unlabelled: the labels are never passed
    with torch.no_grad():
        ref = model(torch.from_numpy(test.x)).numpy()
    calib = CalibrationSet(x, None, "digits_rgb train (unlabelled)", {}, len(x), "first 300")
    with ExportPipeline(model, (1, 3, 32, 32)) as p:
        ptq = p.export("x86-server-cpu", "int8", calib=calib, out=tmp_path / "ptq")
        with ptq.runner() as r:
            ptq_agreement = top1_agreement(ref, run_batched(r, test.x)[0])
    result = selfdistill.self_distill(model, x, epochs=3, out_dir=tmp_path / "sd")
    assert result.metrics["labels"] == "none"
    with ExportPipeline(result.onnx.path) as p:
        art = p.export("x86-server-cpu", "int8", out=tmp_path / "qat")
        assert art.manifest["calibration"]["method"].startswith("qat")
        with art.runner() as r:
            qat_agreement = top1_agreement(ref, run_batched(r, test.x)[0])
    assert ptq_agreement < 0.95
    assert qat_agreement >= ptq_agreement + 0.05, (ptq_agreement, qat_agreement)


def test_self_distill_cli_on_unlabelled_data_then_export_without_calibration(cli, tmp_path):
    import json

    from tests.conftest import no_partial_left

    out = tmp_path / "sd"
    r = cli("self-distill", "zoo:digits-student", "--data", "zoo:digits", "--samples", "200", "--epochs", "1",
            "--eval", "zoo:digits:test", "--no-progress", "--out", out)
    assert r.rc == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == "none" and report["samples"] == 200
    assert report["agreement_vs_fp32"] >= 0.97
    r = cli("export", out / "selfdistill_qat.verified.onnx", "--target", "x86-server-cpu", "--precision", "int8",
            "--out", tmp_path / "art")
    assert r.rc == 0, r.err
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["calibration"]["method"].startswith("qat")
    bad = cli("self-distill", out / "selfdistill_qat.verified.onnx", "--data", "zoo:digits", "--out", tmp_path / "b")
    assert bad.rc == 2 and "cannot be trained" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and no_partial_left(tmp_path)
