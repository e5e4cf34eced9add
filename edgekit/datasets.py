"""Every form a Python caller hands in as data, turned into the one CalibrationSet the pipeline uses.

A notebook has its samples in memory far more often than in a file: a numpy array, an `(x, y)` pair, a torch
tensor, a dict of arrays keyed by input name, a DataLoader. `as_dataset` accepts all of them beside the
file forms of the command line (`.npz`, `.npy`, `zoo:digits`), and refuses the same bad data a file would
be refused for (non-numeric, complex, NaN or infinite values, labels that do not match the samples), with
messages that name the parameter (`calib=`), not a command-line flag.

torch is never imported here: tensors are recognised by their `detach`/`numpy` methods, so data that is
already numpy needs no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.data.calibration import DEFAULT_MAX_SAMPLES, CalibrationSet, load_data

#: the label key of a dict of arrays (the same name a .npz uses)
LABELS = "y"
IN_MEMORY_PREP = {"applied_by_edgekit": "none (samples used as given)"}


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "numpy") and hasattr(value, "shape")


def _array(value: Any, what: str) -> np.ndarray:
    """A numpy array from an array, a torch tensor or a nested list; refuses anything that is not numbers."""
    if _is_tensor(value):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists, objects numpy cannot stack
        raise EdgekitError(f"{what} cannot be read as an array: {exc}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise EdgekitError(f"{what} must hold numbers (got dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise EdgekitError(f"{what} holds complex numbers ({arr.dtype}); models take real inputs")
    if arr.ndim == 0 or len(arr) == 0:
        raise EdgekitError(f"{what} is empty: it has no samples")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise EdgekitError(f"{what} holds {bad} NaN or infinite value(s); clean the data first")
    return arr


def _labels(y: Any, n: int, what: str) -> np.ndarray | None:
    if y is None:
        return None
    arr = _array(y, f"the labels of {what}")
    if len(arr) != n:
        raise EdgekitError(f"{what}: {len(arr)} labels for {n} samples")
    return arr


def _from_dict(data: Mapping[str, Any], what: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    arrays = {str(k): _array(v, f"{what}['{k}']") for k, v in data.items() if k != LABELS}
    if not arrays:
        raise EdgekitError(f"{what} is a dict with no input arrays (keys: {', '.join(map(str, data)) or 'none'}); "
                           "give one array per model input, keyed by input name, and optional labels 'y'")
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        raise EdgekitError(f"{what}: the input arrays hold different numbers of samples: {counts}")
    n = next(iter(counts.values()))
    return arrays, _labels(data.get(LABELS), n, what)


def _split_batch(batch: Any, what: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One batch of an iterable: a tensor/array, an (x, y) pair or list, or a dict of named arrays."""
    if isinstance(batch, Mapping):
        return _from_dict(batch, what)
    if isinstance(batch, tuple | list) and len(batch) == 2:
        x = _array(batch[0], what)
        return {"x": x}, _labels(batch[1], len(x), what)
    if isinstance(batch, tuple | list) and len(batch) == 1:
        return {"x": _array(batch[0], what)}, None
    return {"x": _array(batch, what)}, None


def _from_batches(data: Iterable[Any], what: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
    parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
    for i, batch in enumerate(data):
        parts.append(_split_batch(batch, f"{what} (batch {i})"))
    if not parts:
        raise EdgekitError(f"{what} yielded no batches")
    names = set(parts[0][0])
    if any(set(p[0]) != names for p in parts):
        raise EdgekitError(f"{what}: the batches do not all hold the same inputs")
    with_labels = sum(p[1] is not None for p in parts)
    if 0 < with_labels < len(parts):
        raise EdgekitError(f"{what}: {with_labels} of {len(parts)} batches carry labels; give labels for all or none")
    try:
        arrays = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
        y = np.concatenate([p[1] for p in parts]) if with_labels else None  # type: ignore[misc]
    except ValueError as exc:
        raise EdgekitError(f"{what}: the batches do not stack into one set: {exc}") from None
    return arrays, y, len(parts)


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(f"{name}:{arrays[name].dtype}:{arrays[name].shape}".encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()[:12]


def _subsample(arrays: dict[str, np.ndarray], y: np.ndarray | None, max_samples: int | None, seed: int):
    n = len(next(iter(arrays.values())))
    if max_samples is None or n <= max_samples:
        return arrays, y, f"all {n}"
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])
    return ({k: v[idx] for k, v in arrays.items()}, None if y is None else y[idx],
            f"{max_samples} of {n}, seeded random (seed {seed})")


def _make_set(arrays: dict[str, np.ndarray], y: np.ndarray | None, source: str, available: int,
              selection: str) -> CalibrationSet:
    first = next(iter(arrays.values()))
    x = np.ascontiguousarray(first, dtype=np.float32) if np.issubdtype(first.dtype, np.floating) else first
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(CalibrationSet)}
    if "named" in names and len(arrays) > 1:
        kwargs["named"] = arrays  # models with several inputs keep every array under its input name
    elif len(arrays) > 1:
        raise EdgekitError(f"data with several inputs ({', '.join(arrays)}) is not supported by this version; "
                           "give one array")
    return CalibrationSet(x, y, source, dict(IN_MEMORY_PREP), available, selection, **kwargs)


def as_dataset(data: Any, *, what: str = "data", max_samples: int | None = DEFAULT_MAX_SAMPLES,
               seed: int = 0) -> CalibrationSet:
    """The CalibrationSet for `data`, whatever form it takes.

    `data` is a path or str (`.npz`, `.npy`, `zoo:digits[:train|:test]`), a numpy array or torch tensor of
    samples (first axis = samples), an `(x, y)` tuple (samples, labels), a dict of arrays (input name ->
    array; `y` holds labels), or any other iterable of batches (a torch DataLoader yielding tensors,
    `(x, y)` pairs or dicts). `what` names the parameter in errors (e.g. "calib="). At most `max_samples`
    samples are kept, a seeded random subset (None: all).
    """
    if isinstance(data, CalibrationSet):
        return data
    if data is None:
        raise EdgekitError(f"{what} is None: give an array, an (x, y) tuple, a dict of arrays, a DataLoader or a "
                           "path (.npz, .npy, zoo:digits)")
    if isinstance(data, str | Path):
        loaded = load_data(str(data), max_samples=max_samples, seed=seed, what=what)
        _array(loaded.x, f"{what} ({loaded.source})")  # NaN or infinite samples are refused from files too
        return loaded
    batches = None
    if isinstance(data, Mapping):
        arrays, y = _from_dict(data, what)
        kind = "dict of arrays"
    elif isinstance(data, tuple) and len(data) == 2 and not _is_tensor(data):
        x = _array(data[0], f"{what} (x of the (x, y) tuple)")
        arrays, y, kind = {"x": x}, _labels(data[1], len(x), what), "(x, y) arrays"
    elif isinstance(data, np.ndarray) or _is_tensor(data):
        arrays, y, kind = {"x": _array(data, what)}, None, "tensor" if _is_tensor(data) else "array"
    elif isinstance(data, Iterable) and not isinstance(data, bytes | bytearray):
        arrays, y, batches = _from_batches(data, what)
        kind = f"{type(data).__name__} of {batches} batches"
    else:
        raise EdgekitError(f"{what} of type {type(data).__name__} is not data: give an array, an (x, y) tuple, a "
                           "dict of arrays, a DataLoader (or any iterable of batches) or a path (.npz, .npy, "
                           "zoo:digits)")
    available = len(next(iter(arrays.values())))
    arrays, y, selection = _subsample(arrays, y, max_samples, seed)
    source = f"in-memory {kind}, {available} samples (sha256 {_digest(arrays)}...)"
    return _make_set(arrays, y, source, available, selection)
