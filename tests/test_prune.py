"""Structured channel pruning: a smaller dense model (fewer parameters and MACs), recovered by distillation
fine-tuning to within a point of the unpruned teacher; coupled layers (residuals, depthwise) stay consistent."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit.data import testmodels, zoo
from edgekit.errors import EdgekitError
from edgekit.train.distill import count_macs, count_params
from edgekit.train.prune import PruneConfig, prune_channels

FINETUNE_EPOCHS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prune_30_percent_of_teacher_channels_then_finetune(cli, tmp_path):
    """Done-when: pruning 30% of the teacher's conv channels gives fewer parameters and MACs and, after
    fine-tuning, accuracy within 1 point of the teacher."""
    report_path = tmp_path / "prune.json"
    r = cli("prune", "--ratio", "0.3", "--epochs", FINETUNE_EPOCHS, "--no-progress", "--out", tmp_path / "p",
            "--report", report_path)
    assert r.rc == 0, r.err
    report = json.loads(report_path.read_text())
    p = report["pruning"]
    print(f"\npruned {p['channels_before']} -> {p['channels_after']} channels, params {p['params_before']} -> "
          f"{p['params_after']}, MACs {p['macs_before']} -> {p['macs_after']}; accuracy teacher "
          f"{report['teacher_accuracy']:.4f}, pruned {report['pruned_accuracy_before_finetune']:.4f}, "
          f"fine-tuned {report['student_accuracy']:.4f}")
    assert p["channels_removed_fraction"] == pytest.approx(0.3, abs=0.02)
    assert p["params_after"] < p["params_before"] and p["macs_after"] < p["macs_before"]
    assert report["student_params"] == p["params_after"] and report["teacher_params"] == p["params_before"]
    assert report["teacher_accuracy"] - report["student_accuracy"] <= 0.01
    assert {"retention", "cka", "teacher_macs", "student_macs"} <= set(report)
    assert (tmp_path / "p" / "pruned.pt2").is_file()

    # the pruned model is a plain dense model edgekit exports like any other
    out = tmp_path / "artifact"
    r = cli("export", tmp_path / "p" / "pruned.pt2", "--target", "x86-server-cpu", "--precision", "fp32",
            "--eval", "zoo:digits:test", "--out", out)
    assert r.rc == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["accuracy"] == pytest.approx(report["student_accuracy"], abs=1e-6)


def test_dependency_aware_pruning_of_residual_depthwise_model():
    """Residual additions and depthwise convolutions couple channels across layers: pruning keeps them
    aligned, and the model still runs and is smaller."""
    torch.manual_seed(0)
    model = testmodels.small_resdw().eval()
    example = torch.randn(2, 3, 32, 32)
    result = prune_channels(model, example, PruneConfig(ratio=0.25))
    pruned = result.model
    assert pruned(example).shape == (2, 10)
    assert count_params(pruned) < count_params(model) and result.macs_after < result.macs_before
    assert count_macs(model, (3, 32, 32)) == result.macs_before  # the original is untouched
    for module in pruned.modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels
    assert result.summary()["channels_after"] < result.summary()["channels_before"]


def test_prune_config_and_bad_input(cli, tmp_path):
    with pytest.raises(EdgekitError, match="within \\(0, 1\\)"):
        PruneConfig(ratio=1.2)
    with pytest.raises(EdgekitError, match="layers must be one of"):
        PruneConfig(layers="heads")
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    with pytest.raises(EdgekitError, match="no convolution layer to prune"):
        prune_channels(mlp, torch.randn(2, 1, 16, 16))
    with pytest.raises(EdgekitError, match="no layer named 'nope'"):
        prune_channels(zoo.teacher_untrained(), torch.randn(2, 1, 16, 16), PruneConfig(ignored=("nope",)))
    r = cli("prune", "--ratio", "1.5", "--no-progress", "--out", tmp_path / "x")
    assert r.rc == 2 and "pruning ratio" in r.err and len(r.err.strip().splitlines()) == 1
