"""The int8 grid text QAT trains on: ONNX Runtime's dynamic-int8 transformer weights (symmetric, one scale
max|w| / 127 per output channel of a Linear and per row of a large embedding table) and its per-call uint8
quantization of each Linear's input, as torch parametrizations with straight-through gradients.

Why its own module: the grid is a contract with the exporter (`snap` leaves weights the exporter's
quantization reproduces exactly, `grid_error` checks it), separate from the training loop and the reports.
"""

from __future__ import annotations

from typing import Any

from edgekit.quant.embedding import MIN_TABLE_ELEMENTS  # tables the exporter quantizes per row

#: the symmetric int8 weight range [-QMAX, QMAX]
QMAX = 127


def grid_scale(w, axis: int = 0):
    """One scale per slice along `axis`: max|w| / 127 (1 for an all-zero slice, as the exporter does)."""
    import torch

    amax = w.abs().amax(dim=[d for d in range(w.dim()) if d != axis], keepdim=True)
    return torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))


def fake_quant(w, axis: int = 0):
    """`w` rounded onto the symmetric int8 grid with one scale per slice along `axis` (max|w| / 127), with a
    straight-through gradient."""
    import torch

    scale = grid_scale(w.detach(), axis)
    q = torch.clamp(torch.round(w / scale), -QMAX, QMAX) * scale
    return w + (q - w).detach()


def fake_quant_dynamic(x):
    """ONNX Runtime's DynamicQuantizeLinear as the forward pass sees it, per sample (a deployed call is one
    sentence): uint8 asymmetric over [min(0, x), max(0, x)], straight-through gradient."""
    import torch

    dims = list(range(1, x.dim()))
    lo = x.detach().amin(dim=dims, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dim=dims, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    return x + (q - x).detach()


def _quantize_input(_module, args):
    return (fake_quant_dynamic(args[0]), *args[1:])


def _grid_module():
    from torch import nn

    class Int8Grid(nn.Module):
        """Parametrization: the weight as the exporter will store it (per output channel / per row)."""

        def __init__(self, axis: int = 0) -> None:
            super().__init__()
            self.axis = axis

        def forward(self, w):
            return fake_quant(w, self.axis)

    return Int8Grid


def quantized_weights(model, embeddings: bool = True) -> list[tuple[str, Any]]:
    """(name, module) of the weights the exporter quantizes: every Linear (its weight is (out, in): one scale
    per output row, the ONNX MatMul's per-column scale) and, with `embeddings`, the large Embedding tables."""
    from torch import nn

    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (embeddings and isinstance(mod, nn.Embedding)
                                          and mod.weight.numel() >= MIN_TABLE_ELEMENTS):
            found.append((name, mod))
    return found


_HOOKS: dict[int, Any] = {}


def attach(model, embeddings: bool = True, activations: bool = True) -> list[str]:
    """Fake-quantize the exporter's int8 weights in place (torch parametrizations) and, with `activations`,
    the inputs of the Linear layers as ONNX Runtime quantizes them per call; returns the weights' names."""
    from torch import nn
    from torch.nn.utils import parametrize

    grid = _grid_module()
    names = []
    for name, mod in quantized_weights(model, embeddings):
        if not parametrize.is_parametrized(mod, "weight"):
            parametrize.register_parametrization(mod, "weight", grid(0))
            if activations and isinstance(mod, nn.Linear):
                _HOOKS[id(mod)] = mod.register_forward_pre_hook(_quantize_input)
        names.append(name)
    return names


def snap(model) -> None:
    """Replace each fake-quantized weight by its grid value and remove the parametrization: plain modules
    whose weights the exporter's quantization reproduces exactly."""
    import torch
    from torch.nn.utils import parametrize

    with torch.no_grad():
        for _name, mod in list(model.named_modules()):
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
            hook = _HOOKS.pop(id(mod), None)
            if hook is not None:
                hook.remove()


def grid_error(model, embeddings: bool = True) -> float:
    """Largest |w - grid(w)| over the exporter's int8 weights, in units of each channel's grid step: 0 means
    the exporter's quantization gives back exactly these weights."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for _name, mod in quantized_weights(model, embeddings):
            w = mod.weight.detach().float()
            scale = grid_scale(w, 0)
            steps = (w / scale - torch.round(w / scale)).abs().max()
            worst = max(worst, float(steps))
    return worst
