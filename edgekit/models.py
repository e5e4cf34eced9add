"""Load the model a user brings: an nn.Module from Python, or on the CLI a .onnx file, a .pt2 file
(torch.export), `package.module:factory` returning an nn.Module, or `zoo:NAME` for the embedded default.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, MissingTorchError


@dataclass
class SourceModel:
    """The FP32 model everything is checked against. `reference` runs it on a float32 NCHW batch."""

    kind: str  # "torch" | "exported-program" | "onnx"
    name: str
    spec: str
    input_shape: tuple[int, ...]
    module: Any = None  # torch.nn.Module (kind torch)
    exported: Any = None  # torch.export.ExportedProgram (kind exported-program)
    onnx_path: Path | None = None  # kind onnx

    def torch_callable(self):
        if self.kind == "torch":
            return self.module
        if self.kind == "exported-program":
            if self.module is None:
                self.module = self.exported.module()
            return self.module
        return None


def require_torch(what: str):
    """The torch module, or a one-line error naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise MissingTorchError(what) from None
    return torch


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise EdgekitError(
            f"malformed input shape '{text}' (input_shape=, --input-shape): expected positive integers joined by "
            "'x', e.g. 1x3x224x224"
        )
    return dims


def _import_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise EdgekitError(f"model '{spec}' is not of the form package.module:factory")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise EdgekitError(f"cannot import module '{module_name}' for model '{spec}': {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise EdgekitError(f"module '{module_name}' has no attribute '{attr}' (model '{spec}')") from None


def call_factory(spec: str):
    """The nn.Module that `package.module:factory` returns, or an error saying what went wrong."""
    torch = require_torch(f"model '{spec}'")

    factory = _import_factory(spec)
    if not callable(factory):
        raise EdgekitError(f"'{spec}' is not callable; it must be a function returning a torch.nn.Module")
    try:
        module = factory()
    except Exception as exc:
        raise EdgekitError(f"factory '{spec}' raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(f"factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _from_factory(spec: str, input_shape: tuple[int, ...] | None) -> SourceModel:
    module = call_factory(spec)
    if input_shape is None:
        raise EdgekitError(f"model '{spec}' needs an input shape: input_shape=(1, 3, 224, 224) (--input-shape "
                           "1x3x224x224 on the command line)")
    # named after the model, not the factory: two `make` factories of different models must not collide
    return SourceModel("torch", type(module).__name__, spec, input_shape, module=module.eval())


def _from_zoo(spec: str) -> SourceModel:
    require_torch(f"model '{spec}'")
    from edgekit.data import zoo

    name = spec.split(":", 1)[1]
    if name not in zoo.ZOO_MODELS:
        raise EdgekitError(f"unknown zoo model '{name}'; available: {', '.join(sorted(zoo.ZOO_MODELS))}")
    module = zoo.ZOO_MODELS[name]()
    return SourceModel("torch", name, spec, zoo.INPUT_SHAPE, module=module)


def _from_pt2(path: Path, input_shape: tuple[int, ...] | None) -> SourceModel:
    require_torch(f"model {path}")
    # a QAT program holds quantized_decomposed Q/DQ ops, registered only by importing their module
    with contextlib.suppress(ImportError):
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    from edgekit.safe_load import load_exported_program

    ep = load_exported_program(path)  # refuses archives whose pickles could run code
    if input_shape is None:
        args = ep.example_inputs[0] if ep.example_inputs else ()
        if len(args) != 1 or not hasattr(args[0], "shape"):
            raise EdgekitError(f"{path}: cannot read one example input from the program; give its input shape "
                               "(input_shape=, --input-shape)")
        input_shape = tuple(int(d) for d in args[0].shape)
    return SourceModel("exported-program", path.stem, str(path), input_shape, exported=ep)


def _from_onnx(path: Path, input_shape: tuple[int, ...] | None) -> SourceModel:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{path} is not a valid ONNX model: {first}") from None
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1:
        raise EdgekitError(f"{path}: edgekit exports models with one input; this one has {len(graph_inputs)}")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if input_shape is None:
        if any(d is None for d in declared[1:]):
            name = graph_inputs[0].name
            raise EdgekitError(f"{path}: input '{name}' has symbolic dims {declared}; give its input shape "
                               "(input_shape=, --input-shape)")
        input_shape = (1, *(int(d) for d in declared[1:]))
    elif len(input_shape) != len(declared) or any(
        d is not None and d != s for d, s in zip(declared[1:], input_shape[1:], strict=False)
    ):
        raise EdgekitError(f"input shape {input_shape} does not match {path}'s input of shape {declared}")
    return SourceModel("onnx", path.stem, str(path), input_shape, onnx_path=path)


def load_model(spec: Any, input_shape: tuple[int, ...] | str | None = None) -> SourceModel:
    """Resolve what the user named into a SourceModel; every failure is an EdgekitError naming the spec."""
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    try:
        import torch

        if isinstance(spec, torch.nn.Module):
            if input_shape is None:
                raise EdgekitError("an nn.Module needs its input shape: pass input_shape=(1, 3, 224, 224), or "
                                   "in-memory calib= data to take it from")
            return SourceModel("torch", type(spec).__name__, type(spec).__name__, input_shape, module=spec.eval())
    except ImportError:  # torch is an optional extra: without it, no object can be an nn.Module
        pass
    if isinstance(spec, SourceModel):
        return spec
    spec = str(spec)
    if spec.startswith("zoo:"):
        return _from_zoo(spec)
    suffix = Path(spec).suffix.lower()
    if suffix in (".onnx", ".pt2"):
        path = Path(spec)
        if not path.is_file():
            raise EdgekitError(f"model file not found: {path}")
        return _from_onnx(path, input_shape) if suffix == ".onnx" else _from_pt2(path, input_shape)
    if ":" in spec:
        return _from_factory(spec, input_shape)
    if Path(spec).exists():
        raise EdgekitError(f"cannot load model '{spec}': only .onnx and .pt2 files are supported")
    raise EdgekitError(
        f"cannot load model '{spec}': expected a .onnx or .pt2 file, package.module:factory, or zoo:NAME"
    )
