"""`edgekit bench` end to end on the digits artifacts: table, JSON (checked field by field against the
record contract), CSV, Markdown and the Pareto plot; and a corrupt and an unloadable artifact beside good
ones. Timing settings are tiny: these tests check structure and relationships, never speed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edgekit.bench.records import CONTRACT_FIELDS, DEVICE_FIELDS, LATENCY_FIELDS, validate_record

FAST = ["--iters", "20", "--min-seconds", "0.2", "--warmup-seconds", "0.05", "--rounds", "2", "--no-progress"]


def _tflite_target():
    """(target, backend) for a TFLite int8 export when the tflite backend has landed and its runtime is here."""
    import importlib.util

    from edgekit.backends import registry
    from edgekit.targets import list_targets

    if "tflite" not in registry.backend_names() or not registry.runtime_installed("tflite"):
        return None
    if importlib.util.find_spec(registry.get_spec("tflite").exporter.split(":")[0]) is None:
        return None  # registered, but its module is not written yet
    for t in list_targets():
        if "tflite" in t.backends and "int8" in t.with_backend("tflite").precisions:
            return t.name
    return None


@pytest.fixture(scope="session")
def digits_artifacts(tmp_path_factory) -> dict[str, Path]:
    """The digits student as torch eager (the baseline), ONNX Runtime fp32 and int8, ORT mobile int8, and
    TFLite int8 when that backend is available."""
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("bench-digits")
    wanted = {"torch": ("host-torch-cpu", "fp32", None), "ort-fp32": ("x86-server-cpu", "fp32", None),
              "ort-int8": ("x86-server-cpu", "int8", None), "ortm-int8": ("android-ort-mobile", "int8", None)}
    tfl = _tflite_target()
    if tfl is not None:
        wanted["tflite-int8"] = (tfl, "int8", "tflite")
    out = {}
    with ExportPipeline("zoo:digits-student") as pipeline:
        for name, (target, precision, backend) in wanted.items():
            out[name] = pipeline.export(target, precision, out=root / name, backend=backend).path
    return out


def test_bench_digits_writes_table_json_csv_markdown_and_plot(cli, digits_artifacts, tmp_path):
    arts = digits_artifacts
    files = {k: tmp_path / f"bench.{k}" for k in ("json", "csv", "md", "png")}
    r = cli("bench", *arts.values(), "--batch", "1,4", "--eval", "zoo:digits:test", "--json", files["json"],
            "--csv", files["csv"], "--markdown", files["md"], "--plot", files["png"], *FAST)
    assert r.rc == 0, r.err

    # the terminal table: one row per artifact and batch size, speed-ups relative to torch eager
    lines = r.out.splitlines()
    header = next(line for line in lines if line.startswith("artifact"))
    for col in ("p50 ms", "p99 ms", "cold ms", "peak MB", "size KiB", "accuracy", "agreement", "SQNR dB"):
        assert col in header
    for name in arts:
        assert sum(line.startswith(name + " ") for line in lines) == 2, (name, r.out)
    assert "cpu" in lines[0].lower() or "cores" in lines[0]

    records = json.loads(files["json"].read_text())
    assert isinstance(records, list) and len(records) == 2 * len(arts)
    by = {(Path(rec["artifact"]).name, rec["batch"]): rec for rec in records}
    for rec in records:
        assert validate_record(rec) == [], (rec["artifact"], validate_record(rec))
        assert rec["status"] == "ok" and rec["error"] is None
        assert set(CONTRACT_FIELDS) <= set(rec)
        assert all(rec["device"][f] for f in DEVICE_FIELDS) and rec["device"]["cores"] >= 1
        assert set(LATENCY_FIELDS) | {"p95"} == set(rec["latency_ms"])
        assert rec["threads"] == 1 and rec["batch"] in (1, 4)
        assert rec["iters"] >= 20 and rec["warmup"] >= 1
        assert rec["throughput_per_s"] == pytest.approx(rec["batch"] * 1e3 / rec["latency_ms"]["mean"])
        assert rec["cold_start_ms"] >= rec["load_ms"] > 0
        assert rec["peak_rss_mb"] > 0
        manifest = json.loads((Path(rec["artifact"]) / "manifest.json").read_text())
        assert rec["target"] == manifest["target"] and rec["precision"] == manifest["precision"]
        assert rec["model_bytes"] == manifest["files"][manifest["model_file"]]["bytes"]
        assert rec["runtime_version"] and rec["runtime_versions"]["numpy"]
        assert 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["agreement"] <= 1.0
        assert rec["eval"]["data"] == "zoo:digits:test" and rec["eval"]["samples"] == 450
        # the same definition as the export check, on the same data, against the same torch model
        # (within a sample or two: bench runs 1 thread, the export check the runtime's default, and float
        # sums in another order may flip a borderline argmax)
        assert rec["agreement"] == pytest.approx(manifest["verification"]["agreement"], abs=0.005)
        assert rec["accuracy"] == pytest.approx(manifest["verification"]["accuracy"], abs=0.005)
    torch1 = by[("torch", 1)]
    assert torch1["runtime"] == "torch" and torch1["agreement"] == 1.0 and torch1["sqnr_db"] is None
    assert by[("ort-fp32", 1)]["sqnr_db"] > 60
    assert by[("ort-int8", 1)]["agreement"] >= 0.9 and by[("ort-int8", 1)]["sqnr_db"] < 60
    assert by[("ort-fp32", 1)]["runtime"] == "onnxruntime"

    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    assert {"latency_ms_p50", "latency_ms_p99", "device_cpu_model", "peak_rss_mb", "agreement"} <= set(rows[0])
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files["md"].read_text()
    assert md.startswith("| artifact") and "1.00x" in md  # the torch baseline against itself


def _corrupt(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    model = dest / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return dest


def _unloadable(src: Path, dest: Path) -> Path:
    """Files that match their (rewritten) manifest but that the runtime cannot parse: fails in the worker."""
    import shutil

    from edgekit.artifact import write_manifest

    shutil.copytree(src, dest)
    (dest / "model.onnx").write_bytes(b"this is not an ONNX model")
    write_manifest(dest, json.loads((dest / "manifest.json").read_text()))
    return dest


def test_corrupt_and_unloadable_artifacts_fail_alone(cli, digits_artifacts, tmp_path):
    good = digits_artifacts["ort-int8"]
    corrupt = _corrupt(good, tmp_path / "corrupt")
    unloadable = _unloadable(good, tmp_path / "unloadable")
    out = tmp_path / "r.json"
    r = cli("bench", corrupt, good, unloadable, tmp_path / "missing", "--json", out, *FAST)
    assert r.rc == 2
    err = r.err.strip().splitlines()
    assert any(str(corrupt) in line and "sha256" in line for line in err)
    assert any(str(unloadable) in line and "cannot load" in line for line in err)
    assert any("missing" in line and "not a folder" in line for line in err)
    assert err[-1].startswith("edgekit bench: error: 3 of 4 artifact(s) could not be measured")
    # the good one was still measured and reported, in the table and in the JSON
    assert any(line.startswith("ort-int8 ") and "ERROR" not in line for line in r.out.splitlines())
    records = json.loads(out.read_text())
    status = {Path(rec["artifact"]).name: rec["status"] for rec in records}
    assert status == {"ort-int8": "ok", "corrupt": "error", "unloadable": "error", "missing": "error"}
    assert all(validate_record(rec) == [] for rec in records)
