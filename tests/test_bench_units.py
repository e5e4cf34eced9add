"""The pieces of the benchmark harness that need no worker: statistics, the Pareto front, settings
validation, device names, the CLI's stated defaults, record validation and flattening."""

from __future__ import annotations

import pytest

from edgekit.bench import harness, jobs, records, report
from edgekit.bench.devices import LocalDevice, make_device
from edgekit.errors import EdgekitError


def test_latency_summary_in_ms():
    s = records.latency_summary([1_000_000 * v for v in range(1, 101)])  # 1..100 ms
    assert s["min"] == 1.0 and s["max"] == 100.0 and s["mean"] == 50.5
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(29.011, abs=1e-3)  # sample standard deviation
    assert records.latency_summary([2_000_000])["std"] == 0.0


def test_pareto_front_keeps_undominated_points_by_latency():
    pts = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.85), (3.0, 0.95), (0.5, 0.80), (4.0, 0.99)]
    assert report.pareto_front(pts) == [4, 0, 1, 5]
    assert report.pareto_front([]) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"iters": 0}, "iters (--iters) must be >= 1"),
    ({"min_seconds": -1}, "min_seconds (--min-seconds) must be >= 0"),
    ({"min_seconds": 10, "max_seconds": 5}, "max_seconds (5) must be >= min_seconds (10)"),
    ({"rounds": 0}, "rounds (--rounds) must be >= 1"),
    ({"batches": (0,)}, "batch sizes (batches=, --batch) must be positive"),
    ({"threads": -2}, "threads (--threads) must be >= 0"),
    ({"eval_samples": 0}, "eval_samples (--eval-samples) must be >= 1"),
])
def test_bad_settings_fail_before_any_work(kwargs, message):
    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        records.BenchConfig(**kwargs)


def test_batches_are_parsed_sorted_and_deduplicated():
    assert jobs.parse_batches("8,1,8") == (8, 1, 8)
    assert records.BenchConfig(batches=(8, 1, 8)).batches == (1, 8)
    for bad in ("", "1,x", "0", "-4"):
        with pytest.raises(EdgekitError, match="malformed batch sizes"):
            jobs.parse_batches(bad)


def test_devices_by_name():
    assert isinstance(make_device("local"), LocalDevice)
    assert make_device("ssh:pi@raspberrypi.local").host == "raspberrypi.local"  # made, not connected
    with pytest.raises(EdgekitError, match=r"device kind 'adb'"):
        make_device("adb:R58M123")
    with pytest.raises(EdgekitError, match="unknown device 'gpu0'"):
        make_device("gpu0")


def test_cli_errors_are_one_line_exit_2(cli, tmp_path):
    r = cli("bench", tmp_path, "--iters", "0")
    assert r.rc == 2 and r.err.strip() == "edgekit bench: error: iters (--iters) must be >= 1 (got 0)"
    r = cli("bench", tmp_path, "--device", "ssh://")
    assert r.rc == 2 and "malformed ssh device" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("bench", tmp_path, "--batch", "1,two")
    assert r.rc == 2 and "malformed batch sizes '1,two'" in r.err


def test_help_states_the_defaults(cli):
    r = cli("bench", "--help")
    assert r.rc == 0
    text = " ".join(r.out.split())
    assert "benchmark_model" in text and ">= 50 runs and >= 1.0 s" in text and "warm-up >= 1 run and >= 0.5 s" in text
    assert "(default 1)" in text  # threads, batch
    from edgekit.bench import records
    from edgekit.commands import bench as command

    assert (command._WARMUP, command._WARMUP_S, command._ITERS, command._MIN_S, command._MAX_S, command._ROUNDS,
            command._THREADS) == (records.DEFAULT_WARMUP, records.DEFAULT_WARMUP_SECONDS, records.DEFAULT_ITERS,
                                  records.DEFAULT_MIN_SECONDS, records.DEFAULT_MAX_SECONDS, records.DEFAULT_ROUNDS,
                                  records.DEFAULT_THREADS)


def test_record_validation_and_flattening():
    rec = records.empty_record()
    assert "failed record without 'error'" in records.validate_record(rec)
    rec.update(status="error", error="artifact x: corrupt")
    assert records.validate_record(rec) == []
    bad = dict(rec, status="ok", device={"host": "h", "cpu_model": "c", "cores": 2, "os": "Linux"},
               latency_ms=dict(mean=1.0, std=0.1, p50=1.0, p90=0.9, p99=1.2, min=0.8, max=1.3), runtime="ort",
               runtime_version="1", threads=1, batch=1, warmup=1, iters=5, throughput_per_s=1000.0,
               cold_start_ms=3.0, peak_rss_mb=2.0, model_bytes=10, accuracy=97.5, agreement=1.0, sqnr_db=None,
               target="t", precision="fp32", artifact="a")
    problems = records.validate_record(bad)
    assert any("not ordered" in p for p in problems) and any("'accuracy' must be a fraction" in p for p in problems)
    flat = records.flatten({"a": 1, "latency_ms": {"p50": 2.0}, "device": {"os": "x"}, "l": [1, 2]})
    assert flat == {"a": 1, "latency_ms_p50": 2.0, "device_os": "x", "l": "1;2"}


def test_no_artifacts_is_an_error():
    with pytest.raises(EdgekitError, match="no artifacts"):
        harness.run_bench([])
