"""Quantization-aware training through torchao's PT2E flow, with the distillation loss against the FP32
teacher, converted to the same Q/DQ form every edgekit exporter consumes.

    export (torch.export, dynamic batch) -> prepare_qat_pt2e(quantizer) -> train with the DistillationLoss
    (soft targets from the FP32 teacher) -> freeze BN statistics, then observers -> convert_pt2e

Why this flow:
- PT2E is the quantization path torch and torchao maintain (torch.ao's eager/FX QAT is deprecated and the
  PT2E API left torch.ao in 2.13). Its converted graph holds quantize/dequantize ops with int8 weights
  already folded, which `torch.onnx.export` turns into QuantizeLinear/DequantizeLinear: ONNX Runtime and
  TensorRT take that graph as it is, with no post-training calibration (`edgekit export` records
  `calibration: {method: qat}`).
- The student is distilled from the FP32 teacher during QAT, not only fitted to labels: the teacher's soft
  targets are what lets the fake-quantized student recover what rounding costs it.
- Late in training the batch-norm statistics and then the observers are frozen, the usual QAT recipe: the
  last epochs fine-tune the weights against fixed ranges, so the ranges the converted model ships with are
  the ones the weights were trained for.

Which quantizer for which backend (`QATConfig.quantizer`, `edgekit qat --quantizer`): the activation format
is a property of the runtime, not one global default (uint8 activations are what make ONNX Runtime's x86
int8 kernels fast; TensorRT needs int8 symmetric), so pick it for the target:

- `x86` (default): torchao's X86InductorQuantizer recipe, uint8 asymmetric per-tensor activations and int8
  symmetric per-channel weights in (-128, 127): the U8S8 format ONNX Runtime's x86 int8 kernels are fast
  with (x86-server-cpu and other ONNX Runtime CPU targets). TensorRT refuses it (uint8, non-zero zero points).
- `tensorrt`: int8 *symmetric* per-tensor activations (zero point 0) and int8 symmetric per-channel weights on
  the output-channel axis, float biases: TensorRT's explicit-quantization rules (Jetson, T4 and the other
  tensorrt targets; edgekit.graph.qdq checks them at export). The range is ONNX's int8 range (-128, 127), so the
  fake quantization trained here rounds and clamps exactly as the exported QuantizeLinear does. ONNX Runtime
  runs this graph too (x86-server-cpu int8 exports it), but its x86 kernels are slower with int8 than
  with uint8 activations: train with `x86` for an ONNX Runtime CPU target.

Both use the same annotation (X86InductorQuantizer's patterns: the inputs of convolutions and linear layers,
and the tensors around int8-capable ops such as pooling, are quantized; biases are not), only the
quantization specs differ, built from torchao's QuantizationSpec with FusedMovingAvgObsFakeQuantize and
moving-average min/max observers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, MissingRuntimeError

#: node metadata key (under node.meta["custom"]) that marks a converted graph as QAT-trained; it survives
#: torch.export.save/load, and onnx_export copies it into the ONNX metadata `edgekit.quantization`
QUANTIZATION_TAG = "edgekit.quantization"
#: QAT quantizers by name: what they produce and the backend they suit (see the module docstring)
QUANTIZERS: dict[str, dict[str, str]] = {
    "x86": {"activations": "uint8 asymmetric per-tensor", "weights": "int8 symmetric per-channel",
            "backend": "ONNX Runtime on x86 CPUs", "target": "x86-server-cpu"},
    "tensorrt": {"activations": "int8 symmetric per-tensor (zero point 0)",
                 "weights": "int8 symmetric per-channel (output-channel axis)",
                 "backend": "TensorRT on Jetson / T4 GPUs, ONNX Runtime too", "target": "jetson-orin-nano"},
}


def describe_quantizers() -> str:
    """One line: each quantizer's name, backend and activation format (for errors and --help)."""
    return "; ".join(f"{name} ({q['backend']}: {q['activations'].split(' (')[0]} activations)"
                     for name, q in QUANTIZERS.items())


@dataclass(frozen=True)
class QATConfig:
    """QAT-specific settings; how long and how fast to train is the TrainConfig's business.

    `quantizer` names the Q/DQ format (a key of QUANTIZERS): "x86" for ONNX Runtime on x86 CPUs, "tensorrt"
    for TensorRT targets. `freeze_bn_after` / `freeze_observers_after` are fractions of the epochs after which
    batch-norm running statistics, then activation/weight ranges, stop updating (None: never).
    """

    quantizer: str = "x86"
    freeze_bn_after: float | None = 0.5
    freeze_observers_after: float | None = 0.75

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise EdgekitError(f"unknown QAT quantizer '{self.quantizer}'; available: {describe_quantizers()}")
        for name in ("freeze_bn_after", "freeze_observers_after"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise EdgekitError(f"{name} must be a fraction of training in [0, 1] or None (got {v})")

    def freeze_epoch(self, fraction: float | None, epochs: int) -> int | None:
        """First epoch (0-based) that runs frozen; None when it never freezes."""
        if fraction is None:
            return None
        return min(epochs, max(0, round(fraction * epochs)))


@dataclass
class QATResult:
    model: Any  # the converted torch.fx GraphModule (Q/DQ ops, int8 weights)
    train: Any  # TrainResult
    metrics: dict[str, Any] = field(default_factory=dict)


def _torchao():
    """torchao's PT2E pieces; torchao prints loader warnings for kernels it does not need here."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torchao").setLevel(logging.ERROR)
            # torch's own logger (a handler holding the real stderr) warns about torchao's enum registrations
            logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
            import torchao.quantization.pt2e as pt2e
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )
    except ImportError:
        raise MissingRuntimeError("qat", "torchao", "qat", "torchao provides the PT2E QAT flow") from None
    return pt2e, prepare_qat_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


def export_program(model, example, dynamic: bool = True):
    import torch

    dims = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,), dynamic_shapes=dims)
    except Exception as exc:
        if dynamic:
            return export_program(model, example, dynamic=False)
        raise EdgekitError(f"torch.export cannot capture {type(model).__name__} for QAT: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def quantization_config(name: str):
    """The torchao QuantizationConfig (QAT) of the quantizer `name` (see QUANTIZERS)."""
    _, _, _, _, x86_config = _torchao()
    if name == "x86":
        return x86_config(is_qat=True)
    if name != "tensorrt":  # QATConfig validates the name; this guards direct callers
        raise EdgekitError(f"unknown QAT quantizer '{name}'; available: {describe_quantizers()}")
    import torch
    from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    # ONNX's int8 range (-128, 127) on both, with zero point 0 (symmetric): the exported QuantizeLinear clamps
    # to it, so training sees exactly the rounding TensorRT and ONNX Runtime apply; eps as torchao's x86 recipe
    fake_quant = FusedMovingAvgObsFakeQuantize
    activations = QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric, is_dynamic=False,
        observer_or_fake_quant_ctr=fake_quant.with_args(observer=MovingAverageMinMaxObserver, eps=2**-12),
    )
    weights = QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
        ch_axis=0,  # the output channel of conv (oc, ic, kh, kw) and linear (out, in) weights
        is_dynamic=False,
        observer_or_fake_quant_ctr=fake_quant.with_args(observer=MovingAveragePerChannelMinMaxObserver, eps=2**-12),
    )
    # bias None: biases stay float, as TensorRT wants (no int32 bias DequantizeLinear to fold)
    return QuantizationConfig(activations, activations, weights, None, True)


def prepare(student, example, config: QATConfig | None = None):
    """A PT2E QAT graph of a copy of `student` (fake quantization inserted, conv+BN fused for QAT); the
    student itself is left as it was.

    The returned GraphModule accepts `.train()` / `.eval()` (torchao's exported-model mode switch).
    """
    import copy

    config = config or QATConfig()
    _, prepare_qat_pt2e, _, X86Quantizer, _ = _torchao()
    # torch.export's module shares the parameters' storage with the model it traced: QAT would otherwise
    # train the caller's FP32 student in place
    student = copy.deepcopy(student).eval()
    graph = export_program(student, example).module()
    # X86InductorQuantizer's annotation (which tensors get quantized) with the chosen quantizer's specs
    quantizer = X86Quantizer().set_global(quantization_config(config.quantizer))
    with _cached_patterns(), warnings.catch_warnings():  # its conv+BN fusion traces patterns too
        warnings.simplefilter("ignore")
        prepared = prepare_qat_pt2e(graph, quantizer)
    allow_train_eval(prepared)
    return prepared


_PATTERN_CACHE: dict[Any, Any] = {}


@contextlib.contextmanager
def _cached_patterns():
    """Reuse torchao's traced pattern graphs across train/eval switches and conversions.

    torchao's mode switch re-runs torch.export on a dozen small pattern functions every time (about 3 s per
    switch here); training switches at least twice an epoch (train, then eval for the accuracy check), and
    convert_pt2e's conv+BN folding traces about a hundred more. The patterns depend only on the function (and
    its closure) and the example shapes, so they are traced once per process and handed out as copies. If
    torchao's internals move, this silently falls back to the uncached path.
    """
    import copy

    import torch

    try:
        from torchao.quantization.pt2e import utils as ao_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(ao_utils, "_get_aten_graph_module_for_pattern", None)
    if original is None:  # pragma: no cover
        yield
        return

    def cached(pattern, example_inputs, is_cuda=False, **kwargs):
        fn = getattr(pattern, "fn", pattern)  # torchao wraps each pattern function in a new WrapperModule
        code = getattr(fn, "__code__", None)
        if code is None:  # pragma: no cover - not a plain function: do not guess
            return original(pattern, example_inputs, is_cuda, **kwargs)
        cells = tuple(repr(c.cell_contents) for c in (fn.__closure__ or ()))  # e.g. dropout's `inplace`

        def sig(x):  # tensors become placeholders: only their shape and dtype shape the traced pattern
            return (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else repr(x)

        key = (code, cells, is_cuda, tuple((k, sig(v)) for k, v in sorted(kwargs.items())),
               tuple(sig(x) for x in example_inputs))
        if key not in _PATTERN_CACHE:
            _PATTERN_CACHE[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_PATTERN_CACHE[key])

    # qat_utils (convert's conv+BN folding) imported the function by name: patch its reference as well
    holders = [ao_utils]
    with contextlib.suppress(ImportError):
        from torchao.quantization.pt2e import qat_utils

        if getattr(qat_utils, "_get_aten_graph_module_for_pattern", None) is original:
            holders.append(qat_utils)
    for holder in holders:
        holder._get_aten_graph_module_for_pattern = cached
    try:
        yield
    finally:
        for holder in holders:
            holder._get_aten_graph_module_for_pattern = original


def switch_mode(model, train: bool) -> None:
    """torchao's exported-model train/eval switch (batch norm and dropout), with cached patterns."""
    pt2e = _torchao()[0]
    with _cached_patterns(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (pt2e.move_exported_model_to_train if train else pt2e.move_exported_model_to_eval)(model)


def allow_train_eval(model) -> None:
    """Let `.train()` / `.eval()` work on a PT2E graph (as torchao's allow_exported_model_train_eval does), and
    keep `.training` truthful so code that saves and restores the mode behaves."""
    import types

    def _train(self, mode: bool = True):
        switch_mode(self, mode)
        self.training = mode
        return self

    def _eval(self):
        return _train(self, False)

    model.train = types.MethodType(_train, model)
    model.eval = types.MethodType(_eval, model)


def freeze_hook(config: QATConfig, epochs: int) -> Callable[[int, Any], None]:
    """Called by the trainer at the start of each epoch (after it switched the model to training mode)."""
    pt2e = _torchao()[0]
    bn_epoch = config.freeze_epoch(config.freeze_bn_after, epochs)
    obs_epoch = config.freeze_epoch(config.freeze_observers_after, epochs)

    def hook(epoch: int, model) -> None:
        if obs_epoch is not None and epoch >= obs_epoch:
            model.apply(pt2e.disable_observer)
        else:
            model.apply(pt2e.enable_observer)
        if bn_epoch is not None and epoch >= bn_epoch:
            switch_mode(model, False)  # batch norm uses (and keeps) its running statistics

    return hook


def tag_quantization(graph_module, value: str = "qat") -> None:
    """Mark the Q/DQ nodes so the export pipeline records how the ranges were made."""
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "quantize_per" in str(node.target):
            node.meta.setdefault("custom", {})[QUANTIZATION_TAG] = value


def convert(prepared):
    """convert_pt2e: fake quantization becomes quantize/dequantize ops, weights folded to int8."""
    _, _, convert_pt2e, _, _ = _torchao()
    switch_mode(prepared, False)
    # convert_pt2e's conv+BN folding traces about a hundred pattern graphs (20-35 s here): cached per process
    with _cached_patterns(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(prepared)
    allow_train_eval(converted)
    converted.training = False
    tag_quantization(converted)
    return converted


def qat(teacher, student, train, eval_data=None, *, config: Any = None, train_config=None,
        loss=None, log: Callable[[str], None] | None = None, **text: Any) -> Any:
    """QAT of a (trained, FP32) `student` with distillation from the FP32 `teacher`; returns the converted model.

    With `hf:DIR` models (transformers, token inputs) it is edgekit.train.qat_text.qat_text instead: `train` /
    `eval_data` are sentences (a .txt path or zoo:sentences), `config` a TextQATConfig, and `text` takes its
    keywords (target, precision, out, force); it returns a TextQATResult.

    `train_config` (a TrainConfig) defaults to 3 epochs at lr 1e-5: QAT fine-tunes a trained model, and on
    the digits student larger rates cost accuracy (int8 through ONNX Runtime, seed 0: 99.33% at 1e-5,
    98.67% at 5e-5, 98.22% at 2e-4, from an FP32 student at 98.44%). `loss` (a DistillConfig) defaults to
    the distillation defaults.
    """
    if any(isinstance(m, str | Path) and str(m).startswith("hf:") for m in (teacher, student)):
        from edgekit.train.qat_text import qat_text

        return qat_text(teacher, student, train, eval_data, config=config, log=log, **text)
    if text:
        raise EdgekitError(f"unknown qat option(s) {', '.join(sorted(text))} for a CNN student (they apply to hf: "
                           "models)")
    import torch

    from edgekit.train.distill.losses import DistillConfig
    from edgekit.train.distill.metrics import count_params, stage_metrics
    from edgekit.train.distill.predict import accuracy_on
    from edgekit.train.distill.trainer import Data, TrainConfig, Trainer

    config = config or QATConfig()
    train_config = train_config or TrainConfig(epochs=3, lr=1e-5, desc="qat")
    loss = loss or DistillConfig()
    if loss.features or loss.attention or loss.hidden:
        raise EdgekitError("QAT distils on the outputs only: the prepared graph has no named layers to tap "
                           "(drop --feature/--attention/--hidden for qat)")
    train_data = Data.of(train, "training data")
    evaluation = Data.of(eval_data, "evaluation data") if eval_data is not None else train_data
    sample_shape = tuple(train_data.x.shape[1:])
    fp32_params = count_params(student)
    fp32_accuracy = accuracy_on(student, evaluation)
    example = train_data.x[: min(2, len(train_data))].clone()
    if len(example) < 2:
        example = torch.cat([example, example])
    prepared = prepare(student, example, config)
    trainer = Trainer(prepared, replace(train_config), loss, teacher, log=log,
                      epoch_hook=freeze_hook(config, train_config.epochs))
    result = trainer.fit(train_data, evaluation)
    converted = convert(prepared)
    metrics = stage_metrics(teacher, converted, evaluation, sample_shape, student_params=fp32_params)
    info = QUANTIZERS[config.quantizer]
    metrics.update({"fp32_student_accuracy": fp32_accuracy, "quantizer": config.quantizer,
                    "activations": info["activations"], "weights": info["weights"], "backend": info["backend"],
                    "epochs": train_config.epochs, "seed": train_config.seed})
    return QATResult(converted, result, metrics)


def save_program(converted, example, path: Path | str) -> Path:
    """torch.export.save of the converted model (dynamic batch), tagged as QAT; `edgekit export` reads it."""
    import torch

    path = Path(path)
    program = export_program(converted, example)
    tag_quantization(program.graph_module)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def save_onnx(converted, input_shape: tuple[int, ...], path: Path | str, real_inputs=None):
    """The verified Q/DQ ONNX (metadata edgekit.quantization = qat), via edgekit's own ONNX export."""
    from edgekit.graph.onnx_export import export_to_onnx
    from edgekit.models.source import load_model

    return export_to_onnx(load_model(converted, input_shape), Path(path), real_inputs=real_inputs)
