"""The adb path: parsing real `benchmark_model` and `onnxruntime_perf_test` output (tests/data/benchmark_model
and tests/data/onnxruntime_perf_test, see their READMEs for where each file comes from) and the adb device's
commands, run against a fake `adb` on PATH.

The fake adb records its arguments and keeps a pretend device filesystem in a folder (push copies there,
`shell sha256sum` hashes there, `shell rm -rf` removes there) and answers the benchmark_model command with
captured output (and the onnxruntime_perf_test command likewise). So these tests check edgekit's code around
adb (command lines, the sha256 check, clean-up, the record), not adb, a phone, or the tools themselves; the
TFLite artifact's .tflite is placeholder bytes, the ORT-mobile artifact a real export of the digits student.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from edgekit.bench import benchmark_model, perf_test
from edgekit.errors import EdgekitError

DATA = Path(__file__).parent / "data" / "benchmark_model"
AM62 = DATA / "am62x_ssd_mobilenet_v2_cpu.txt"
RISCV = DATA / "qemuriscv64_mobilenet_v1_op_profiling.txt"
PERF = Path(__file__).parent / "data" / "onnxruntime_perf_test"
SME2 = PERF / "android_c1pro_sme2_stats.txt"
ACL = PERF / "android_acl_squeezenet_no_stats.txt"
FAST = ["--iters", "10", "--min-seconds", "0.5", "--warmup-seconds", "0.1", "--no-progress"]


def test_parse_recent_output_with_percentiles():
    out = benchmark_model.parse(AM62.read_text())
    assert (out.init_us, out.first_inference_us, out.inference_avg_us) == (5579.0, 1357602.0, 1.24027e6)
    assert out.run.count == 50 and out.warmup is not None and out.warmup.count == 1
    lat = out.latency_ms()
    assert lat["mean"] == pytest.approx(1240.27) and lat["std"] == pytest.approx(2.565)
    assert lat["min"] == pytest.approx(1238.588) and lat["max"] == pytest.approx(1252.566)
    assert lat["p50"] == pytest.approx(1239.807) and lat["p90"] is None and lat["p99"] is None
    assert out.extra_percentiles_ms() == {"p5": pytest.approx(1238.753), "p95": pytest.approx(1247.415)}
    assert out.memory_mb() == (109.832, pytest.approx(out.memory_mb()[1]))
    assert "APPROXIMATE" in out.memory_mb()[1]
    assert out.session_init_ms == pytest.approx(5.579) and out.model_size_mb == pytest.approx(67.3128)


def test_parse_older_output_ignores_op_profiling_counts():
    out = benchmark_model.parse(RISCV.read_text())
    # the run line, not the op-profiling "Timings (microseconds): count=50 ... avg=2.9499e+06" after it
    assert out.run.count == 50 and out.run.get("avg") == 2.95034e6 and out.run.get("max") == 3189954
    assert out.warmup is not None and out.warmup.all_same and out.warmup.get("avg") == 3512391
    assert out.latency_ms()["p50"] is None  # this build prints no percentiles
    assert (out.memory_init_mb, out.memory_overall_mb) == (4.21094, 46.0859) and out.threads == 4


def test_parse_failure_quotes_the_tool():
    with pytest.raises(EdgekitError, match=r"benchmark_model printed no timings.*Failed to load model"):
        benchmark_model.parse("STARTING!\nERROR: Could not open 'x.tflite'.\nFailed to load model x.tflite\n")


FAKE_ADB = r'''
import hashlib, json, os, shlex, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
root = os.environ["FAKE_ADB_ROOT"]
def on_device(p):
    return os.path.join(root, p.lstrip("/"))
assert args[0] == "-s", args
cmd = args[2:]
if cmd == ["get-state"]:
    print("device")
elif cmd[0] == "push":
    if os.environ.get("FAKE_ADB_FULL") and cmd[1].endswith((".tflite", ".ort")):
        sys.stderr.write("adb: error: failed to copy '%s' to '%s': remote No space left on device\n" % tuple(cmd[1:3]))
        sys.exit(1)
    dest = on_device(cmd[2])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    data = open(cmd[1], "rb").read()
    if os.environ.get("FAKE_ADB_CORRUPT") and cmd[1].endswith((".tflite", ".ort")):
        data = data[:-1] + bytes([data[-1] ^ 0xFF])
    open(dest, "wb").write(data)
    print("%s: 1 file pushed, 0 skipped." % cmd[1])
elif cmd[0] == "shell":
    line = cmd[1]
    words = shlex.split(line)
    if line.startswith("echo model="):
        print("model=Pixel 8\nmanufacturer=Google\nrelease=14\nsdk=34\nabi=arm64-v8a\nsoc=Tensor G3\ncores=9\n"
              "mem_kb=7812500\nhardware=")
    elif words[0] == "mkdir":
        os.makedirs(on_device(words[-1]), exist_ok=True)
    elif words[0] == "rm":
        shutil.rmtree(on_device(words[-1]), ignore_errors=True)
    elif words[0] == "chmod":
        pass
    elif words[0] == "sha256sum":
        print(hashlib.sha256(open(on_device(words[1]), "rb").read()).hexdigest() + "  " + words[1])
    elif words[0].endswith("benchmark_model"):
        assert os.path.isfile(on_device(words[0])), "benchmark_model was not pushed"
        assert os.path.isfile(on_device(words[1].split("=", 1)[1])), "the model was not pushed"
        sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
    elif words[0].endswith("onnxruntime_perf_test"):
        assert os.path.isfile(on_device(words[0])), "onnxruntime_perf_test was not pushed"
        assert os.path.isfile(on_device(words[-1])), "the model was not pushed"
        sys.stdout.write(open(os.environ["FAKE_ADB_PERF_OUTPUT"]).read())
    else:
        sys.stderr.write("fake adb: unexpected shell command %r\n" % line)
        sys.exit(2)
else:
    sys.stderr.write("fake adb: unexpected command %r\n" % cmd)
    sys.exit(2)
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(f"#!{sys.executable}\n{FAKE_ADB}")
    adb.chmod(0o755)
    root = tmp_path / "phone"
    root.mkdir()
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(AM62))
    monkeypatch.setenv("FAKE_ADB_PERF_OUTPUT", str(SME2))
    tool = tmp_path / "android_aarch64_benchmark_model"
    tool.write_bytes(b"\x7fELF placeholder for the benchmark_model binary")
    ort_tool = tmp_path / "onnxruntime_perf_test"
    ort_tool.write_bytes(b"\x7fELF placeholder for the onnxruntime_perf_test binary")

    class Fake:
        phone = root
        binary = tool
        perf_test = ort_tool

        @staticmethod
        def calls() -> list[list[str]]:
            return [json.loads(line) for line in log.read_text().splitlines()]

        @staticmethod
        def left_on_phone() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    return Fake


def _tflite_artifact(root: Path, name: str = "tfl-int8", model_file: str = "model.tflite") -> Path:
    from edgekit.artifact import write_manifest

    art = root / name
    art.mkdir()
    (art / model_file).write_bytes(b"TFL3" + bytes(range(256)) * 8)
    write_manifest(art, {"target": "pixel-8", "backend": "tflite", "precision": "int8", "model_file": model_file,
                         "inputs": [{"name": "x", "shape": [1, 8, 8, 1], "dtype": "int8", "layout": "NHWC"}],
                         "outputs": [{"name": "y", "shape": [1, 10], "dtype": "int8"}],
                         "model": {"source": "zoo:digits-student", "input_shape": [1, 1, 8, 8]}})
    return art


def test_adb_bench_pushes_runs_parses_and_cleans_up(cli, fake_adb, tmp_path):
    art = _tflite_artifact(tmp_path)
    out = tmp_path / "r.json"
    r = cli("bench", art, "--device", "adb://R58M123", "--benchmark-model", fake_adb.binary, "--json", out, *FAST)
    assert r.rc == 0, r.err
    (rec,) = json.loads(out.read_text())
    assert rec["status"] == "ok" and rec["device"]["kind"] == "adb" and rec["device"]["name"] == "adb://R58M123"
    assert rec["device"]["host"] == "Google Pixel 8" and rec["device"]["os"] == "Android 14 (SDK 34)"
    assert rec["device"]["cpu_model"] == "Tensor G3" and rec["device"]["cores"] == 9
    assert rec["latency_ms"]["mean"] == pytest.approx(1240.27) and rec["latency_ms"]["p50"] == pytest.approx(1239.807)
    assert rec["iters"] == 50 and rec["warmup"] == 1 and rec["batch"] == 1
    assert rec["cold_start_ms"] == pytest.approx(5.579 + 1357.602) and rec["load_ms"] == pytest.approx(5.579)
    assert rec["peak_rss_mb"] == pytest.approx(109.832) and rec["memory_approximate"] is True
    assert "APPROXIMATE" in rec["peak_rss_method"] and rec["agreement"] is None
    assert rec["model_bytes"] == (art / "model.tflite").stat().st_size
    assert "tfl-int8" in r.out and "adb://R58M123" in r.out

    calls = fake_adb.calls()
    assert all(c[:2] == ["-s", "R58M123"] for c in calls)
    pushes = [c for c in calls if c[2] == "push"]
    assert [Path(p[3]).name for p in pushes] == ["android_aarch64_benchmark_model", "model.tflite"]
    remote_dir = str(Path(pushes[0][4]).parent)
    assert remote_dir.startswith("/data/local/tmp/edgekit-bench-")
    run = next(c[3] for c in calls if c[2] == "shell" and "benchmark_model --graph" in c[3])
    assert run.split() == [f"{remote_dir}/android_aarch64_benchmark_model", f"--graph={remote_dir}/model.tflite",
                           "--num_threads=1", "--warmup_runs=1", "--warmup_min_secs=0.1", "--num_runs=10",
                           "--min_secs=0.5", "--max_secs=150.0"]
    assert calls[-1][2:] == ["shell", f"rm -rf {remote_dir}"]
    assert fake_adb.left_on_phone() == []


def test_adb_corrupted_push_is_caught_and_nothing_is_left(cli, fake_adb, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_CORRUPT", "1")
    art = _tflite_artifact(tmp_path)
    r = cli("bench", art, "--device", "adb://R58M123", "--benchmark-model", fake_adb.binary, *FAST)
    assert r.rc == 2
    assert any("arrived with sha256" in line and "corrupted" in line for line in r.err.splitlines()), r.err
    assert not any(c[2] == "shell" and "--graph" in c[3] for c in fake_adb.calls())  # never measured
    assert fake_adb.left_on_phone() == []


def test_adb_out_of_disk_is_reported_as_such(cli, fake_adb, tmp_path, monkeypatch):
    """Simulated: the fake adb answers the model's push the way adb does when the phone is full."""
    monkeypatch.setenv("FAKE_ADB_FULL", "1")
    r = cli("bench", _tflite_artifact(tmp_path), "--device", "adb://R58M123", "--benchmark-model", fake_adb.binary,
            *FAST)
    assert r.rc == 2 and "out of disk space in /data/local/tmp" in r.err
    assert fake_adb.left_on_phone() == []


def test_adb_refuses_non_tflite_artifacts_alone(cli, fake_adb, tmp_path):
    good = _tflite_artifact(tmp_path)
    onnx = _tflite_artifact(tmp_path, "ort", model_file="model.onnx")
    r = cli("bench", good, onnx, "--device", "adb://R58M123", "--benchmark-model", fake_adb.binary, *FAST)
    assert r.rc == 2 and "adb devices measure .tflite models" in r.err
    assert any(line.startswith("tfl-int8 ") and "ERROR" not in line for line in r.out.splitlines())


def test_adb_needs_a_benchmark_model_binary(cli, tmp_path):
    r = cli("bench", tmp_path, "--device", "adb://R58M123")
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and "--benchmark-model PATH" in r.err
    r = cli("bench", tmp_path, "--device", "adb://R58M123", "--benchmark-model", tmp_path / "nope")
    assert r.rc == 2 and "not found" in r.err


# -- ORT mobile: onnxruntime_perf_test ------------------------------------------------------------------------

def test_parse_perf_test_with_statistics():
    out = perf_test.parse(SME2.read_text())
    assert out.average_ms == pytest.approx(98.961997) and out.requests == 5
    assert out.session_creation_ms == pytest.approx(217.932) and out.first_inference_ms == 196.0
    assert out.per_second == pytest.approx(10.104) and out.cpu_percent == 11.0
    assert out.peak_working_set_bytes == 271122432
    lat = out.latency_ms()
    assert lat["min"] == pytest.approx(95.8204) and lat["max"] == pytest.approx(101.519)
    assert lat["p50"] == pytest.approx(99.5086) and lat["p90"] == pytest.approx(101.519)
    assert lat["p99"] == pytest.approx(101.519) and lat["std"] is None and lat["mean"] == pytest.approx(98.961997)
    assert out.extra_percentiles_ms() == {"p95": pytest.approx(101.519), "p999": pytest.approx(101.519)}
    peak, method = out.memory_mb()
    assert peak == pytest.approx(271122432 / 2**20) and "APPROXIMATE" in method


def test_parse_perf_test_without_statistics_older_build():
    out = perf_test.parse(ACL.read_text())
    # "Average inference time cost:" (no "total"), no first-inference, throughput or -s lines
    assert out.average_ms == pytest.approx(144.871) and out.requests == 10
    assert out.session_creation_ms == pytest.approx(127.918) and out.first_inference_ms is None
    assert out.per_second is None and out.stats_ms == {} and out.cpu_percent == 68.0
    assert out.latency_ms() == {"mean": pytest.approx(144.871), "std": None, "p50": None, "p90": None,
                                "p99": None, "min": None, "max": None}
    assert out.memory_mb()[0] == pytest.approx(158171136 / 2**20)


def test_parse_perf_test_failure_quotes_the_tool():
    with pytest.raises(EdgekitError, match=r"onnxruntime_perf_test printed no timings.*Load model from"):
        perf_test.parse("Setting intra_op_num_threads to 1\nLoad model from /x/model.ort failed: "
                        "Invalid model\n")


@pytest.fixture(scope="module")
def ortm_artifact(tmp_path_factory) -> Path:
    """The digits student exported for android-ort-mobile fp32 (model.ort + required_operators.config; ~8 s)."""
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("adb-ortm")
    with ExportPipeline("zoo:digits-student") as pipeline:
        return pipeline.export("android-ort-mobile", "fp32", out=root / "ortm-fp32").path


def test_adb_bench_ort_mobile_with_perf_test(cli, fake_adb, ortm_artifact, tmp_path):
    tfl = _tflite_artifact(tmp_path)
    out = tmp_path / "r.json"
    r = cli("bench", ortm_artifact, tfl, "--device", "adb://R58M123", "--perf-test", fake_adb.perf_test,
            "--benchmark-model", fake_adb.binary, "--threads", "2", "--json", out, *FAST)
    assert r.rc == 0, r.err
    ortm, tflite = json.loads(out.read_text())
    assert ortm["status"] == "ok" and ortm["backend"] == "ort-mobile" and ortm["device"]["kind"] == "adb"
    assert ortm["runtime"] == "onnxruntime onnxruntime_perf_test" and ortm["batch"] == 1
    assert ortm["iters"] == 5 and ortm["warmup"] == 1
    lat = ortm["latency_ms"]
    assert lat["mean"] == pytest.approx(98.961997) and lat["p50"] == pytest.approx(99.5086)
    assert lat["p90"] == pytest.approx(101.519) and lat["min"] == pytest.approx(95.8204) and lat["std"] is None
    assert ortm["latency_extra_ms"]["p999"] == pytest.approx(101.519)
    assert ortm["load_ms"] == pytest.approx(217.932) and ortm["cold_start_ms"] == pytest.approx(217.932 + 196)
    assert ortm["throughput_per_s"] == pytest.approx(1e3 / 98.961997)
    assert ortm["peak_rss_mb"] == pytest.approx(271122432 / 2**20) and ortm["memory_approximate"] is True
    assert "APPROXIMATE" in ortm["peak_rss_method"] and ortm["agreement"] is None
    assert ortm["model_bytes"] == (ortm_artifact / "model.ort").stat().st_size
    assert tflite["status"] == "ok" and tflite["runtime"] == "tflite benchmark_model"
    assert "ortm-fp32" in r.out and "tfl-int8" in r.out

    calls = fake_adb.calls()
    pushes = [Path(c[3]).name for c in calls if c[2] == "push"]
    assert pushes == ["onnxruntime_perf_test", "model.ort", "android_aarch64_benchmark_model", "model.tflite"]
    remote_dir = str(Path(next(c[4] for c in calls if c[2] == "push")).parent)
    run = next(c[3] for c in calls if c[2] == "shell" and "onnxruntime_perf_test -e" in c[3])
    assert run.split() == [f"{remote_dir}/onnxruntime_perf_test", "-e", "cpu", "-m", "times", "-r", "10", "-x", "2",
                           "-I", "-s", f"{remote_dir}/model.ort"]
    assert calls[-1][2:] == ["shell", f"rm -rf {remote_dir}"]
    assert fake_adb.left_on_phone() == []


def test_adb_ort_mobile_older_perf_test_without_statistics(cli, fake_adb, ortm_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_PERF_OUTPUT", str(ACL))
    out = tmp_path / "r.json"
    r = cli("bench", ortm_artifact, "--device", "adb://R58M123", "--perf-test", fake_adb.perf_test, "--json", out,
            *FAST)
    assert r.rc == 0, r.err
    (rec,) = json.loads(out.read_text())
    assert rec["latency_ms"]["mean"] == pytest.approx(144.871) and rec["latency_ms"]["p50"] is None
    assert rec["cold_start_ms"] is None and rec["load_ms"] == pytest.approx(127.918)
    assert "no -s statistics" in rec["latency_note"]
    assert [Path(c[3]).name for c in fake_adb.calls() if c[2] == "push"] == ["onnxruntime_perf_test", "model.ort"]
    assert fake_adb.left_on_phone() == []


def test_adb_corrupted_ort_push_is_caught(cli, fake_adb, ortm_artifact, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_CORRUPT", "1")
    r = cli("bench", ortm_artifact, "--device", "adb://R58M123", "--perf-test", fake_adb.perf_test, *FAST)
    assert r.rc == 2 and "arrived with sha256" in r.err
    assert not any(c[2] == "shell" and "onnxruntime_perf_test -e" in c[3] for c in fake_adb.calls())
    assert fake_adb.left_on_phone() == []


def test_adb_ort_artifact_needs_perf_test(cli, fake_adb, ortm_artifact, tmp_path):
    """Only benchmark_model given: the TFLite artifact is measured, the .ort one is one error line naming
    --perf-test, and its model is never pushed."""
    r = cli("bench", _tflite_artifact(tmp_path), ortm_artifact, "--device", "adb://R58M123", "--benchmark-model",
            fake_adb.binary, *FAST)
    assert r.rc == 2
    errors = [line for line in r.err.splitlines() if line.startswith("edgekit: bench: ") and "ortm-fp32: error" in line]
    assert len(errors) == 1 and "onnxruntime_perf_test" in errors[0] and "--perf-test PATH" in errors[0]
    assert any(line.startswith("tfl-int8 ") and "ERROR" not in line for line in r.out.splitlines())
    assert [Path(c[3]).name for c in fake_adb.calls() if c[2] == "push"] == ["android_aarch64_benchmark_model",
                                                                             "model.tflite"]
    assert fake_adb.left_on_phone() == []


def test_adb_missing_perf_test_binary(cli, tmp_path):
    r = cli("bench", tmp_path, "--device", "adb://R58M123", "--perf-test", tmp_path / "nope")
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1
    assert "onnxruntime_perf_test binary" in r.err and "not found" in r.err
    r = cli("bench", tmp_path, "--device", "adb://R58M123")
    assert "--perf-test PATH" in r.err and "--benchmark-model PATH" in r.err


def test_adb_refuses_a_backend_neither_tool_takes(cli, fake_adb, tmp_path):
    from edgekit.artifact import write_manifest

    art = tmp_path / "ort-fp32"
    art.mkdir()
    (art / "model.onnx").write_bytes(b"placeholder onnx")
    write_manifest(art, {"target": "x86-server-cpu", "backend": "onnxruntime", "precision": "fp32",
                         "model_file": "model.onnx",
                         "inputs": [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}],
                         "outputs": [{"name": "y", "shape": ["batch", 10], "dtype": "float32"}],
                         "model": {"source": "zoo:digits"}})
    r = cli("bench", art, "--device", "adb://R58M123", "--perf-test", fake_adb.perf_test, "--benchmark-model",
            fake_adb.binary, *FAST)
    assert r.rc == 2
    (line,) = [line for line in r.err.splitlines() if line.startswith("edgekit: bench: ") and "ort-fp32: error" in line]
    assert "'onnxruntime' artifact (model.onnx)" in line
    assert ".tflite models with benchmark_model (--benchmark-model" in line
    assert ".ort models with onnxruntime_perf_test (--perf-test" in line
    assert not [c for c in fake_adb.calls() if c[2] == "push"]  # nothing pushed for it
    assert fake_adb.left_on_phone() == []


def test_named_adb_device_takes_perf_test_from_the_devices_file(cli, fake_adb, ortm_artifact, tmp_path,
                                                               monkeypatch):
    devices = tmp_path / "devices.toml"
    devices.write_text(f'[devices.pixel]\nkind = "adb"\nserial = "R58M123"\nperf_test = "{fake_adb.perf_test}"\n')
    monkeypatch.setenv("EDGEKIT_DEVICES", str(devices))
    r = cli("bench", ortm_artifact, "--device", "pixel", *FAST)
    assert r.rc == 0, r.err
    assert "pixel" in r.out and fake_adb.left_on_phone() == []
