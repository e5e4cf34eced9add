"""edgekit diagnose: per-layer error, the ranking (its first layer is the best single fallback among the top
five, checked by building each fallback independently), and the ONNX Runtime vs TFLite comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_fallback import sensitive  # noqa: F401  (module-scoped fixture: the test-built model)


@pytest.fixture(scope="module")
def setup_and_report(sensitive):  # noqa: F811
    from edgekit.export import ExportPipeline
    from edgekit.quant import fallback
    from edgekit.data.calibration import load_data
    from edgekit.quant.diagnose import diagnose
    from edgekit.targets import load_target

    target = load_target("x86-server-cpu")
    pipeline = ExportPipeline(str(sensitive / "sensitive.onnx"))
    cset = load_data(str(sensitive / "calib_x.npy"))
    pipeline.onnx(target, None)
    cal, held = fallback.split_calibration(cset)
    setup = fallback.QuantSetup("onnxruntime", pipeline.prepared(), pipeline.ranges(cal, "minmax", {}),
                                dict(target.backend_options), held.x, pipeline.reference(held)[0],
                                workdir=pipeline.workdir)
    report = diagnose(setup)
    yield setup, report
    pipeline.close()


def test_per_layer_errors_cover_every_weighted_layer(setup_and_report):
    from edgekit.quant.fallback import layer_names

    setup, report = setup_and_report
    assert [e["layer"] for e in report["layers"]] == layer_names(setup.prepared)
    assert all(-1.0 <= e["cosine"] <= 1.0 for e in report["layers"])
    assert report["int8"]["agreement"] < 0.95
    # the trunk's plain convs quantize well; the imbalanced depthwise->pointwise tensors do not
    worst = min(report["layers"], key=lambda e: e["sqnr_db"])
    assert worst["sqnr_db"] < 10 < max(e["sqnr_db"] for e in report["layers"])


def test_first_ranked_layer_is_the_best_single_fallback_among_the_top_five(setup_and_report, tmp_path):
    from dataclasses import replace

    from edgekit.quant.fallback import build_and_evaluate

    setup, report = setup_and_report
    fresh = replace(setup, workdir=tmp_path)
    top5 = [r["layer"] for r in report["ranking"][:5]]
    base = build_and_evaluate(fresh, [], "base")["sqnr_db"]
    gains = {layer: build_and_evaluate(fresh, [layer], f"alone-{i}")["sqnr_db"] - base
             for i, layer in enumerate(top5)}
    assert max(gains, key=gains.get) == top5[0], gains
    assert gains[top5[0]] > 1.0


def test_diagnose_cli_prints_table_and_writes_json(cli, sensitive, tmp_path):  # noqa: F811
    out = tmp_path / "d.json"
    r = cli("diagnose", sensitive / "sensitive.onnx", "--calib", sensitive / "calib_x.npy", "--json", out)
    assert r.rc == 0, r.err
    data = json.loads(out.read_text())
    assert data["ranking"][0]["rank"] == 1 and data["ranking"][0]["layer"] in r.out
    assert "gain dB" in r.out


@pytest.mark.parametrize("args, message", [
    (("--top", "0"), "--top must be at least 1"),
    (("--json", "/no/such/dir/x.json"), "does not exist"),
    (("-t", "raspberry-pi-5", "-b", "tflite"), "--against"),
])
def test_diagnose_bad_input(cli, sensitive, tmp_path, args, message):  # noqa: F811
    r = cli("diagnose", sensitive / "sensitive.onnx", "--calib", sensitive / "calib_x.npy", *args)
    assert r.rc == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_cross_backend_onnxruntime_vs_tflite(cli, sensitive, tmp_path):  # noqa: F811
    ort_art, tfl_art = tmp_path / "ort", tmp_path / "tfl"
    for out, extra in ((ort_art, ()), (tfl_art, ("-b", "tflite", "-t", "raspberry-pi-5"))):
        args = ["export", sensitive / "sensitive.onnx", "-p", "int8", "--calib", sensitive / "calib_x.npy",
                "--calib-samples", "100", "--out", out, *extra]
        if not extra:
            args += ["-t", "x86-server-cpu"]
        r = cli(*args)
        assert r.rc == 0, r.err
    js = tmp_path / "cmp.json"
    r = cli("diagnose", ort_art, "--against", tfl_art, "--calib", sensitive / "calib_x.npy", "--samples", "16",
            "--json", js)
    assert r.rc == 0, r.err
    cmp = json.loads(js.read_text())
    assert len(cmp["layers"]) >= 6, cmp["unmatched_onnx_layers"]
    assert all(np.isfinite(row["sqnr_db"]) and row["shape"] for row in cmp["layers"])
    assert any(row["layout"] == "NHWC->NCHW" for row in cmp["layers"])
    assert "ONNX Runtime vs TFLite" in r.out
