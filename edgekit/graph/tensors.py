"""The description of one model input or output (name, shape, dtype, layout), as a manifest records it.

It lives in the lowest layer because everything speaks it: the ONNX export describes its graph with it,
every backend describes the files it wrote with it, and bench reads it back from manifests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str
    layout: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"], layout=d.get("layout"))
