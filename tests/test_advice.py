"""The export summary ends with what the export's own check does not prove and the command to run next."""

from __future__ import annotations

from edgekit.export.summary import MIN_AGREEMENT, next_step, warnings


def _manifest(**kw) -> dict:
    m = {"backend": "onnxruntime", "model_file": "model.onnx", "target_profile": {"device_class": "cpu"},
         "backend_details": {}, "verification": {"agreement": 1.0, "data": "zoo:digits:test"}}
    m.update(kw)
    return m


def test_next_step_names_the_exact_device_command():
    trt = _manifest(backend="tensorrt", target_profile={"device_class": "gpu"},
                    backend_details={"engine": "not built (no GPU)", "trtexec": "trtexec --onnx=model.onnx"})
    assert next_step(trt) == "on the device, in the artifact folder: trtexec --onnx=model.onnx"
    built = _manifest(backend="tensorrt", backend_details={"engine": "built", "trtexec": "trtexec --onnx=m"})
    assert next_step(built) is None
    atc = _manifest(backend="ascend", backend_details={"compiled": "false (atc not found)", "atc_command": "atc --x"})
    assert next_step(atc).endswith("atc --x")
    phone = _manifest(backend="tflite", model_file="model.tflite", target_profile={"device_class": "edge-cpu"})
    step = next_step(phone)
    assert "adb push model.tflite /data/local/tmp/edgekit/model.tflite" in step
    assert "benchmark_model --graph=/data/local/tmp/edgekit/model.tflite" in step
    assert next_step(_manifest()) is None  # an x86 ONNX Runtime artifact is finished


def test_warnings_for_weak_checks_low_agreement_unverified_and_slow_int8():
    assert warnings(_manifest()) == []
    calib = warnings(_manifest(verification={"agreement": 1.0, "data": "c.npz", "calibration_data": True}))
    assert len(calib) == 1 and "calibration data only" in calib[0] and "--eval" in calib[0]
    low = warnings(_manifest(verification={"agreement": 0.95, "data": "e.npz"}))
    assert len(low) == 1 and f"below {MIN_AGREEMENT}" in low[0] and "--min-agreement" in low[0]
    assert "diagnose" in low[0]
    mixed = warnings(_manifest(verification={"agreement": 1.0, "data": "e", "not_verified": "mixed not verified: x"}))
    assert mixed == ["mixed not verified: x"]
    slow = warnings(_manifest(fallback={"cost": {"speedup_vs_fp32": 0.8}}))
    assert len(slow) == 1 and "no faster than fp32" in slow[0]


def test_export_summary_prints_warnings_and_the_next_command(cli, tmp_path):
    r = cli("export", "zoo:digits-student", "-t", "jetson-orin-nano", "-p", "int8", "--eval", "zoo:digits:train",
            "--out", tmp_path / "trt")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert any(line.startswith("warning    checked on the calibration data only") for line in lines)
    assert lines[-1].startswith("next       on the device, in the artifact folder: trtexec --onnx=model.onnx")
    assert any(line.startswith("memory     export peak RSS") for line in lines)
    r = cli("export", "zoo:digits-student", "-t", "ascend-310p", "-p", "mixed", "--out", tmp_path / "asc")
    assert r.rc == 0, r.err
    assert "warning    mixed not verified" in r.out and "next       where CANN's atc is installed" in r.out
    assert "aipp       aipp.cfg: YUV400_U8, mean [127.5], std [127.5] (from the calibration recipe" in r.out
