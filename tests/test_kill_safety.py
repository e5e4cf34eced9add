"""Nothing left behind by a kill: real `python -m edgekit export` processes, killed mid-way.

The export (the digits student to pixel-8 int8: ONNX, calibration, onnx2tf, LiteRT check) runs in a child
process whose TMPDIR is the test's own folder, so its run root (`edgekit-run-PID-*`) is visible there; the
test waits until the run root holds files and the staging folder `.OUT.partial-PID` exists, then kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXPORT = ["export", "zoo:digits-student", "--target", "pixel-8", "--precision", "int8"]


def _start(out: Path, tmpbase: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpbase)}
    return subprocess.Popen([sys.executable, "-m", "edgekit", *EXPORT, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_mid_export(proc: subprocess.Popen, out: Path, tmpbase: Path, timeout: float = 240) -> tuple[Path, Path]:
    """Poll until the child's run root holds files and its staging folder exists (the backend is working)."""
    partial = out.parent / f".{out.name}.partial-{proc.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roots = list(tmpbase.glob(f"edgekit-run-{proc.pid}-*"))
        if roots and partial.is_dir() and any(roots[0].iterdir()):
            return roots[0], partial
        if proc.poll() is not None:
            pytest.fail(f"the export ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the export never reached its staging step")


def test_sigkill_mid_export_then_rerun_cleans_up_and_works(tmp_path, cli, monkeypatch):
    import tempfile

    tmpbase = tmp_path / "tmp"
    tmpbase.mkdir()
    out = tmp_path / "art"
    proc = _start(out, tmpbase)
    root, partial = _wait_mid_export(proc, out, tmpbase)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert root.is_dir() and partial.is_dir() and not out.exists()  # what a kill leaves: nothing can clean it

    # the rerun, to the same --out, with the same temp dir (fp32 for ONNX Runtime: the same staging, faster)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpbase))
    r = cli("export", "zoo:digits-student", "--target", "x86-server-cpu", "--precision", "fp32", "--out", out)
    assert r.rc == 0, r.err
    removed = [line for line in r.err.splitlines() if "leftover(s) of killed runs" in line]
    assert len(removed) == 1 and str(root) in removed[0] and str(partial) in removed[0], r.err
    assert not root.exists() and not partial.exists()
    assert (out / "manifest.json").is_file() and (out / "model.onnx").is_file()
    # nothing of either run remains: no run root, no staging folder, only the artifact
    assert list(tmpbase.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "tmp"]


def test_sigterm_mid_export_removes_everything_and_exits_143(tmp_path):
    tmpbase = tmp_path / "tmp"
    tmpbase.mkdir()
    out = tmp_path / "art"
    proc = _start(out, tmpbase)
    root, partial = _wait_mid_export(proc, out, tmpbase)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err.strip().splitlines()[-1]
    assert not root.exists() and not partial.exists() and not out.exists()
    assert list(tmpbase.iterdir()) == []


def test_live_runs_are_left_alone(tmp_path):
    """Only leftovers whose PID is dead are removed: a running edgekit's root and staging stay."""
    from edgekit.common.rundir import sweep

    live = tmp_path / f"edgekit-run-{os.getppid()}-abcd"
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    dead = tmp_path / f"edgekit-run-{dead_pid}-abcd"
    staged_live = tmp_path / f".art.partial-{os.getppid()}"
    staged_dead = tmp_path / f".art.partial-{dead_pid}"
    for d in (live, dead, staged_live, staged_dead):
        (d / "x").mkdir(parents=True)
    lines: list[str] = []
    removed = sweep(tmp_path, [tmp_path / "art"], lines.append)
    assert sorted(removed) == sorted([dead, staged_dead]) and len(lines) == 1
    assert live.is_dir() and staged_live.is_dir()
