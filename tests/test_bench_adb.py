"""The adb path: parsing real `benchmark_model` output (tests/data/benchmark_model, see its README for where
each file comes from) and the adb device's commands, run against a fake `adb` on PATH.

The fake adb records its arguments and keeps a pretend device filesystem in a folder (push copies there,
`shell sha256sum` hashes there, `shell rm -rf` removes there) and answers the benchmark_model command with
captured output. So these tests check edgekit's code around adb (command lines, the sha256 check, clean-up,
the record), not adb, a phone, or benchmark_model itself; the artifact's .tflite is placeholder bytes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from edgekit.bench import benchmark_model
from edgekit.errors import EdgekitError

DATA = Path(__file__).parent / "data" / "benchmark_model"
AM62 = DATA / "am62x_ssd_mobilenet_v2_cpu.txt"
RISCV = DATA / "qemuriscv64_mobilenet_v1_op_profiling.txt"
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
    if os.environ.get("FAKE_ADB_FULL") and cmd[1].endswith(".tflite"):
        sys.stderr.write("adb: error: failed to copy '%s' to '%s': remote No space left on device\n" % tuple(cmd[1:3]))
        sys.exit(1)
    dest = on_device(cmd[2])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    data = open(cmd[1], "rb").read()
    if os.environ.get("FAKE_ADB_CORRUPT") and cmd[1].endswith(".tflite"):
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
    tool = tmp_path / "android_aarch64_benchmark_model"
    tool.write_bytes(b"\x7fELF placeholder for the benchmark_model binary")

    class Fake:
        phone = root
        binary = tool

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
