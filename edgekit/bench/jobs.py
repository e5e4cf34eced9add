"""What the bench harness works on: one Job per artifact as its measurement progresses, the evaluation sets
(single-input arrays or named feeds) and what a manifest says about the model's inputs and source."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.devices import WorkerChannel
from edgekit.errors import EdgekitError


def source_is_data(source: str) -> bool:
    """A manifest source bench may load without running code from it: a built-in zoo model, or an .onnx /
    .pt2 file (read as data; a .pt2 whose pickles could run code is refused by the safe loader)."""
    return source.startswith("zoo:") or Path(source).suffix.lower() in (".onnx", ".pt2")


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8)."""
    try:
        batches = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        batches = ()
    if not batches or any(b < 1 for b in batches):
        raise EdgekitError(f"malformed batch sizes '{text}' (batches=, --batch): expected positive "
                           "integers separated by commas, e.g. 1,8")
    return batches


@dataclass
class EvalSet:
    """Evaluation inputs: `x` for a single-input model, `feeds` (keyed by input name) for the others."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    feeds: dict[str, np.ndarray] | None = None

    @property
    def data(self) -> np.ndarray | dict[str, np.ndarray]:
        return self.feeds if self.feeds is not None else self.x

    @property
    def count(self) -> int:
        return len(self.x)

    @property
    def key(self) -> str:
        import hashlib

        h = hashlib.sha256(str(self.x.shape).encode())
        for name, arr in sorted((self.feeds or {"": self.x}).items()):
            h.update(f"{name}:{arr.dtype}".encode())
            h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        return h.hexdigest()[:16]


def input_specs(manifest: dict[str, Any]) -> list[Any]:
    """The model's InputSpecs as the manifest records them (older manifests: the one input's shape)."""
    from edgekit.common.io import InputSpec, image_input

    model = manifest.get("model") or {}
    if model.get("inputs"):
        return [InputSpec.from_json(d) for d in model["inputs"]]
    return [image_input(model["input_shape"], manifest["inputs"][0]["name"] if manifest.get("inputs") else "input")]


def tokenizer_for(manifest: dict[str, Any]):
    """A text model's tokenizer, read from its hf: source folder (text --eval data needs it)."""
    source = str((manifest.get("model") or {}).get("source", ""))
    if not source.startswith("hf:"):
        return None
    from edgekit.models.hf import load_tokenizer, tokenize

    tok = load_tokenizer(Path(source[3:]))
    specs = input_specs(manifest)
    return lambda sentences: tokenize(tok, sentences, specs)


@dataclass
class Job:
    """One artifact's measurement as it progresses; `error` set means it is out (and reported as failed)."""

    index: int
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    channel: WorkerChannel | None = None
    env: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    warmups: dict[int, tuple[int, float]] = field(default_factory=dict)
    times: dict[int, list[int]] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    memory: dict[int, dict[str, Any]] = field(default_factory=dict)
    evalset: EvalSet | None = None
    outputs: list[np.ndarray] | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)


def eval_data_provenance(ev: EvalSet, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the quality figures were measured on; `calibration_data` is True when it is the very data the
    artifact was calibrated on (a weak check: quantization ranges were fitted to it)."""
    import hashlib

    from edgekit.data.calibration import byte_view

    cal = manifest.get("calibration") or {}
    h = hashlib.sha256(str(ev.x.shape).encode())
    h.update(byte_view(ev.x))
    same = bool(cal.get("sha256")) and h.hexdigest() == cal.get("sha256")
    same = same or (bool(cal.get("source")) and cal.get("source") == ev.source)
    return {"source": ev.source, "samples": len(ev.x), "labels": ev.y is not None, "calibration_data": same}
