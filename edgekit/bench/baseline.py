"""The one FP32 baseline rule that every speed-up in edgekit is computed against.

The bench table's speed-up column and `recommend`'s judgement used to pick different baselines (torch eager
in one, the target's own fp32 artifact in the other), so the same int8 artifact read 9x in one and 2x in the
other. Both now call `pick`:

1. the same target's fp32 artifact (an fp32 record is its own baseline), measured at the same batch size on
   the same device, of the same backend when the target has several;
2. else a torch-eager fp32 record at the same batch size on the same device;
3. else none: the speed-up is left empty rather than compared with something unrelated.

Records are plain dicts (bench records or hand-written results); a field a record lacks does not exclude it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EAGER_NAMES = ("torch", "pytorch", "torch-eager", "torch_eager", "eager")


def runtime_name(value: Any) -> str | None:
    """A runtime/backend given as "onnxruntime", "torch 2.6.0" or {"name": ..., "version": ...}."""
    if isinstance(value, dict):
        value = value.get("name")
    if isinstance(value, str) and value.strip():
        return value.strip().split()[0].lower()
    return None


def is_eager(rec: Mapping[str, Any]) -> bool:
    """A torch eager run: recognised by its backend, runtime or target name."""
    target = rec.get("target") if isinstance(rec.get("target"), str) else ""
    names = (runtime_name(rec.get("runtime")), runtime_name(rec.get("backend")), target.lower())
    return any(n in EAGER_NAMES for n in names)


def _p50(rec: Mapping[str, Any]) -> float | None:
    lat = rec.get("latency_ms")
    value = lat.get("p50", lat.get("mean")) if isinstance(lat, dict) else lat
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def _device(rec: Mapping[str, Any]) -> str | None:
    d = rec.get("device")
    return d.get("name") if isinstance(d, dict) else None


def _comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same batch, device and model, where both records say."""
    for key in ("batch", "model"):
        if a.get(key) is not None and b.get(key) is not None and a.get(key) != b.get(key):
            return False
    da, db = _device(a), _device(b)
    return da is None or db is None or da == db


def _engine(rec: Mapping[str, Any]) -> str | None:
    return runtime_name(rec.get("backend")) or runtime_name(rec.get("runtime"))


def _usable(rec: Mapping[str, Any]) -> bool:
    return rec.get("status", "ok") == "ok" and rec.get("precision") == "fp32" and _p50(rec) is not None


def pick(records: Sequence[Mapping[str, Any]], rec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record `rec`'s speed-up is relative to (see the module docstring), or None."""
    if _usable(rec) and not is_eager(rec):
        return rec
    same_target = [r for r in records if _usable(r) and not is_eager(r) and r.get("target") == rec.get("target")
                   and _comparable(r, rec)]
    if same_target:  # a target with several backends: the fp32 of the same backend first
        return min(same_target, key=lambda r: _engine(r) != _engine(rec))
    if is_eager(rec) and _usable(rec):
        return rec
    eager = [r for r in records if _usable(r) and is_eager(r) and _comparable(r, rec)]
    return eager[0] if eager else None


def label(base: Mapping[str, Any] | None) -> str:
    """How a header names a baseline: "fp32 of the same target" or "torch eager fp32"."""
    if base is None:
        return "none"
    return "torch eager fp32" if is_eager(base) else "the same target's fp32 artifact"


def speedup(records: Sequence[Mapping[str, Any]], rec: Mapping[str, Any]) -> float | None:
    """Baseline p50 / this record's p50 (> 1: faster than the baseline); None without a baseline."""
    base = pick(records, rec)
    if base is None or _p50(rec) is None or rec.get("status", "ok") != "ok":
        return None
    return _p50(base) / _p50(rec)
