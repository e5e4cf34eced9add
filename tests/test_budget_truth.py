"""Budgets that tell the truth (edgekit export --min-agreement / --min-sqnr): judged on data the ranges never
saw, with a confidence interval on every figure, refused when the check set cannot resolve them, and a miss
on the final check is exit 2 with nothing written unless --keep-best-effort."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import export_resdw_net, no_partial_left


@pytest.fixture(scope="module")
def small(tmp_path_factory):

    from edgekit.data import testmodels

    root = tmp_path_factory.mktemp("budget")
    export_resdw_net(root / "m.onnx", (8, 16))
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    np.save(root / "calib.npy", train.x[:64])
    np.save(root / "eval.npy", test.x[:120])
    np.save(root / "eval50.npy", test.x[:50])
    return root


def _export(cli, root, out, *extra, eval_file="eval.npy"):
    return cli("export", root / "m.onnx", "-t", "x86-server-cpu", "-p", "int8", "--calib", root / "calib.npy",
               "--eval", root / eval_file, "--out", out, "--no-budget-equalize", *extra)


def test_too_small_check_set_is_refused_before_any_work(cli, small, tmp_path):
    out = tmp_path / "a"
    r = _export(cli, small, out, "--min-agreement", "0.98", eval_file="eval50.npy")
    assert r.rc == 2 and not out.exists() and no_partial_left(tmp_path)
    # a 2-point budget on 50 samples: one flip is the whole budget
    assert "50 samples" in r.err and "at least 100" in r.err and len(r.err.strip().splitlines()) == 1


def test_missed_budget_exits_2_and_writes_nothing(cli, small, tmp_path):
    out = tmp_path / "miss"
    r = _export(cli, small, out, "--min-sqnr", "300", "--no-int16-rung")
    assert r.rc == 2, r.out
    assert "missed on the final check" in r.err and "--keep-best-effort" in r.err
    assert "95% CI" in r.err and not out.exists() and no_partial_left(tmp_path)


def test_keep_best_effort_writes_and_records_the_miss(cli, small, tmp_path):
    out = tmp_path / "best"
    r = _export(cli, small, out, "--min-sqnr", "300", "--no-int16-rung", "--keep-best-effort")
    assert r.rc == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["budget"]["status"] == "missed" and m["fallback"]["holds"] is False
    assert "budget     MISSED" in r.out and "95% CI" in r.out


def test_met_budget_promise_and_final_check_are_one_measurement(cli, small, tmp_path):
    out = tmp_path / "met"
    r = _export(cli, small, out, "--min-sqnr", "25")
    assert r.rc == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    v, fb = m["verification"], m["fallback"]
    assert m["budget"]["status"] == "met" and v["samples"] == 120 == fb["held_out_samples"]
    assert v["agreement"] == fb["result"]["agreement"] and abs(v["sqnr_db"] - fb["result"]["sqnr_db"]) < 0.01
    lo, hi = v["agreement_ci95"]
    assert lo <= v["agreement"] <= hi and hi - lo > 0
    assert "budget     MET" in r.out and "95% CI" in r.out


def test_budget_search_measures_the_int8_format_the_user_asked_for(cli, small, tmp_path):
    """--backend-option values reach the budgeted search: it measures int8 symmetric activations when the
    artifact will have them, so its promise is still the final check's figure."""
    import onnx

    out = tmp_path / "s8"
    r = _export(cli, small, out, "--min-sqnr", "25", "--backend-option", "activation_type=int8",
                "--backend-option", "activation_symmetric=true")
    assert r.rc == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    v, fb = m["verification"], m["fallback"]
    assert v["agreement"] == fb["result"]["agreement"] and abs(v["sqnr_db"] - fb["result"]["sqnr_db"]) < 0.01
    graph = onnx.load(str(out / m["model_file"])).graph
    zero_points = {i.name: i.data_type for i in graph.initializer if i.name.endswith("_zero_point")}
    activation_zps = [dt for name, dt in zero_points.items() if "input" in name or "output" in name]
    assert activation_zps and set(activation_zps) == {onnx.TensorProto.INT8}


def test_wilson_interval():
    from edgekit.common.metrics import wilson

    lo, hi = wilson(49, 50)  # 0.98 on 50 samples: cannot tell 0.98 from 0.90
    assert lo < 0.90 and hi > 0.99
    lo, hi = wilson(294, 300)
    assert 0.955 < lo < 0.98 < hi < 0.995
