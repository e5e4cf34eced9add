"""Forward hooks that capture named intermediate outputs (features, attention maps, hidden states).

Hooks rather than model surgery: the user's model stays as they wrote it, the same names work whether it
is later wrapped in DistributedDataParallel or not, and a wrong name is caught before training starts with
the list of names that do exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edgekit.errors import EdgekitError

_LIST_AT_MOST = 40


def layer_names(model: Any) -> list[str]:
    """Every named submodule (the root excluded), in definition order."""
    return [name for name, _ in model.named_modules() if name]


def check_layers(model: Any, names: Iterable[str], role: str) -> None:
    """Raise one line naming the missing layer(s) and listing what the model has."""
    available = layer_names(model)
    have = set(available)
    missing = [n for n in names if n not in have]
    if not missing:
        return
    shown = ", ".join(available[:_LIST_AT_MOST])
    if len(available) > _LIST_AT_MOST:
        shown += f", ... ({len(available)} in all)"
    raise EdgekitError(
        f"{role} has no layer named {', '.join(repr(m) for m in missing)}; available: {shown or 'none'} "
        f"(pass one of these as the {role} side of the layer pair)"
    )


def _select(module: Any, output: Any) -> Any:
    """The tensor a layer 'means': attention weights for nn.MultiheadAttention, else the first tensor."""
    import torch

    if isinstance(module, torch.nn.MultiheadAttention) and isinstance(output, tuple):
        if output[1] is None:
            raise EdgekitError("an nn.MultiheadAttention layer used for attention distillation must be called "
                               "with need_weights=True so it returns its attention map")
        return output[1]
    while isinstance(output, tuple | list):
        output = output[0]
    return output


class FeatureTaps:
    """Capture the outputs of `names` in `model` on every forward; read them from `.outputs`."""

    def __init__(self, model: Any, names: Iterable[str], role: str = "model") -> None:
        self.names = list(dict.fromkeys(names))
        check_layers(model, self.names, role)
        self.outputs: dict[str, Any] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module, _inputs, output):
            self.outputs[name] = _select(module, output)

        return hook

    def take(self) -> dict[str, Any]:
        """The outputs of the last forward; clears them so a stale tensor is never reused."""
        out, self.outputs = self.outputs, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
