"""What `edgekit distill | qat | prune` are given on the command line, resolved into modules and data.

Models: `zoo:NAME` (a teacher resolves to the trained zoo model, a student to its untrained architecture),
`package.module:factory` (a function returning an nn.Module), or, for a frozen teacher only, a `.pt2`
program. `--teacher-weights/--student-weights FILE.pt` load a state dict into what the factory built.
Data: a `.npz` (x, optional y), a `.npy` (no labels) or `zoo:digits[:train|:test]`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.trainer import Data

DEFAULT_PAIR = "digits-cnn"


@dataclass
class Pair:
    teacher: nn.Module
    student: nn.Module | None
    teacher_spec: str
    student_spec: str | None
    zoo: Any = None  # the zoo.ZooPair when the default pair is used

    @property
    def uses_zoo(self) -> bool:
        """Whether a zoo model is involved, so zoo:digits is the natural default data."""
        return self.zoo is not None or any(s and s.startswith("zoo:") for s in (self.teacher_spec, self.student_spec))


class FrozenProgram(nn.Module):
    """A torch.export program used as a teacher. Programs are captured in eval behaviour and refuse
    `.train()`/`.eval()`; a frozen teacher needs neither, so the switch only records the flag."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.fx_program = program

    def train(self, mode: bool = True) -> FrozenProgram:
        self.training = mode
        return self

    def forward(self, x):
        return self.fx_program(x)


def _call_factory(spec: str) -> nn.Module:
    from edgekit.models.source import call_factory

    return call_factory(spec)


def load_teacher(spec: str) -> nn.Module:
    from edgekit.data import zoo

    if spec.startswith("zoo:"):
        name = spec.split(":", 1)[1]
        if name not in zoo.ZOO_MODELS:
            raise EdgekitError(f"unknown zoo teacher '{name}'; available: {', '.join(sorted(zoo.ZOO_MODELS))}")
        return zoo.ZOO_MODELS[name](progress=True)
    if spec.endswith(".pt2"):
        path = Path(spec)
        if not path.is_file():
            raise EdgekitError(f"teacher file not found: {path}")
        from edgekit.models.source import load_pt2  # safe loading, Q/DQ ops registered, torch's logs quiet

        return FrozenProgram(load_pt2(path).module())
    if ":" in spec:
        return _call_factory(spec)
    raise EdgekitError(f"cannot load teacher '{spec}': expected zoo:NAME, package.module:factory or a .pt2 file")


def load_student(spec: str) -> nn.Module:
    from edgekit.data import zoo

    if spec.startswith("zoo:"):
        name = spec.split(":", 1)[1]
        if name not in zoo.ZOO_ARCHITECTURES:
            raise EdgekitError(f"unknown zoo student '{name}'; available: {', '.join(sorted(zoo.ZOO_ARCHITECTURES))}")
        return zoo.ZOO_ARCHITECTURES[name]()
    if ":" in spec and not spec.endswith((".pt2", ".onnx", ".pt")):
        return _call_factory(spec)
    raise EdgekitError(f"cannot load student '{spec}': expected zoo:NAME or package.module:factory (a model to "
                       "train needs its Python definition; add --student-weights FILE.pt to start from weights)")


def load_weights(model: nn.Module, path: str | Path, role: str) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{role} weights not found: {path}")
    from edgekit.models.checkpoint import load_torch_file

    state = load_torch_file(path, f"{role} weights")
    if isinstance(state, dict) and "student" in state and "fingerprint" in state:  # a trainer checkpoint
        state = state["student"]
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise EdgekitError(f"{path} does not fit the {role}: {str(exc).splitlines()[0]}") from None
    return model


def resolve_pair(teacher: str | None, student: str | None, pair: str | None, *, need_student: bool = True,
                 teacher_weights: str | None = None, student_weights: str | None = None, seed: int = 0) -> Pair:
    """The teacher/student the user named, or a zoo pair (default digits-cnn) for what they left out.

    The student is built right after seeding torch with `seed`, so its initial weights are a function of
    the seed: the distilled run and the student-alone baseline start from the same ones, run after run.
    """
    from edgekit.data import zoo

    zoo_pair = None
    if pair is not None or teacher is None or (need_student and student is None):
        name = pair or DEFAULT_PAIR
        if name not in zoo.ZOO_PAIRS:
            raise EdgekitError(f"unknown zoo pair '{name}'; available: {', '.join(sorted(zoo.ZOO_PAIRS))}")
        zoo_pair = zoo.ZOO_PAIRS[name]
    t_spec = teacher or f"zoo:{zoo_pair.teacher}"
    s_spec = (student or f"zoo:{zoo_pair.student}") if need_student else student
    t_model = load_teacher(t_spec)
    if teacher_weights:
        load_weights(t_model, teacher_weights, "teacher")
    torch.manual_seed(seed)
    s_model = load_student(s_spec) if s_spec else None
    if s_model is not None and student_weights:
        load_weights(s_model, student_weights, "student")
    return Pair(t_model.eval(), s_model, t_spec, s_spec, zoo_pair)


def load_datasets(data: str | None, eval_data: str | None, zoo_default: bool) -> tuple[Data, Data, str]:
    """(train, eval, note). Without --eval, zoo data evaluates on the held-out split; other data on itself."""
    from edgekit.data.calibration import load_data

    if data is None:
        if not zoo_default:
            raise EdgekitError("user models need training data: pass --data DATA (.npz with x and y, or .npy)")
        data = "zoo:digits"
    train_set = load_data(data, max_samples=None)
    train = Data(train_set.x, train_set.y, train_set.source)
    note = ""
    if eval_data is None and train_set.source == "zoo:digits:train":
        eval_data = "zoo:digits:test"
    if eval_data is None:
        note = "no --eval given: accuracies are measured on the training data"
        return train, train, note
    eval_set = load_data(eval_data, max_samples=None)
    if tuple(eval_set.x.shape[1:]) != tuple(train_set.x.shape[1:]):
        raise EdgekitError(f"evaluation data '{eval_set.source}' has samples of shape {tuple(eval_set.x.shape[1:])}"
                           f" but the training data's are {tuple(train_set.x.shape[1:])}")
    return train, Data(eval_set.x, eval_set.y, eval_set.source), note


def prepare_out_dir(out: str | Path, resume: bool, force: bool) -> Path:
    """The output folder; refuses to silently start over on top of an unfinished run's checkpoint."""
    path = Path(out)
    ckpt = path / "checkpoint.pt"
    if path.exists() and not path.is_dir():
        raise EdgekitError(f"--out {path} exists and is not a folder")
    from edgekit.artifact import check_writable

    check_writable(path / "checkpoint.pt")  # before any training: the folder or its parent must take files
    if ckpt.is_file() and not (resume or force):
        raise EdgekitError(f"{path} already holds a training checkpoint: pass --resume to continue it, or --force "
                           "to start over")
    if ckpt.is_file() and force and not resume:
        ckpt.unlink()
    return path


def save_student(model: nn.Module, out: Path, name: str, sample_shape: tuple[int, ...]) -> dict[str, str]:
    """`NAME.pt` (state dict) and `NAME.pt2` (torch.export, dynamic batch) for `edgekit export`."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    state_path = out / f"{name}.pt"
    _atomic(lambda p: torch.save(model.state_dict(), p), state_path)
    files["state_dict"] = str(state_path)
    example = torch.zeros((2, *sample_shape))
    model.eval()
    try:
        from edgekit.train.qat import export_program

        program = export_program(model, example)
        _atomic(lambda p: torch.export.save(program, str(p)), out / f"{name}.pt2")
        files["program"] = str(out / f"{name}.pt2")
    except EdgekitError as exc:
        files["program_error"] = str(exc)
    return files


def _atomic(write, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # torch.export.save wants .pt2
    write(tmp)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], *paths: str | Path | None) -> None:
    text = json.dumps(report, indent=1, default=_jsonable)
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        _atomic(lambda t, text=text: Path(t).write_text(text), p)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
