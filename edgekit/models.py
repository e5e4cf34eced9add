"""Load the model a user brings: an nn.Module from Python, or on the CLI a .onnx file, a .pt2 file
(torch.export), `package.module:factory` returning an nn.Module, `hf:DIR` (a local Hugging Face folder), or
`zoo:NAME` for the embedded default. Every model comes out with one InputSpec per named input.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, MissingTorchError, stage, user_code_error
from edgekit.common.io import InputSpec, OutputSpec, image_input


@dataclass
class SourceModel:
    """The FP32 model everything is checked against, with its named inputs (`inputs`) and, when known, what
    its outputs are (`outputs`: the metric each one is compared with). `input_shape` is the first input's
    example shape (the one input of an image model)."""

    kind: str  # "torch" | "exported-program" | "onnx"
    name: str
    spec: str
    input_shape: tuple[int, ...]
    module: Any = None  # torch.nn.Module (kind torch); called with the inputs positionally, in `inputs` order
    exported: Any = None  # torch.export.ExportedProgram (kind exported-program)
    onnx_path: Path | None = None  # kind onnx
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[OutputSpec] = field(default_factory=list)
    tokenizer: Any = None  # a Hugging Face tokenizer (hf: models): text data becomes named inputs
    task: str | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = [image_input(self.input_shape)]
        elif not self.input_shape:
            self.input_shape = self.inputs[0].concrete()

    @property
    def single_float(self) -> bool:
        """One float input: the classic image model, whose CLI and data (`x`) are what they always were."""
        return len(self.inputs) == 1 and self.inputs[0].is_float

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
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            raise EdgekitError(f"cannot import module '{module_name}' for model '{spec}': {exc}") from None
        raise user_code_error(f"loading model '{spec}': cannot import module '{module_name}'", exc,
                              "its import") from exc
    except BaseException as exc:  # the user's module may fail in any way while importing, sys.exit included
        raise user_code_error(f"loading model '{spec}': cannot import module '{module_name}'", exc,
                              "its import") from exc
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
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's code: any exception, SystemExit included, is theirs to fix
        raise user_code_error(f"loading model '{spec}'", exc, "the factory") from exc
    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(f"factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _from_factory(spec: str, input_shape: tuple[int, ...] | None,
                  input_spec: list[InputSpec] | None = None) -> SourceModel:
    module = call_factory(spec)
    if input_spec:
        return SourceModel("torch", spec.split(":")[-1], spec, (), module=module.eval(),
                           inputs=torch_vocab(module, list(input_spec)))
    if input_shape is None:
        raise EdgekitError(f"model '{spec}' needs an input shape: input_shape=(1, 3, 224, 224) (--input-shape "
                           "1x3x224x224 on the command line), or input_spec= (--input-spec "
                           "input_ids:int64:1x128,attention_mask:int64:1x128)")
    # named after the model, not the factory: two `make` factories of different models must not collide
    return SourceModel("torch", type(module).__name__, spec, input_shape, module=module.eval())


def torch_vocab(module: Any, specs: list[InputSpec]) -> list[InputSpec]:
    """Token-id inputs of a torch model take the vocabulary of its largest nn.Embedding (the word table), so
    random ids stay inside it and out-of-vocabulary data is refused."""
    import torch

    from edgekit.common.io import with_vocab

    if not any(s.kind == "token_ids" and s.vocab_size is None for s in specs):
        return specs
    sizes = [m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    return with_vocab(specs, max(sizes)) if sizes else specs


def _from_hf(spec: str, input_spec: list[InputSpec] | None, task: str | None) -> SourceModel:
    from edgekit.models import hf
    from edgekit.common.io import SEQUENCE

    folder = Path(spec.split(":", 1)[1]).expanduser()
    length = None
    if input_spec:
        length = max(s.max.get(SEQUENCE) or s.example.get(SEQUENCE) or s.concrete()[-1] for s in input_spec)
    loaded = hf.load(folder, task, length)
    if input_spec:
        names = [s.name for s in loaded["inputs"]]
        if sorted(s.name for s in input_spec) != sorted(names):
            raise EdgekitError(f"--input-spec names {', '.join(s.name for s in input_spec)} but {folder} takes "
                               f"{', '.join(names)}")
    return SourceModel("torch", folder.name or "hf-model", spec, (), module=loaded["module"],
                       inputs=loaded["inputs"], outputs=loaded["outputs"], tokenizer=loaded["tokenizer"],
                       task=loaded["task"])


def _from_zoo(spec: str) -> SourceModel:
    require_torch(f"model '{spec}'")
    from edgekit.data import zoo

    name = spec.split(":", 1)[1]
    if name not in zoo.ZOO_MODELS:
        raise EdgekitError(f"unknown zoo model '{name}'; available: {', '.join(sorted(zoo.ZOO_MODELS))}")
    module = zoo.ZOO_MODELS[name]()
    return SourceModel("torch", name, spec, zoo.INPUT_SHAPE, module=module)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch logs a full traceback (logging.ERROR) when a .pt2's contents do not deserialize, before raising;
    the raised exception becomes edgekit's one line, so those log records are dropped while loading."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def load_pt2(path: Path):
    """A torch.export program from a .pt2 file (refused first when its pickles could run code), or one
    EdgekitError naming the file; a corrupt or foreign file logs nothing."""
    # a QAT program holds quantized_decomposed Q/DQ ops, registered only by importing their module
    with contextlib.suppress(ImportError):
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    from edgekit.models.checkpoint import load_exported_program

    with _quiet_torch_logs():
        return load_exported_program(path)


def _from_pt2(path: Path, input_shape: tuple[int, ...] | None,
              input_spec: list[InputSpec] | None = None) -> SourceModel:
    require_torch(f"model {path}")
    ep = load_pt2(path)
    args = ep.example_inputs[0] if ep.example_inputs else ()
    if input_spec is None and len(args) > 1 and all(hasattr(a, "shape") for a in args):
        from edgekit.common.io import InputSpec as Spec

        names = [getattr(s.arg, "name", f"input{i}") for i, s in enumerate(ep.graph_signature.input_specs)
                 if s.kind.name == "USER_INPUT"] or [f"input{i}" for i in range(len(args))]
        input_spec = [Spec(n, str(a.dtype).replace("torch.", ""), tuple(int(d) for d in a.shape))
                      for n, a in zip(names, args, strict=False)]
    if input_spec:
        return SourceModel("exported-program", path.stem, str(path), (), exported=ep, inputs=input_spec)
    if input_shape is None:
        if len(args) != 1 or not hasattr(args[0], "shape"):
            raise EdgekitError(f"{path}: cannot read one example input from the program; give its input shape "
                               "(input_shape=, --input-shape)")
        input_shape = tuple(int(d) for d in args[0].shape)
    return SourceModel("exported-program", path.stem, str(path), input_shape, exported=ep)


def _from_onnx(path: Path, input_shape: tuple[int, ...] | None,
               input_spec: list[InputSpec] | None = None) -> SourceModel:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{path} is not a valid ONNX model: {first}") from None
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1 or input_spec:
        specs = _onnx_specs(model, graph_inputs, input_spec, path)
        return SourceModel("onnx", path.stem, str(path), (), onnx_path=path, inputs=specs)
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
    return SourceModel("onnx", path.stem, str(path), input_shape, onnx_path=path,
                       inputs=[image_input(input_shape, graph_inputs[0].name)])


_ONNX_ELEM = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}
DEFAULT_SEQUENCE = 128


def _vocab_sizes(model) -> dict[str, int]:
    """Input name -> rows of the embedding table a Gather reads with it (the vocabulary size)."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            out.setdefault(node.input[1], int(inits[node.input[0]].dims[0]))
    return out


def _onnx_specs(model, graph_inputs, given: list[InputSpec] | None, path: Path) -> list[InputSpec]:
    """InputSpecs read from a multi-input ONNX graph (dtypes, dims, the vocabulary behind token ids), or the
    user's --input-spec checked against it."""
    from edgekit.common.io import BATCH, SEQUENCE, kind_for

    vocab = _vocab_sizes(model)
    names = [vi.name for vi in graph_inputs]
    if given:
        if sorted(s.name for s in given) != sorted(names):
            raise EdgekitError(f"--input-spec names {', '.join(s.name for s in given)} but {path} takes "
                               f"{', '.join(names)}")
        return [InputSpec(s.name, s.dtype, s.dims, s.kind, vocab.get(s.name, s.vocab_size), s.example, s.max)
                for s in sorted(given, key=lambda s: names.index(s.name))]
    specs = []
    for vi in graph_inputs:
        elem = vi.type.tensor_type.elem_type
        if elem not in _ONNX_ELEM:
            raise EdgekitError(f"{path}: input '{vi.name}' has an ONNX element type ({elem}) edgekit does not "
                               f"feed; supported: {', '.join(_ONNX_ELEM.values())}")
        dtype = _ONNX_ELEM[elem]
        dims: list[int | str] = []
        example: dict[str, int] = {}
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if axis == 0:
                dims.append(BATCH)
                example[BATCH] = d.dim_value if d.HasField("dim_value") else 1
            elif d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif axis == 1 and not dtype.startswith("float"):
                dims.append(SEQUENCE)
                example[SEQUENCE] = DEFAULT_SEQUENCE
            else:
                raise EdgekitError(f"{path}: input '{vi.name}' has a symbolic axis {axis} "
                                   f"('{d.dim_param or '?'}'); pass --input-spec NAME:DTYPE:SHAPE,... for every input")
        kind = kind_for(vi.name, dtype)
        specs.append(InputSpec(vi.name, dtype, tuple(dims), kind, vocab.get(vi.name), example))
    return specs


def load_model(spec: Any, input_shape: tuple[int, ...] | str | None = None, *,
               input_spec: list[InputSpec] | str | None = None, dynamic: tuple[str, ...] = (),
               task: str | None = None) -> SourceModel:
    """Resolve what the user named into a SourceModel; every failure is an EdgekitError naming the spec.

    `input_spec` (InputSpecs, or the CLI's `input_ids:int64:1x128,...` with `dynamic` axes) describes models
    with several or non-float inputs; `input_shape` stays the way to give one float input's shape."""
    from edgekit.common.io import parse_input_spec

    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    if isinstance(input_spec, str):
        input_spec = parse_input_spec(input_spec, dynamic)
    if input_spec and input_shape:
        raise EdgekitError("give either --input-shape or --input-spec, not both")
    if task is not None and not str(spec).startswith("hf:"):
        raise EdgekitError(f"--task applies to hf: models (Hugging Face folders), not '{spec}'")
    try:
        import torch

        if isinstance(spec, torch.nn.Module):
            if input_spec:
                return SourceModel("torch", type(spec).__name__, type(spec).__name__, (), module=spec.eval(),
                                   inputs=torch_vocab(spec, list(input_spec)))
            if input_shape is None:
                raise EdgekitError("an nn.Module needs its input shape: pass input_shape=(1, 3, 224, 224), or "
                                   "in-memory calib= data to take it from")
            return SourceModel("torch", type(spec).__name__, type(spec).__name__, input_shape, module=spec.eval())
    except ImportError:  # torch is an optional extra: without it, no object can be an nn.Module
        pass
    if isinstance(spec, SourceModel):
        return spec
    spec = str(spec)
    with stage(f"loading model '{spec}'"):
        return _load_named(spec, input_shape, input_spec, task)


def _load_named(spec: str, input_shape: tuple[int, ...] | None, input_spec: list[InputSpec] | None = None,
                task: str | None = None) -> SourceModel:
    if spec.startswith("zoo:"):
        return _from_zoo(spec)
    if spec.startswith("hf:"):
        return _from_hf(spec, input_spec, task)
    suffix = Path(spec).suffix.lower()
    if suffix in (".onnx", ".pt2"):
        path = Path(spec)
        if not path.is_file():
            raise EdgekitError(f"model file not found: {path}")
        if suffix == ".onnx":
            return _from_onnx(path, input_shape, input_spec)
        return _from_pt2(path, input_shape, input_spec)
    if ":" in spec:
        return _from_factory(spec, input_shape, input_spec)
    if Path(spec).exists():
        raise EdgekitError(f"cannot load model '{spec}': only .onnx and .pt2 files are supported")
    raise EdgekitError(
        f"cannot load model '{spec}': expected a .onnx or .pt2 file, package.module:factory, hf:DIR, or zoo:NAME"
    )
