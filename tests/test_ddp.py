"""`edgekit distill` under `torchrun --nproc_per_node 2`: DistributedDataParallel with gloo on CPU, no code
change, one report and checkpoint written by rank 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekit.data import zoo


def _torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "ddpmodels.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def teacher():
            torch.manual_seed(1)
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

        def student():
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    """))
    train, test = zoo.digits_split("train"), zoo.digits_split("test")
    np.savez(root / "train.npz", x=train.x[:256], y=train.y[:256])
    np.savez(root / "test.npz", x=test.x[:64], y=test.y[:64])
    return root


def test_two_process_torchrun_ddp_on_cpu(workdir):
    out = workdir / "out"
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "edgekit", "distill",
           "--teacher", "ddpmodels:teacher", "--student", "ddpmodels:student",
           "--data", "train.npz", "--eval", "test.npz", "--epochs", "2", "--batch-size", "32",
           "--feature", "0=0", "--temperature", "learnable", "--no-progress",
           "--out", str(out), "--report", str(workdir / "report.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["world_size"] == 2
    assert len(report["history"]) == 2 and report["history"][-1]["eval_accuracy"] is not None
    assert (out / "checkpoint.pt").is_file() and (out / "student.pt").is_file()
    assert proc.stdout.count("retention") == 1  # only rank 0 prints the summary
