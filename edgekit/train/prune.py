"""Structured L1-norm channel pruning that yields a smaller dense model, then distillation fine-tuning.

Channels (conv filters) with the smallest L1 norm are removed for real: the pruned model has narrower
layers, so fewer parameters and MACs on every runtime, not a mask that only a sparse kernel could exploit.
Removing a filter touches every layer coupled to it (the batch norm after it, the next layer's input
channels, residual additions and concatenations that must stay aligned); torch-pruning (Fang et al.,
DepGraph, CVPR 2023) traces the model and prunes each coupled group together, which hand-written rules
get wrong on anything but a plain chain. It installs beside the pinned torch with no other dependency.

The pruned model is then fine-tuned with the distillation loss, the unpruned model as the teacher: it
recovers faster from its own former self's soft targets than from labels alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError, MissingRuntimeError

LAYER_KINDS = ("conv", "all")


@dataclass(frozen=True)
class PruneConfig:
    """`ratio`: fraction of each prunable layer's output channels removed (0.3: 128 -> 89 filters).

    `layers`: 'conv' prunes convolution filters only (linear layers keep their width, and the output layer is
    never pruned); 'all' also prunes hidden linear layers. `norm`: 1 ranks channels by L1 norm (Li et al.
    2017), 2 by L2. `round_to` keeps channel counts multiples of N (hardware-friendly widths).
    `ignored`: names of layers whose output channels must stay.
    """

    ratio: float = 0.3
    layers: str = "conv"
    norm: int = 1
    round_to: int | None = None
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise EdgekitError(f"pruning ratio must be within (0, 1) (got {self.ratio}), e.g. 0.3 for 30% of channels")
        if self.layers not in LAYER_KINDS:
            raise EdgekitError(f"layers must be one of {', '.join(LAYER_KINDS)} (got {self.layers!r})")
        if self.norm not in (1, 2):
            raise EdgekitError(f"norm must be 1 (L1) or 2 (L2) (got {self.norm})")
        if self.round_to is not None and self.round_to < 1:
            raise EdgekitError(f"round_to must be >= 1 (got {self.round_to})")
        object.__setattr__(self, "ignored", tuple(self.ignored))


@dataclass
class PruneResult:
    model: Any  # the pruned dense nn.Module (a deep copy; the original is untouched)
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (before, after)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0

    def summary(self) -> dict[str, Any]:
        before = sum(b for b, _ in self.channels.values())
        after = sum(a for _, a in self.channels.values())
        return {
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "channels_before": before, "channels_after": after,
            "channels_removed_fraction": (before - after) / before if before else 0.0,
            "layers": {k: {"before": b, "after": a} for k, (b, a) in self.channels.items()},
        }


def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise MissingRuntimeError(
            "prune", "torch-pruning", "prune", "it traces which layers a removed channel touches"
        ) from None
    return tp


def prune_channels(model, example, config: PruneConfig | None = None) -> PruneResult:
    """Remove `config.ratio` of the output channels of each prunable layer of a copy of `model`."""
    import torch
    from torch import nn

    from edgekit.train.distill.metrics import count_macs, count_params, output_layer
    from edgekit.train.distill.taps import check_layers

    config = config or PruneConfig()
    tp = _torch_pruning()
    check_layers(model, config.ignored, "model")
    pruned = copy.deepcopy(model).eval()
    sample_shape = tuple(example.shape[1:])
    with torch.no_grad():
        reference_shape = tuple(pruned(example).shape)
    modules = dict(pruned.named_modules())
    ignored: list[nn.Module] = [output_layer(pruned, example)] + [modules[n] for n in config.ignored]
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if config.layers == "conv":
        ignored += [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    targets = {name: m for name, m in pruned.named_modules()
               if isinstance(m, (*convs, nn.Linear)) and all(m is not i for i in ignored)
               and (config.layers == "all" or isinstance(m, convs))}
    if not targets:
        what = "convolution" if config.layers == "conv" else "convolution or hidden linear"
        raise EdgekitError(f"{type(model).__name__} has no {what} layer to prune (the output layer is never "
                           "pruned); use layers='all' for transformer/MLP models")
    before = {name: _out_channels(m) for name, m in targets.items()}
    params_before, macs_before = count_params(pruned), count_macs(pruned, sample_shape)
    importance = tp.importance.MagnitudeImportance(p=config.norm)
    try:
        pruner = tp.pruner.MetaPruner(
            pruned, example, importance=importance, pruning_ratio=config.ratio, ignored_layers=ignored,
            round_to=config.round_to, global_pruning=False,
        )
        pruner.step()
    except Exception as exc:
        raise EdgekitError(f"torch-pruning could not prune {type(model).__name__}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    with torch.no_grad():
        got = tuple(pruned(example).shape)
    if got != reference_shape:  # pragma: no cover - torch-pruning keeps output layers intact
        raise EdgekitError(f"pruning changed the model's output shape from {reference_shape} to {got}")
    after = {name: _out_channels(m) for name, m in targets.items()}
    return PruneResult(pruned, {n: (before[n], after[n]) for n in targets}, params_before, count_params(pruned),
                       macs_before, count_macs(pruned, sample_shape))


def _out_channels(module) -> int:
    return int(getattr(module, "out_channels", None) or getattr(module, "out_features", 0))


@dataclass
class PruneStageResult:
    model: Any
    prune: PruneResult
    train: Any  # TrainResult of the fine-tuning
    metrics: dict[str, Any] = field(default_factory=dict)


def prune(model, train, eval_data=None, *, config: PruneConfig | None = None, train_config=None, loss=None,
          log: Callable[[str], None] | None = None) -> PruneStageResult:
    """Prune a copy of `model`, then fine-tune it with distillation from `model` itself (the teacher).

    `train_config` defaults to 8 epochs at lr 1e-3; `loss` to the distillation defaults.
    """
    from edgekit.train.distill.losses import DistillConfig
    from edgekit.train.distill.metrics import stage_metrics
    from edgekit.train.distill.predict import accuracy_on
    from edgekit.train.distill.trainer import Data, TrainConfig, Trainer

    config = config or PruneConfig()
    train_config = train_config or TrainConfig(epochs=8, lr=1e-3, desc="prune fine-tune")
    loss = loss or DistillConfig()
    train_data = Data.of(train, "training data")
    evaluation = Data.of(eval_data, "evaluation data") if eval_data is not None else train_data
    model.eval()
    example = train_data.x[:2].clone()
    result = prune_channels(model, example, config)
    summary = result.summary()
    if log:
        log(f"pruned {summary['channels_before'] - summary['channels_after']} of {summary['channels_before']} "
            f"channels: {result.params_before} -> {result.params_after} parameters, "
            f"{result.macs_before} -> {result.macs_after} MACs")
    pruned_accuracy = accuracy_on(result.model, evaluation)
    trainer = Trainer(result.model, train_config, loss, model, log=log)
    fit = trainer.fit(train_data, evaluation)
    metrics = stage_metrics(model, result.model, evaluation, tuple(train_data.x.shape[1:]))
    metrics.update({"pruning": {**summary, "ratio": config.ratio, "layers": config.layers,
                                "norm": f"L{config.norm}"},
                    "pruned_accuracy_before_finetune": pruned_accuracy,
                    "epochs": train_config.epochs, "seed": train_config.seed})
    return PruneStageResult(result.model, result, fit, metrics)
