"""Every figure says where it was measured and on what: a TensorRT-target artifact benched here is a stand-in
(record and table say so), `recommend` refuses such numbers for a GPU target unless --allow-proxy, and the bench
table and `recommend` compute speed-ups against the same FP32 baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.bench import baseline, report
from edgekit.bench.harness import run_bench
from edgekit.bench.records import BenchConfig, validate_record
from edgekit.errors import EdgekitError
from edgekit.recommend import judge, recommend
from edgekit.targets import load_target

FAST = BenchConfig(iters=10, min_seconds=0.05, warmup_seconds=0.01, rounds=2)


@pytest.fixture(scope="module")
def benched(tmp_path_factory) -> list[dict]:
    """The digits student for jetson-orin-nano (TensorRT int8), x86-server-cpu fp32/int8 and torch eager,
    benched here on the CPU with the digits test split."""
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("provenance")
    wanted = {"jetson-int8": ("jetson-orin-nano", "int8"), "jetson-fp32": ("jetson-orin-nano", "fp32"),
              "cpu-fp32": ("x86-server-cpu", "fp32"), "cpu-int8": ("x86-server-cpu", "int8"),
              "torch": ("host-torch-cpu", "fp32")}
    with ExportPipeline("zoo:digits-student") as pipeline:
        paths = [pipeline.export(t, p, out=root / name).path for name, (t, p) in wanted.items()]
    result = run_bench(paths, FAST, eval_data="zoo:digits:test")
    assert result.ok, result.failures
    return result.records


def _by_name(records: list[dict]) -> dict[str, dict]:
    return {Path(r["artifact"]).name: r for r in records}


def test_tensorrt_artifact_benched_here_is_a_stand_in_in_record_and_table(benched):
    recs = _by_name(benched)
    trt = recs["jetson-int8"]
    assert validate_record(trt) == []
    assert trt["executed_on"] == "ORT CPU x86-64"
    assert trt["stand_in_for"] == "TensorRT"
    assert trt["measured_on"]["device_class"] == "cpu" and trt["measured_on"]["host"]
    assert trt["eval_data"] == {"source": "zoo:digits:test", "samples": 450, "labels": True,
                                "calibration_data": False}
    cpu = recs["cpu-int8"]
    assert cpu["stand_in_for"] is None and cpu["executed_on"] == "ORT CPU x86-64"
    assert recs["torch"]["executed_on"] == "torch eager CPU x86-64"

    text = report.table(benched)
    row = next(line for line in text.splitlines() if line.startswith("jetson-int8"))
    assert row.startswith("jetson-int8*") and "ORT CPU x86-64 (stand-in for TensorRT)" in row
    assert not next(line for line in text.splitlines() if line.startswith("cpu-int8")).startswith("cpu-int8*")
    assert report.STAND_IN_NOTE in text
    header = next(line for line in text.splitlines() if line.startswith("artifact"))
    for col in ("ran on", "p95 ms", "runs", "speed-up vs fp32"):
        assert col in header
    assert "the same target's fp32 artifact" in text
    assert "450 samples of zoo:digits:test" in text


def test_recommend_refuses_stand_in_numbers_for_a_gpu_target_unless_allowed(benched, cli, tmp_path):
    jetson = load_target("jetson-orin-nano")
    with pytest.raises(EdgekitError) as err:
        recommend(jetson, results=benched)
    msg = str(err.value)
    assert "\n" not in msg and "--allow-proxy" in msg and "not a gpu" in msg

    rec = recommend(jetson, results=benched, allow_proxy=True)
    assert rec.judgement.proxy and {a for a, _ in rec.judgement.proxy} >= {str(Path(r["artifact"])) for r in benched
                                                                            if r["target"] == "jetson-orin-nano"}
    assert rec.path[len(rec.tree.path)].startswith("WARNING:") and "--allow-proxy" in rec.path[len(rec.tree.path)]

    results = tmp_path / "results.json"
    results.write_text(json.dumps(benched))
    r = cli("recommend", "--target", "jetson-orin-nano", "--results", results)
    assert r.rc == 2 and "--allow-proxy" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("recommend", "--target", "jetson-orin-nano", "--results", results, "--allow-proxy")
    assert r.rc == 0, r.err
    assert r.out.splitlines()[1].startswith("WARNING: ranked")

    # a CPU target measured on this CPU is not a proxy: no warning
    cpu = recommend(load_target("x86-server-cpu"), results=benched)
    assert not cpu.judgement.proxy and not any(step.startswith("WARNING") for step in cpu.path)


def test_bench_table_and_recommend_use_the_same_fp32_baseline(benched):
    for target in ("x86-server-cpu", "jetson-orin-nano"):
        j = judge(benched, load_target(target), allow_proxy=True)
        for v in j.verdicts:
            rec = next(r for r in benched if str(r["artifact"]) == v.artifact)
            assert v.baseline == str(baseline.pick(benched, rec)["artifact"])
            assert report.speedup(benched, rec) == pytest.approx(v.speedup)
    # an fp32 record is its own baseline; int8 is compared with its own target's fp32, not torch eager
    recs = _by_name(benched)
    assert baseline.pick(benched, recs["cpu-fp32"]) is recs["cpu-fp32"]
    assert baseline.pick(benched, recs["jetson-int8"]) is recs["jetson-fp32"]
    assert baseline.pick(benched, recs["torch"]) is recs["torch"]


def test_baseline_falls_back_to_torch_eager_then_none():
    lat = {"p50": 10.0, "mean": 10.0}
    eager = {"artifact": "t", "target": "host-torch-cpu", "backend": "torch-eager", "precision": "fp32",
             "latency_ms": lat, "batch": 1}
    int8 = {"artifact": "i", "target": "pixel-8", "backend": "tflite", "precision": "int8",
            "latency_ms": {"p50": 2.0}, "batch": 1}
    assert baseline.pick([eager, int8], int8) is eager and baseline.speedup([eager, int8], int8) == 5.0
    assert baseline.pick([int8], int8) is None and baseline.speedup([int8], int8) is None
    assert baseline.pick([dict(eager, batch=8), int8], int8) is None  # another batch size is no baseline


def test_profile_puts_ort_per_op_times_into_the_record(benched):
    from edgekit.bench.opprofile import profile

    paths = [r["artifact"] for r in benched if Path(r["artifact"]).name in ("cpu-int8", "cpu-fp32", "jetson-int8")]
    config = BenchConfig(iters=5, min_seconds=0.01, warmup_seconds=0.0, rounds=1, profile=True)
    recs = _by_name(run_bench(paths, config).records)
    for name in ("cpu-int8", "cpu-fp32", "jetson-int8"):
        prof = recs[name]["profile"]
        assert prof["available"] and prof["runs"] == 20 and prof["total_ms_per_run"] > 0, (name, prof)
        assert prof["top_ops"] and abs(sum(prof["time_share"].values()) - 1.0) < 1e-6
    assert recs["cpu-fp32"]["profile"]["time_share"]["int8"] == 0.0
    assert recs["cpu-int8"]["profile"]["time_share"]["int8"] > 0.2
    assert any(o["op"].startswith(("QLinear", "Conv")) for o in recs["cpu-int8"]["profile"]["top_ops"])
    lines = report.profile_lines(list(recs.values()))
    assert any(line.startswith("profile cpu-int8: ") and "int8 " in line for line in lines)
    # LiteRT's runner holds no ONNX Runtime session: the record says the profiler is not reachable
    litert = profile(object(), None, "ai_edge_litert")
    assert litert["available"] is False and "not available" in litert["reason"] and "Python" in litert["reason"]


def test_profile_splits_depthwise_from_other_convs_on_a_depthwise_separable_int8_model(tmp_path):
    """Why an int8 CNN is not faster: the profile names the depthwise share, read from the graph ORT ran."""
    import numpy as np

    from edgekit.data import testmodels
    from edgekit.export import ExportPipeline

    x = testmodels.digits_rgb("train").x[:64].astype(np.float32)
    with ExportPipeline("edgekit.data.testmodels:resdw_net", "1x3x32x32") as pipeline:
        paths = [pipeline.export("x86-server-cpu", p, calib=x, out=tmp_path / p).path for p in ("fp32", "int8")]
    config = BenchConfig(iters=5, min_seconds=0.01, warmup_seconds=0.0, rounds=1, profile=True)
    recs = {r["precision"]: r for r in run_bench(paths, config).records}
    for precision in ("fp32", "int8"):
        prof = recs[precision]["profile"]
        convs = prof["conv_share"]  # resdw_net: three depthwise 3x3 convs, the rest pointwise or full
        assert convs["depthwise"] > 0.0 and convs["other"] > 0.0, (precision, prof)
        assert convs["depthwise"] + convs["other"] <= 1.0 + 1e-9
    assert recs["int8"]["profile"]["layout_share"] > 0.0  # the NHWC rewrite of QLinearConv adds Transposes
    lines = report.profile_lines(list(recs.values()))
    assert any("depthwise" in line and line.startswith("profile ") for line in lines), lines


def test_export_records_its_peak_memory_and_checks_big_inputs_in_small_batches(benched):
    from edgekit.graph.onnx_export import batch_for

    for r in benched:
        res = json.loads((Path(r["artifact"]) / "manifest.json").read_text())["export_resources"]
        assert 50 < res["peak_rss_mb"] < 8000 and "VmHWM" in res["how"]
    assert batch_for((1, 16, 16)) == 64  # small inputs: the old batch of 64
    assert batch_for((3, 224, 224)) == 13  # ImageNet-size: activations of 64 at once took gigabytes
    assert batch_for((3, 2048, 2048)) == 1
