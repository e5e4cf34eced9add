"""Calibration and evaluation sets, and the activation ranges computed from them: plain data every layer reads.

A set carries its provenance (source, count, sha256 of the exact samples, preprocessing) so a manifest can
say which data produced an artifact's ranges; `Ranges` are saved as JSON keyed by tensor name, so ONNX
Runtime's quantizer, TensorRT's Q/DQ graph and its calibration cache all read the same numbers. Loading
and checking live here, below the backends and the bench harness that take these sets; how ranges are
*computed* (the calibration methods) is the quantization layer's business.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.common.io import InputSpec, check_feeds
from edgekit.errors import EdgekitError

DEFAULT_MAX_SAMPLES = 300
#: a calibration set smaller than this cannot estimate ranges (one sample is one image's activations)
MIN_SAMPLES = 10
#: more identical samples than this fraction: a warning (the ranges come from fewer samples than it seems)
MAX_DUPLICATE_FRACTION = 0.5
#: a value further outside the bulk (0.1-99.9 percentile range) than this many times its width: a warning
OUTLIER_SPANS = 10.0
def byte_view(x: np.ndarray) -> np.ndarray:
    """The float32 bytes of `x` for hashing, without copying when it is already contiguous float32."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint8)


@dataclass
class CalibrationSet:
    """Samples for calibration or evaluation. `x` is the one input of an image model (float32, N x ...);
    `named` holds arrays keyed by input name with their own dtypes (token ids stay integers) for models with
    several or non-float inputs, `x` then being the first of them."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    preprocessing: dict[str, Any]
    available: int  # samples in the source before sub-sampling
    selection: str  # how the samples were chosen
    named: dict[str, np.ndarray] | None = None

    @property
    def count(self) -> int:
        return len(self.x)

    def feeds(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The arrays for inputs `names`, unchecked (io.check_feeds checks and casts them): the named arrays
        when they are named after the inputs, else the bare `x` as the one input."""
        if not self.named:
            return {names[0]: self.x} if len(names) == 1 else {"x": self.x}
        if len(names) == 1 and names[0] not in self.named and "x" in self.named:
            return {names[0]: self.named["x"]}
        return dict(self.named)

    @functools.cached_property
    def sha256(self) -> str:
        """Hashed in place (a byte view, not a copy: `tobytes()` of 300 ImageNet-size samples is 180 MB more
        at the export's peak) and once per set."""
        h = hashlib.sha256()
        if self.named and set(self.named) != {"x"}:
            for name in sorted(self.named):
                arr = np.ascontiguousarray(self.named[name])
                h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
                h.update(arr.tobytes())
            return h.hexdigest()
        h.update(str(self.x.shape).encode())
        h.update(byte_view(self.x))
        return h.hexdigest()

    def provenance(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.count,
            "available": self.available,
            "selection": self.selection,
            "sha256": self.sha256,
            "sample_shape": list(self.x.shape[1:]),
            **({"inputs": {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in self.named.items()}}
               if self.named else {}),
            "labels": self.y is not None,
            "preprocessing": self.preprocessing,
        }


def _subsample(x: np.ndarray, y: np.ndarray | None, max_samples: int | None, seed: int,
               named: dict[str, np.ndarray] | None = None):
    n = len(x)
    if max_samples is None or n <= max_samples:
        return x, y, f"all {n}", named
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])
    named = {k: v[idx] for k, v in named.items()} if named else named
    return (x[idx], (y[idx] if y is not None else None), f"{max_samples} of {n}, seeded random (seed {seed})",
            named)


def _load_zoo(spec: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], str]:
    from edgekit.data import zoo

    parts = spec.split(":")
    if parts[1] != "digits" or len(parts) > 3:
        raise EdgekitError(f"unknown data '{spec}'; available: zoo:digits (train split), zoo:digits:test, "
                           "zoo:sentences, zoo:sentences:test (text models)")
    part = parts[2] if len(parts) == 3 else "train"
    if part not in ("train", "test"):
        raise EdgekitError(f"unknown split '{part}' in '{spec}'; use zoo:digits:train or zoo:digits:test")
    split = zoo.digits_split(part)
    return split.x, split.y, dict(zoo.PREPROCESSING, split=part), f"zoo:digits:{part}"


def _load_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], str,
                                    dict[str, np.ndarray] | None]:
    if not path.is_file():
        raise EdgekitError(f"data file not found: {path}")
    named: dict[str, np.ndarray] | None = None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                y = data["y"] if "y" in data.files else None
                if "x" in data.files:
                    x = data["x"]
                else:
                    named = {k: data[k] for k in data.files if k != "y"}
                    if not named:
                        raise EdgekitError(f"{path} has no input arrays: save 'x' (one input) or one array per "
                                           f"input named after it (found: {', '.join(data.files) or 'none'})")
                    x = next(iter(named.values()))
        elif path.suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        else:
            raise EdgekitError(f"data file {path} must be .npz (x or arrays named after the inputs, optional y), "
                               ".npy, or .txt (sentences, for hf: models)")
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(f"cannot read data file {path}: {exc}") from None
    for name, arr in (named or {"x": x}).items():
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or arr.ndim == 0:
            raise EdgekitError(f"{path}: array '{name}' must be a numeric array of samples (got dtype {arr.dtype})")
        if len(arr) != len(x):
            raise EdgekitError(f"{path}: array '{name}' has {len(arr)} samples but the others {len(x)}")
    if y is not None and y.ndim != 1:
        raise EdgekitError(f"{path}: 'y' must be a 1-D array of labels, one per sample (got shape {y.shape})")
    if y is not None and len(y) != len(x):
        first = "x" if named is None else next(iter(named))
        raise EdgekitError(f"{path}: 'y' has {len(y)} labels but '{first}' has {len(x)} samples")
    if np.iscomplexobj(x):
        raise EdgekitError(f"{path}: array 'x' is complex ({x.dtype}); models take real numbers: pass the real "
                           "part or the magnitude, as the model was trained on")
    if named is None and not np.issubdtype(x.dtype, np.floating):
        named = {"x": x}  # integer samples keep their dtype for a model whose input is integer
    prep = {"applied_by_edgekit": "none (samples used as given)"}
    with np.errstate(all="ignore"):  # float64 beyond float32's range becomes inf, reported by load_data
        x = x.astype(np.float32) if named is None or "x" in named else x
    return x, y, prep, str(path), named


def load_data(spec: str, *, max_samples: int | None = DEFAULT_MAX_SAMPLES, seed: int = 0,
              tokenize: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
              what: str | None = None) -> CalibrationSet:
    """DATA is a .npz (x, or arrays named after the inputs; optional y), a .npy, zoo:digits[:train|:test], or
    a .txt of sentences (one per line) that `tokenize` (a text model's tokenizer) turns into named inputs."""
    named: dict[str, np.ndarray] | None = None
    text_path = spec
    if spec.startswith("zoo:sentences"):
        from edgekit.data.text import zoo_sentences

        text_path = str(zoo_sentences(spec))
    if spec.startswith("zoo:") and text_path == spec:
        x, y, prep, source = _load_zoo(spec)
    elif text_path.endswith(".txt"):
        if tokenize is None:
            raise EdgekitError(f"text data {spec} needs a model with a tokenizer (hf:DIR); for other models pass "
                               ".npz or .npy")
        from edgekit.models.hf import read_text

        sentences = read_text(Path(text_path))
        named = tokenize(sentences)
        x, y, source = next(iter(named.values())), None, spec
        prep = {"tokenized": f"{len(sentences)} sentences with the model's tokenizer, padded to {x.shape[-1]}"}
    else:
        x, y, prep, source, named = _load_file(Path(spec))
    if x.ndim == 0 or len(x) == 0:
        raise EdgekitError(f"data '{spec}' is empty: it has no samples")
    finite = np.isfinite(x)
    if not finite.all():
        bad_samples = int((~finite.reshape(len(x), -1)).any(axis=1).sum())
        named = f"{what} ({spec})" if what else f"data '{spec}'"
        raise EdgekitError(f"{named} holds {int((~finite).sum())} NaN or infinite value(s) in {bad_samples} of "
                           f"{len(x)} sample(s); models and calibration need finite numbers: drop or fix those "
                           "samples")
    available = len(x)
    x, y, selection, named = _subsample(x, y, max_samples, seed, named)
    if named is None or "x" in named:
        x = np.ascontiguousarray(x, dtype=np.float32)
    return CalibrationSet(x, y, source, prep, available, selection, named)


def check_matches(cset: CalibrationSet, input_shape: tuple[int, ...], what: str = "calibration set") -> None:
    """The samples must have the model's input shape without its batch dimension (single-input models;
    `checked` covers models with named inputs)."""
    want = tuple(input_shape[1:])
    got = tuple(cset.x.shape[1:])
    if got != want:
        raise EdgekitError(
            f"{what} '{cset.source}' has samples of shape {got or '(scalar)'}, but the model input is "
            f"{'x'.join(map(str, input_shape))} (samples must be {want})"
        )


def checked(cset: CalibrationSet, specs: Sequence[InputSpec], what: str = "calibration set") -> CalibrationSet:
    """`cset` with its arrays checked against the model's inputs and keyed by their names (io.check_feeds):
    a one-line error names a missing input, a wrong dtype or rank, ids outside the vocabulary..."""
    if len(specs) == 1 and specs[0].is_float and (cset.named is None or "x" in cset.named):
        check_matches(cset, specs[0].concrete(), what)
        return cset
    feeds = check_feeds(cset.feeds([s.name for s in specs]), specs, f"{what} '{cset.source}'")
    return dataclasses.replace(cset, x=feeds[specs[0].name], named=feeds)

def check_calibration(cset: CalibrationSet, warn: Callable[[str], None] | None = None) -> None:
    """Refuse a set that cannot calibrate, with the measured reason; warn (through `warn`) about one that
    calibrates badly. Min-max ranges come from the extremes of these samples, so a set that is too small,
    constant or one sample repeated gives every tensor a degenerate range, and one extreme outlier stretches
    the ranges for all the others."""
    where = f"calibration set '{cset.source}'"
    x = cset.x
    if cset.count < MIN_SAMPLES:
        raise EdgekitError(f"{where} has {cset.count} sample(s); calibration needs at least {MIN_SAMPLES} (a few "
                           "hundred is better): pass calib= (--calib) with more samples or raise calib_samples= "
                           "(--calib-samples)")
    if not x.any():
        raise EdgekitError(f"{where} is all zeros ({cset.count} samples): it gives every activation an empty "
                           "range; pass real inputs, preprocessed as for the model")
    flat = x.reshape(cset.count, -1)
    lo, hi = float(flat.min()), float(flat.max())
    if lo == hi:
        raise EdgekitError(f"{where} is constant (every value is {lo:g}): it gives every activation an empty range; "
                           "pass real inputs, preprocessed as for the model")
    unique = len(np.unique(flat, axis=0))
    if unique == 1:
        raise EdgekitError(f"{where} is one sample repeated {cset.count} times: the ranges would fit that one "
                           "input; pass varied samples")
    if warn is None:
        return
    duplicates = cset.count - unique
    if duplicates > MAX_DUPLICATE_FRACTION * cset.count:
        warn(f"warning: {where}: {duplicates} of {cset.count} samples duplicate others ({unique} distinct); "
             "the ranges rest on fewer inputs than it seems")
    q_lo, q_hi = (float(v) for v in np.percentile(flat, [0.1, 99.9]))
    span = max(q_hi - q_lo, 1e-12)
    far = (flat < q_lo - OUTLIER_SPANS * span) | (flat > q_hi + OUTLIER_SPANS * span)
    if far.any():
        extreme = lo if q_lo - lo > hi - q_hi else hi
        warn(f"warning: {where}: {int(far.sum())} value(s) in {int(far.any(axis=1).sum())} sample(s) lie far "
             f"outside the range of the other data (bulk [{q_lo:.3g}, {q_hi:.3g}], extreme {extreme:.3g}); "
             "min-max ranges will stretch to them: check those samples or use --calib-method percentile")


@dataclass
class Ranges:
    """Per-tensor (min, max) of the quantization-ready graph's float tensors, plus how they were made."""

    method: str
    options: dict[str, Any]
    tensors: dict[str, tuple[float, float]]
    calibration: dict[str, Any] = field(default_factory=dict)
    graph_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "edgekit-ranges/1",
            "method": self.method,
            "options": self.options,
            "graph_sha256": self.graph_sha256,
            "calibration": self.calibration,
            "tensors": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.tensors.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Ranges:
        return cls(d["method"], d["options"], {k: (v[0], v[1]) for k, v in d["tensors"].items()},
                   d.get("calibration", {}), d.get("graph_sha256", ""))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Ranges:
        return cls.from_json(json.loads(path.read_text()))

    def to_ort(self):
        """As ONNX Runtime's TensorsData, so its quantizer uses these ranges instead of calibrating again."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        data = {
            k: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
            for k, (lo, hi) in self.tensors.items()
        }
        return TensorsData(CalibrationMethod.MinMax, data)
