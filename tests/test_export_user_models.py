"""Models the user brings as .onnx and .pt2 (not the zoo ones): 3x32x32 input, residual and depthwise layers."""

from __future__ import annotations

import json

import pytest

from tests.conftest import no_partial_left


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("which", ["small_onnx", "large_pt2"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_user_model_exports_meet_accuracy(cli, user_models, tmp_path, which, precision):
    model = getattr(user_models, which)
    out = tmp_path / f"{which}-{precision}"
    r = cli("export", model, "--target", "x86-server-cpu", "--precision", precision,
            "--calib", user_models.calib, "--eval", user_models.eval, "--out", out)
    assert r.rc == 0, r.err
    v = _manifest(out)["verification"]
    assert v["data"].endswith("eval.npz") and v["samples"] == 450
    assert v["agreement"] >= 0.99, v
    assert v["accuracy_drop"] <= 0.01, v
    assert _manifest(out)["model"]["input_shape"] == [1, 3, 32, 32]


def test_large_model_int8_is_at_most_30_percent_of_fp32(cli, user_models, tmp_path):
    assert user_models.large_params >= 1_000_000
    sizes = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        r = cli("export", user_models.large_pt2, "-t", "x86-server-cpu", "-p", precision,
                "--calib", user_models.calib, "--out", out)
        assert r.rc == 0, r.err
        sizes[precision] = (out / "model.onnx").stat().st_size
    assert sizes["int8"] <= 0.30 * sizes["fp32"], sizes
    assert no_partial_left(tmp_path)
