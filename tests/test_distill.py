"""The distillation trainer and `edgekit distill`: determinism, checkpoint/resume, bad input, the zoo pair
(distilled student vs the same student alone), and attention distillation on the tiny ViT pair."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from edgekit.data import zoo
from edgekit.errors import EdgekitError
from edgekit.train.distill import DistillConfig, TrainConfig, Trainer, accuracy_on, linear_cka, stage_metrics
from edgekit.train.distill.trainer import Data, state_digest

EPOCHS = 15  # the Done-when run: the distilled zoo student against the same student trained alone


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return zoo.digits_split("train"), zoo.digits_split("test")


@pytest.fixture(scope="module")
def teacher():
    return zoo.digits_teacher()


def _small_train(digits, n=256):
    train, _ = digits
    return Data(train.x[:n], train.y[:n], "digits subset")


def test_training_is_deterministic_and_resume_matches(tmp_path, digits, teacher):
    """Two runs with one seed give identical weights; stopping after epoch 2 and resuming gives the weights
    of the uninterrupted 3-epoch run (data order per epoch, RNG state and optimizer in the checkpoint)."""
    data = _small_train(digits)
    loss = DistillConfig(alpha=0.7, temperature="learnable:3", features=["features.3=features.3"])

    def run(epochs, ckpt=None, resume=False):
        torch.manual_seed(0)
        student = zoo.student_untrained()
        cfg = TrainConfig(epochs=3, seed=5, progress=False, checkpoint=ckpt, resume=resume)
        trainer = Trainer(student, cfg, loss, teacher)
        if epochs < 3:  # simulate an interruption: stop after `epochs` by training a 3-epoch run partially
            trainer.epoch_hook = _stop_after(epochs)
        try:
            result = trainer.fit(data, data)
        except _Stop:
            result = None
        return student, result

    a, ra = run(3)
    b, _ = run(3)
    assert state_digest(a) == state_digest(b)
    ckpt = tmp_path / "ckpt.pt"
    run(2, ckpt)
    assert ckpt.is_file()
    c, rc = run(3, ckpt, resume=True)
    assert rc.resumed_from_epoch == 2
    assert state_digest(c) == state_digest(a)
    assert [h["epoch"] for h in rc.history] == [1, 2, 3]
    assert rc.history[-1]["loss"] == pytest.approx(ra.history[-1]["loss"], rel=1e-6)
    assert {"kd", "ce", "features", "eval_accuracy", "temperature"} <= set(ra.history[-1])

    # a checkpoint from other settings is refused, with what differs
    torch.manual_seed(0)
    other = Trainer(zoo.student_untrained(), TrainConfig(epochs=4, seed=5, progress=False, checkpoint=ckpt,
                                                         resume=True), loss, teacher)
    with pytest.raises(EdgekitError, match=r"epochs=3.*epochs=4"):
        other.fit(data, data)


class _Stop(Exception):
    pass


def _stop_after(n):
    def hook(epoch, _model):
        if epoch >= n:
            raise _Stop

    return hook


def test_bf16_autocast_runs_on_cpu(digits, teacher):
    student = zoo.student_untrained()
    result = Trainer(student, TrainConfig(epochs=1, amp="bf16", progress=False), DistillConfig(), teacher).fit(
        _small_train(digits, 128))
    assert np.isfinite(result.final["loss"])
    with pytest.raises(EdgekitError, match="needs a CUDA device"):
        TrainConfig(amp="fp16", device="cpu").amp_dtype(torch.device("cpu"))


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)  # rotation and scale invariant
    assert linear_cka(x, torch.randn(200, 8, generator=g)) < 0.2


def test_stage_metrics_on_zoo_pair(digits, teacher):
    _, test = digits
    m = stage_metrics(teacher, zoo.digits_student(), test, (1, 16, 16))
    assert m["teacher_params"] == zoo.count_params(teacher)
    assert m["student_params"] * 8 <= m["teacher_params"]
    assert m["teacher_macs"] > 10 * m["student_macs"] > 0
    assert 0 < m["cka"] <= 1 and m["retention"] == pytest.approx(m["student_accuracy"] / m["teacher_accuracy"])


def test_zoo_student_distilled_beats_student_alone(cli, tmp_path):
    """Done-when: on digits, a student with <= 1/8 of the teacher's parameters, distilled, retains >= 97% of
    the teacher's accuracy and beats the same student trained alone (same seed, same epochs)."""
    report_path = tmp_path / "distill.json"
    r = cli("distill", "--epochs", EPOCHS, "--baseline", "--no-progress", "--out", tmp_path / "run",
            "--report", report_path)
    assert r.rc == 0, r.err
    report = json.loads(report_path.read_text())
    for key in ("teacher_params", "student_params", "teacher_accuracy", "student_accuracy", "retention", "cka",
                "student_alone_accuracy"):
        assert report[key] is not None, key
    print(f"\nteacher {report['teacher_params']} params acc {report['teacher_accuracy']:.4f}; student "
          f"{report['student_params']} params distilled {report['student_accuracy']:.4f} alone "
          f"{report['student_alone_accuracy']:.4f}; retention {report['retention']:.4f} cka {report['cka']:.3f}")
    assert report["student_params"] * 8 <= report["teacher_params"]
    assert report["retention"] >= 0.97
    assert report["student_accuracy"] > report["student_alone_accuracy"]
    assert len(report["history"]) == EPOCHS and len(report["baseline_history"]) == EPOCHS
    assert (tmp_path / "run" / "student.pt").is_file() and (tmp_path / "run" / "student.pt2").is_file()
    assert "retention" in r.out and "alone" in r.out

    # the saved student loads back into its architecture with the same accuracy
    student = zoo.student_untrained()
    student.load_state_dict(torch.load(tmp_path / "run" / "student.pt", weights_only=True))
    assert accuracy_on(student, Data(*_xy("test"))) == pytest.approx(report["student_accuracy"])

    # the run's folder is protected: a second run needs --resume or --force
    again = cli("distill", "--epochs", 1, "--no-progress", "--out", tmp_path / "run")
    assert again.rc == 2 and "--resume" in again.err


def _xy(part):
    split = zoo.digits_split(part)
    return split.x, split.y


@pytest.fixture(scope="module")
def user_pair(tmp_path_factory):
    """A user's models (package.module:factory) and .npz data, with and without labels."""
    root = tmp_path_factory.mktemp("user-pair")
    (root / "mymodels.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def teacher():
            torch.manual_seed(1)
            return nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))

        def student():
            return nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 10))

        def student12():
            return nn.Sequential(nn.Flatten(), nn.Linear(256, 12))
    """))
    train, test = zoo.digits_split("train"), zoo.digits_split("test")
    np.savez(root / "train.npz", x=train.x[:200], y=train.y[:200])
    np.savez(root / "test.npz", x=test.x[:100], y=test.y[:100])
    np.savez(root / "unlabelled.npz", x=train.x[:200])
    return root


def test_user_models_and_npz_data(cli, user_pair, tmp_path):
    r = cli("distill", "--teacher", "mymodels:teacher", "--student", "mymodels:student", "--data",
            user_pair / "train.npz", "--eval", user_pair / "test.npz", "--epochs", 2, "--no-progress",
            "--feature", "2=2", "--out", tmp_path / "o", "--report", tmp_path / "r.json", cwd=user_pair)
    assert r.rc == 0, r.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["train_data"].endswith("train.npz") and report["eval_samples"] == 100
    assert report["loss"]["features"] == ["2=2"]
    # a teacher given as a torch.export program (.pt2): frozen as captured, CKA read from its graph
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    program = torch.export.export(net.eval(), (torch.zeros(2, 1, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "teacher.pt2"))
    r = cli("distill", "--teacher", tmp_path / "teacher.pt2", "--student", "mymodels:student", "--data",
            user_pair / "train.npz", "--epochs", 1, "--no-progress", "--out", tmp_path / "p",
            "--report", tmp_path / "p.json", cwd=user_pair)
    assert r.rc == 0, r.err
    assert 0 < json.loads((tmp_path / "p.json").read_text())["cka"] <= 1
    # pure distillation (alpha 1) needs no labels
    r = cli("distill", "--teacher", "mymodels:teacher", "--student", "mymodels:student", "--data",
            user_pair / "unlabelled.npz", "--alpha", "1", "--epochs", 1, "--no-progress", "--out", tmp_path / "u",
            cwd=user_pair)
    assert r.rc == 0, r.err


@pytest.mark.parametrize("args, message", [
    (["--student", "mymodels:student12"], "output sizes differ: teacher (10,), student (12,)"),
    (["--student", "mymodels:student", "--feature", "nope=1"], "student has no layer named 'nope'; available: 0, 1, 2"),
    (["--student", "mymodels:student", "--feature", "1=features.9"], "teacher has no layer named 'features.9'"),
    (["--student", "mymodels:student", "--data", "{root}/unlabelled.npz", "--alpha", "0.5"], "has no labels"),
    (["--student", "mymodels:student", "--data", "{root}/unlabelled.npz", "--alpha", "1", "--baseline"],
     "no labels"),
    (["--student", "mymodels:student", "--alpha", "2"], "alpha must be within [0, 1]"),
    (["--student", "zoo:nope"], "unknown zoo student 'nope'; available: digits-student"),
])
def test_bad_input_is_one_line_exit_2(cli, user_pair, tmp_path, args, message):
    args = [a.format(root=user_pair) for a in args]
    if "--data" not in args:
        args += ["--data", str(user_pair / "train.npz")]
    r = cli("distill", "--teacher", "mymodels:teacher", *args, "--epochs", 1, "--no-progress",
            "--out", tmp_path / "o", cwd=user_pair)
    assert r.rc == 2, r.err
    assert message in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err


def test_attention_and_hidden_distillation_on_tiny_vit(digits):
    """The ViT pair distils attention maps (head by head) and hidden states (through a learned projection):
    the terms fall as the student's maps approach the teacher's, and the student learns. (The teacher is
    trained for 8 epochs here to keep the test short; the zoo's digits_vit_teacher trains 30.)"""
    train, test = digits
    torch.manual_seed(0)
    vit_teacher = zoo.train_classifier(zoo.vit_teacher_untrained(), train, epochs=8, lr=2e-3, seed=0)
    pair = zoo.ZOO_PAIRS["digits-vit"]
    loss = DistillConfig(alpha=0.9, temperature=2, attention=pair.attention, hidden=pair.hidden)
    torch.manual_seed(0)
    student = zoo.vit_student_untrained()
    assert zoo.count_params(student) * 8 <= zoo.count_params(vit_teacher)
    trainer = Trainer(student, TrainConfig(epochs=6, lr=3e-3, progress=False), loss, vit_teacher)
    result = trainer.fit(train, test)
    first, last = result.history[0], result.history[-1]
    assert {"kd", "ce", "attention", "hidden"} <= set(last)
    assert last["attention"] < first["attention"] and last["hidden"] < first["hidden"]
    assert last["eval_accuracy"] > 0.5  # 10 classes: well above chance after 6 short epochs
    hidden_proj = trainer.loss.terms["hidden_0"].proj
    assert tuple(hidden_proj.weight.shape) == (zoo.VIT_TEACHER["dim"], zoo.VIT_STUDENT["dim"])
    assert isinstance(trainer.loss.terms["attention_0"], torch.nn.Module)
    assert not trainer.loss.terms["attention_0"].average_heads  # same head count: compared head by head
    m = stage_metrics(vit_teacher, student, test, (1, 16, 16))
    assert m["teacher_macs"] > m["student_macs"] > 0 and 0 < m["cka"] <= 1


def test_teacher_without_loss_needs_is_refused():
    with pytest.raises(EdgekitError, match="needs a teacher"):
        Trainer(zoo.student_untrained(), TrainConfig(progress=False), DistillConfig(alpha=0.5), None)
    with pytest.raises(EdgekitError, match="epochs must be at least 1"):
        TrainConfig(epochs=0)
