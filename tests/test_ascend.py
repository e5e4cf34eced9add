"""The Ascend stub (issue 4): the ONNX at an opset ATC accepts, the atc command, the AIPP config, and
`compiled: false (atc not found)` where atc is absent; the .om itself is tested only where atc exists."""

from __future__ import annotations

import shlex

import onnx
import pytest

from edgekit.backends.ascend import PRECISION_MODES, aipp_config, atc_path
from edgekit.errors import EdgekitError
from tests.conftest import no_partial_left

HAVE_ATC = atc_path() is not None


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """The digits student's architecture, untrained (no training run needed for a float32 graph check),
    calibration recipe zoo:digits (its normalisation feeds AIPP), checked on the digits test split."""
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("ascend")
    with ExportPipeline("edgekit.data.zoo:student_untrained", "1x1x16x16") as pipeline:
        return {p: pipeline.export("ascend-310p", p, out=root / p, calib="zoo:digits", eval_data="zoo:digits:test")
                for p in ("fp16", "mixed", "fp32")}


def test_default_precision_is_fp16():
    from edgekit.targets import load_target

    t = load_target("ascend-310p")
    assert t.default_precision == "fp16" and t.device_class == "npu" and t.backend == "ascend"


@pytest.mark.parametrize("precision", ["fp16", "mixed", "fp32"])
def test_atc_command_has_soc_version_and_precision_mode(arts, precision):
    d = arts[precision].manifest["backend_details"]
    args = shlex.split(d["atc_command"])
    assert args[0] == "atc"
    for want in ("--model=model.onnx", "--framework=5", "--output=model", "--soc_version=Ascend310P3",
                 "--input_shape=input:1,1,16,16", f"--precision_mode={PRECISION_MODES[precision]}",
                 "--insert_op_conf=aipp.cfg"):
        assert want in args, (want, args)
    assert PRECISION_MODES == {"fp16": "force_fp16", "mixed": "allow_mix_precision",
                               "fp32": "must_keep_origin_dtype"}


def test_onnx_is_at_an_opset_atc_accepts_and_matches_fp32(arts):
    art = arts["fp32"]
    model = onnx.load(str(art.model_path))
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert 11 <= opset <= 18 and art.manifest["backend_details"]["opset"] == opset
    v = art.manifest["verification"]
    assert v["agreement"] == 1.0 and v["max_abs_err"] < 1e-4, v  # float32 ONNX: the graph given to atc is right
    assert "onnxruntime" in v["runtime"] and ".om not run" in v["runtime"]


def test_fp16_is_verified_in_float16_and_mixed_says_not_verified(arts):
    """fp16 (atc's force_fp16) is checked on the float16 cast of the graph, so its figure differs from fp32's;
    mixed cannot be emulated here and the manifest says so."""
    v16, v32, vmix = (arts[p].manifest["verification"] for p in ("fp16", "fp32", "mixed"))
    assert v16["verified_precision"] == "fp16" and "float16 cast" in v16["runtime"]
    assert v16["max_abs_err"] > 100 * v32["max_abs_err"]
    assert v16["sqnr_db"] is not None and (v32["sqnr_db"] is None or v16["sqnr_db"] < v32["sqnr_db"] - 20)
    assert "not_verified" not in v16 and "not_verified" not in v32
    assert vmix["verified_precision"] == "fp32" and vmix["not_verified"].startswith("mixed not verified")


def test_no_aipp_without_a_known_normalisation(tmp_path):
    """No calibration recipe and no aipp_mean/aipp_std: no aipp.cfg, and the manifest says why."""
    from edgekit.export import export_model

    art = export_model("edgekit.data.zoo:student_untrained", "ascend-310p", "fp32", input_shape=(1, 1, 16, 16),
                       out=tmp_path / "a")
    aipp = art.manifest["backend_details"]["aipp"]
    assert aipp["config"] is None and "no aipp.cfg written" in aipp["note"] and "aipp_mean" in aipp["note"]
    assert "aipp.cfg" not in art.manifest["files"] and "--insert_op_conf" not in \
        art.manifest["backend_details"]["atc_command"]
    given = export_model("edgekit.data.zoo:student_untrained", "ascend-310p", "fp32", input_shape=(1, 1, 16, 16),
                         out=tmp_path / "b", exporter_options={"aipp_mean": [100.0], "aipp_std": [50.0]})
    d = given.manifest["backend_details"]["aipp"]
    assert d["from"] == "backend options" and d["mean"] == [100.0] and d["std"] == [50.0]


@pytest.mark.skipif(HAVE_ATC, reason="atc is on PATH here, so the .om is compiled")
def test_not_compiled_without_atc(arts):
    art = arts["fp16"]
    assert art.manifest["backend_details"]["compiled"] == "false (atc not found)"
    assert set(art.manifest["files"]) == {"model.onnx", "aipp.cfg"}


def test_aipp_config_normalises_like_the_model(arts):
    art = arts["fp16"]
    assert art.manifest["backend_details"]["aipp"]["from"].startswith("the calibration recipe of zoo:digits")
    text = (art.path / "aipp.cfg").read_text()
    assert text.startswith("aipp_op {") and text.rstrip().endswith("}")
    fields = dict(line.strip().split(" : ") for line in text.splitlines()[1:-1])
    assert fields["aipp_mode"] == "static" and fields["input_format"] == "YUV400_U8"  # 1-channel digits
    assert fields["src_image_size_w"] == fields["src_image_size_h"] == "16"
    # (pixel - 127 - 0.5) / 127.5 maps 0..255 onto -1..1, the zoo's (x/16 - 0.5) / 0.5
    assert fields["mean_chn_0"] == "127" and float(fields["min_chn_0"]) == 0.5
    assert float(fields["var_reci_chn_0"]) == pytest.approx(1 / 127.5)


def test_aipp_config_for_rgb_imagenet_normalisation():
    text, info = aipp_config([1, 3, 224, 224], "NCHW", {"aipp_mean": [123.675, 116.28, 103.53],
                                                        "aipp_std": [58.395, 57.12, 57.375]})
    assert info["input_format"] == "RGB888_U8" and "src_image_size_w : 224" in text
    assert "mean_chn_2 : 103" in text and "min_chn_2 : 0.53" in text
    with pytest.raises(EdgekitError, match="1- or 3-channel"):
        aipp_config([1, 2, 8, 8], "NCHW", {})
    with pytest.raises(EdgekitError, match="has 2 values but the model input has 3 channels"):
        aipp_config([1, 3, 8, 8], "NCHW", {"aipp_mean": [1, 2]})


@pytest.mark.skipif(HAVE_ATC, reason="atc is on PATH here: --require-engine succeeds")
def test_require_engine_without_atc_is_a_user_error(cli, tmp_path):
    before = {p.name for p in tmp_path.iterdir()}
    r = cli("export", "edgekit.data.zoo:student_untrained", "--input-shape", "1x1x16x16", "-t", "ascend-310p",
            "--require-engine", "--out", "result", cwd=tmp_path)
    assert r.rc == 2 and r.err.count("\n") == 1 and r.err.startswith("edgekit export: error: "), r.err
    assert "atc compiler (CANN toolkit) is not on PATH" in r.err and r.out == ""
    assert {p.name for p in tmp_path.iterdir()} == before and no_partial_left(tmp_path)


@pytest.mark.atc
@pytest.mark.skipif(not HAVE_ATC, reason="needs Huawei's atc compiler (CANN toolkit) on PATH")
def test_atc_compiles_the_om(tmp_path):  # pragma: no cover - Ascend build hosts only
    from edgekit.export import export_model

    art = export_model("zoo:digits-student", "ascend-310p", "fp16", out=tmp_path / "om",
                       exporter_options={"require_engine": True})
    d = art.manifest["backend_details"]
    assert d["compiled"] == "true" and (art.path / d["om_file"]).stat().st_size > 0
    assert d["om_file"] in art.manifest["files"]


def test_to_opset_converts_down_for_older_atc(arts):
    """An older CANN (opsets up to 13 or 17) gets the graph converted, numerics unchanged."""
    import numpy as np
    import onnxruntime as ort

    from edgekit.backends.ascend import to_opset

    model = onnx.load(str(arts["fp32"].model_path))
    converted, old = to_opset(model, 11, 17)
    assert old == arts["fp32"].manifest["backend_details"]["opset"] and old > 17
    assert next(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) == 17
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16), dtype=np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for m in (model, converted)]
    np.testing.assert_allclose(run[0], run[1], atol=1e-5)
    with pytest.raises(EdgekitError, match=r"outside the target's range 11-13 .* converting it to 13 failed"):
        to_opset(model, 11, 13)  # ONNX's converter has no Relu 14 -> 13 adapter: a clear error, not a crash
