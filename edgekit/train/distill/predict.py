"""A model's logits on a dataset, in batches, and its accuracy: what every training stage evaluates with."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgekit.errors import EdgekitError


def logits_of(output: Any) -> torch.Tensor:
    """A model's class scores: the tensor itself, a dict's 'logits', or a tuple's first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise EdgekitError(f"the model returned {type(output).__name__}; expected a tensor of class scores "
                       "(or a dict with 'logits', or a tuple whose first element is the scores)")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256, device: torch.device | None = None):
    """Logits for all of `x`, in eval mode (the model's mode is restored afterwards)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        parts = [logits_of(model(x[i : i + batch_size].to(device))).float().cpu()
                 for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def accuracy_on(model: nn.Module, data: Any, device: torch.device | None = None) -> float | None:
    """Top-1 accuracy on a trainer.Data (tensors x, y); None without labels."""
    if data.y is None:
        return None
    return float((predict(model, data.x, device=device).argmax(-1) == data.y).float().mean())
