from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def test_console_script_help_is_fast_and_lists_commands():
    exe = Path(sys.executable).with_name("edgekit")
    start = time.perf_counter()
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env={**os.environ})
    elapsed = time.perf_counter() - start
    assert r.returncode == 0
    for command in ("export", "targets", "quickstart"):
        assert command in r.stdout
    # --help imports no runtime: it must not take the seconds torch or onnxruntime would
    assert elapsed < 5, elapsed


def test_help_imports_no_heavy_runtime():
    code = ("import sys; from edgekit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'tensorflow', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_export_prints_summary_and_progress(cli, tmp_path):
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "fp32", "--out", tmp_path / "a")
    assert r.rc == 0, r.err
    assert "agreement  1.0000" in r.out and "accuracy" in r.out
    assert "checking the artifact against FP32" in r.err
