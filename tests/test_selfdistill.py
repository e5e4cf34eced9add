"""Self-distillation QAT on unlabelled samples beats plain min-max PTQ on the test-built sensitive model."""

from __future__ import annotations

import torch

from edgekit.metrics import top1_agreement


def test_self_distillation_qat_beats_ptq_without_labels(tmp_path):
    from edgekit import selfdistill, testmodels
    from edgekit.calibrate import CalibrationSet
    from edgekit.export import ExportPipeline, run_batched

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
