"""Budgeted fallback (edgekit export --min-agreement / --max-accuracy-drop) and the int8 techniques, on the
test-built depthwise-separable model where plain min-max PTQ agrees with FP32 on < 95% of its eval set."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from tests.conftest import no_partial_left


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    import torch

    from edgekit.data import testmodels

    root = tmp_path_factory.mktemp("sensitive")
    model = testmodels.sensitive_dwsep()
    path = root / "sensitive.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=True, external_data=False)
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    np.savez(root / "calib.npz", x=train.x[:300], y=train.y[:300])
    np.save(root / "calib_x.npy", train.x[:300])
    np.savez(root / "eval.npz", x=test.x, y=test.y)
    return root


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _export(cli, root, out, *extra, target="x86-server-cpu", calib="calib_x.npy"):
    return cli("export", root / "sensitive.onnx", "-t", target, "-p", "int8", "--calib", root / calib,
               "--eval", root / "eval.npz", "--out", out, *extra)


def test_plain_minmax_ptq_is_below_95_percent(cli, sensitive, tmp_path):
    r = _export(cli, sensitive, tmp_path / "plain")
    assert r.rc == 0, r.err
    m = _manifest(tmp_path / "plain")
    assert m["verification"]["agreement"] < 0.95
    # the x86 target pads the RGB stem to 4 channels for ONNX Runtime's int8 kernels (see test_graph_qat)
    [pad] = m["backend_details"]["quantization"]["padded_input_channels"]
    assert (pad["channels"], pad["padded_to"]) == (3, 4)


def test_budgeted_onnxruntime_export_reaches_98_percent(cli, sensitive, tmp_path):
    import onnx

    from edgekit.backends.onnxruntime import float_weights

    out = tmp_path / "budget"
    r = _export(cli, sensitive, out, "--min-agreement", "0.98")
    assert r.rc == 0, r.err
    m = _manifest(out)
    assert m["verification"]["agreement"] >= 0.98, m["verification"]
    fb = m["fallback"]
    assert fb["budget"] == {"min_agreement": 0.98}
    assert fb["full_int8"]["agreement"] < 0.98 <= fb["result"]["agreement"]
    # the cheapest fix first: equalisation keeps every layer int8 and meets the budget, so nothing is kept in float
    [tried] = fb["int8_techniques"]
    assert tried["technique"] == "equalize" and tried["applied"] and tried["agreement"] >= 0.98
    assert fb["int8_techniques_applied"] == ["equalize"] and fb["kept_layers"] == []
    assert m["backend_details"]["quantization"]["padded_input_channels"][0]["padded_to"] == 4  # budgeted path too
    assert fb["cost"]["macs_kept_fraction"] == 0 and fb["cost"]["speedup_vs_fp32"] > 1
    assert float_weights(onnx.load(str(out / "model.onnx"))) == []
    assert "tried equalize first" in r.out and "kept in fp32: none" in r.out


def test_budgeted_layer_fallback_keeps_few_layers(cli, sensitive, tmp_path):
    import onnx

    from edgekit.backends.onnxruntime import float_weights

    out = tmp_path / "layers"  # --no-budget-equalize --no-int16-rung: layers kept in float from the start
    r = _export(cli, sensitive, out, "--min-agreement", "0.98", "--no-budget-equalize", "--no-int16-rung")
    assert r.rc == 0, r.err
    m = _manifest(out)
    fb = m["fallback"]
    # the budget is judged on the --eval set, and the final check runs on the same data: the figures agree
    assert fb["int8_techniques"] == [] and fb["full_int8"]["agreement"] < 0.98 <= fb["result"]["agreement"]
    assert m["verification"]["agreement"] == fb["result"]["agreement"] and m["budget"]["status"] == "met"
    assert 1 <= len(fb["kept_layers"]) <= 3 and fb["kept_precision"] == "fp32"
    assert 0 < fb["cost"]["macs_kept_fraction"] < 0.25 and "budgeted" in fb["cost"]["latency_ms"]
    # what the manifest says is kept is what the graph holds: those layers have float weights, and so do the
    # int8 layers that feed them (their int8 weight values stored dequantized, so ORT runs its fast float conv)
    kept = m["backend_details"]["quantization"]["kept_layers"]
    feeding = kept.get("float_output_layers", {}).get("nodes", [])
    assert kept["nodes"] == fb["kept_layers"] and not set(feeding) & set(fb["kept_layers"])
    assert sorted(float_weights(onnx.load(str(out / "model.onnx")))) == sorted(fb["kept_layers"] + feeding)
    assert "kept in fp32" in r.out


def test_budgeted_tensorrt_qdq_graph_keeps_layers_in_fp16(cli, sensitive, tmp_path):
    out = tmp_path / "trt"
    r = _export(cli, sensitive, out, "--max-accuracy-drop", "0.5", "--no-budget-equalize", target="nvidia-t4-server",
                calib="calib.npz")
    assert r.rc == 0, r.err
    m = _manifest(out)
    fb = m["fallback"]
    assert fb["kept_precision"] == "fp16" and fb["kept_layers"]
    q = m["backend_details"]["quantization"]
    assert q["mixed"]["fp16_nodes"] == fb["kept_layers"]
    assert m["backend_details"]["qdq_check"]["zero_points"] == "all 0 (int8)"
    assert m["verification"]["accuracy_drop"] <= 0.005 + 1e-9 and m["verification"]["agreement"] >= 0.98


def test_techniques_are_switchable_and_reported(cli, sensitive, tmp_path):
    out = tmp_path / "cle"
    r = _export(cli, sensitive, out, "--equalize", "--bias-correction")
    assert r.rc == 0, r.err
    steps = _manifest(out)["ptq_techniques"]
    assert [s["technique"] for s in steps] == ["none (plain PTQ)", "equalize", "bias-correction"]
    assert steps[1]["pairs"] and steps[1]["agreement"] > steps[0]["agreement"]
    assert steps[1]["sqnr_change_db"] > 10
    assert _manifest(out)["verification"]["agreement"] >= 0.98
    assert "technique  equalize" in r.out


def test_budget_does_not_equalise_over_an_applied_later_technique(cli, sensitive, tmp_path):
    # bias correction comes after equalisation in ptq_improve.ORDER: equalising on top of it would rescale the
    # weights its correction was measured on, so the budget skips equalisation and says why
    out = tmp_path / "bc"
    r = _export(cli, sensitive, out, "--bias-correction", "--min-agreement", "0.99", "--no-int16-rung",
                "--keep-best-effort")
    assert r.rc == 0, r.err
    fb = _manifest(out)["fallback"]
    [tried] = fb["int8_techniques"]
    assert tried["technique"] == "equalize" and not tried["applied"] and "bias-correction" in tried["skipped"]
    assert fb["int8_techniques_applied"] == [] and "budget     equalize not tried" in r.out


@pytest.mark.parametrize("args, message", [
    (("--min-agreement", "1.5"), "--min-agreement is a fraction"),
    (("--max-accuracy-drop", "1"), "needs labels"),
    (("--min-agreement", "0.98", "-b", "tflite", "-t", "raspberry-pi-5"), "no per-layer float fallback"),
])
def test_bad_budget_is_a_one_line_error_and_writes_nothing(cli, sensitive, tmp_path, args, message):
    r = cli("export", sensitive / "sensitive.onnx", "-t", "x86-server-cpu", "-p", "int8", "--calib",
            sensitive / "calib_x.npy", "--out", tmp_path / "bad", *args)
    errors = [ln for ln in r.err.splitlines() if "error:" in ln]
    assert r.rc == 2 and len(errors) == 1 and message in errors[0], r.err
    assert not (tmp_path / "bad").exists() and no_partial_left(tmp_path)


def test_budget_needs_int8(cli, sensitive, tmp_path):
    r = cli("export", sensitive / "sensitive.onnx", "-t", "x86-server-cpu", "-p", "fp32", "--min-agreement",
            "0.98", "--out", tmp_path / "x")
    assert r.rc == 2 and "--precision int8" in r.err and not (tmp_path / "x").exists()
