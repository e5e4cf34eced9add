"""Calibration sets and activation ranges, computed once and reused by every backend.

A calibration set carries its provenance (source, count, sha256 of the exact samples, preprocessing) so a
manifest can say which data produced an artifact's ranges. Ranges are computed on the quantization-ready
graph (see `prepare_for_quantization`) and saved as JSON keyed by tensor name: ONNX Runtime's quantizer,
TensorRT's Q/DQ graph and its calibration cache all read the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.resources import builtin_dir, load_toml

DEFAULT_MAX_SAMPLES = 300
MIN_SAMPLES = 1

# method -> default options. Entropy and percentile use 2048 histogram bins: with ONNX Runtime's default
# (128) entropy returns exactly the min-max range (STACK-NOTES.md), which would make the choice meaningless.
METHODS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


def byte_view(x: np.ndarray) -> np.ndarray:
    """The float32 bytes of `x` for hashing, without copying when it is already contiguous float32."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint8)


@dataclass
class CalibrationSet:
    x: np.ndarray  # float32, N x ...
    y: np.ndarray | None
    source: str
    preprocessing: dict[str, Any]
    available: int  # samples in the source before sub-sampling
    selection: str  # how the samples were chosen

    @property
    def count(self) -> int:
        return len(self.x)

    @functools.cached_property
    def sha256(self) -> str:
        """Hashed in place (a byte view, not a copy: `tobytes()` of 300 ImageNet-size samples is 180 MB more
        at the export's peak) and once per set."""
        h = hashlib.sha256()
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
            "labels": self.y is not None,
            "preprocessing": self.preprocessing,
        }


def _subsample(x: np.ndarray, y: np.ndarray | None, max_samples: int | None, seed: int):
    n = len(x)
    if max_samples is None or n <= max_samples:
        return x, y, f"all {n}"
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])
    return x[idx], (y[idx] if y is not None else None), f"{max_samples} of {n}, seeded random (seed {seed})"


def _load_zoo(spec: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], str]:
    from edgekit.data import zoo

    parts = spec.split(":")
    if parts[1] != "digits" or len(parts) > 3:
        raise EdgekitError(f"unknown data '{spec}'; available: zoo:digits (train split), zoo:digits:test")
    part = parts[2] if len(parts) == 3 else "train"
    if part not in ("train", "test"):
        raise EdgekitError(f"unknown split '{part}' in '{spec}'; use zoo:digits:train or zoo:digits:test")
    split = zoo.digits_split(part)
    return split.x, split.y, dict(zoo.PREPROCESSING, split=part), f"zoo:digits:{part}"


def _load_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], str]:
    if not path.is_file():
        raise EdgekitError(f"data file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data.files:
                    raise EdgekitError(f"{path} has no array 'x' (found: {', '.join(data.files) or 'none'})")
                x = data["x"]
                y = data["y"] if "y" in data.files else None
        elif path.suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        else:
            raise EdgekitError(f"data file {path} must be .npz (arrays x, optional y) or .npy")
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(f"cannot read data file {path}: {exc}") from None
    if not np.issubdtype(x.dtype, np.number):
        raise EdgekitError(f"{path}: array 'x' must be numeric (got dtype {x.dtype})")
    if y is not None and len(y) != len(x):
        raise EdgekitError(f"{path}: 'y' has {len(y)} labels but 'x' has {len(x)} samples")
    return x.astype(np.float32), y, {"applied_by_edgekit": "none (samples used as given)"}, str(path)


def load_data(spec: str, *, max_samples: int | None = DEFAULT_MAX_SAMPLES, seed: int = 0) -> CalibrationSet:
    """DATA is a .npz (x, optional y), a .npy, or zoo:digits[:train|:test]."""
    if spec.startswith("zoo:"):
        x, y, prep, source = _load_zoo(spec)
    else:
        x, y, prep, source = _load_file(Path(spec))
    if x.ndim == 0 or len(x) == 0:
        raise EdgekitError(f"data '{spec}' is empty: it has no samples")
    available = len(x)
    x, y, selection = _subsample(x, y, max_samples, seed)
    return CalibrationSet(np.ascontiguousarray(x, dtype=np.float32), y, source, prep, available, selection)


def check_matches(cset: CalibrationSet, input_shape: tuple[int, ...], what: str = "calibration set") -> None:
    """The samples must have the model's input shape without its batch dimension."""
    want = tuple(input_shape[1:])
    got = tuple(cset.x.shape[1:])
    if got != want:
        raise EdgekitError(
            f"{what} '{cset.source}' has samples of shape {got or '(scalar)'}, but the model input is "
            f"{'x'.join(map(str, input_shape))} (samples must be {want})"
        )


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


def resolve_method(method: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """A method name, or a recipe .toml (built-in name or path) with `method` and options."""
    options = dict(options or {})
    recipe_path = None
    if method.endswith(".toml"):
        recipe_path = Path(method)
    elif method not in METHODS:
        candidate = builtin_dir("calibration") / f"{method}.toml"
        if candidate.is_file():
            recipe_path = candidate
    if recipe_path is not None:
        if not recipe_path.is_file():
            raise EdgekitError(f"calibration recipe not found: {recipe_path}")
        recipe = load_toml(recipe_path, "calibration recipe")
        method = recipe.get("method", "")
        options = {**recipe.get("options", {}), **options}
    if method not in METHODS:
        raise EdgekitError(
            f"unknown calibration method '{method}'; available: {', '.join(METHODS)} or a recipe in "
            f"{builtin_dir('calibration')}"
        )
    merged = {**METHODS[method], **options}
    unknown = set(merged) - set(METHODS[method]) - {"symmetric"}
    if unknown:
        raise EdgekitError(f"calibration method '{method}' has no option(s) {', '.join(sorted(unknown))}")
    if method == "percentile" and not 90.0 <= float(merged["percentile"]) <= 100.0:
        raise EdgekitError(f"percentile must be within [90, 100] (got {merged['percentile']})")
    return method, merged


def file_sha256(path: Path) -> str:
    from edgekit.artifact import sha256_file

    return sha256_file(path)


def prepare_for_quantization(src: Path, dest: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, Conv+BatchNorm folding and other basic fusions).

    Ranges are keyed on this graph's tensor names, so every backend that quantizes starts from it.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    try:
        quant_pre_process(str(src), str(dest), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference fails on some graphs; ONNX's own inference is enough
        quant_pre_process(str(src), str(dest), skip_symbolic_shape=True)
    return dest


def _even_batch(n: int, cap: int) -> int:
    """The largest batch <= cap that divides n: ONNX Runtime's histogram collector stacks per-batch outputs
    and fails on a ragged last batch."""
    return next(b for b in range(min(cap, n), 0, -1) if n % b == 0)


class _Reader:
    """ONNX Runtime CalibrationDataReader over a numpy array, in batches."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.name, self.x, self.batch, self.i = name, x, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        out = {self.name: self.x[self.i : self.i + self.batch]}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0


def compute_ranges(
    prepared_onnx: Path, cset: CalibrationSet, method: str = "minmax", options: dict[str, Any] | None = None
) -> Ranges:
    """Run the calibration set through the prepared graph once and reduce to per-tensor ranges."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    method, opts = resolve_method(method, options)
    ort_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    model = onnx.load(str(prepared_onnx), load_external_data=False)
    in_vi = model.graph.input[0]
    batch_dim = in_vi.type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_value if batch_dim.HasField("dim_value") else _even_batch(cset.count, 32)
    extra = {"symmetric": bool(opts.get("symmetric", False))}
    extra.update({k: v for k, v in opts.items() if k != "symmetric"})
    with tempfile.TemporaryDirectory(prefix="edgekit-calib-") as tmp:
        calibrator = create_calibrator(
            Path(prepared_onnx), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method, extra_options=extra,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress lines on stdout
            calibrator.collect_data(_Reader(in_vi.name, cset.x, batch))
            data = calibrator.compute_data()
        del calibrator
    tensors: dict[str, tuple[float, float]] = {}
    for name, td in data.data.items():
        lo, hi = td.range_value
        tensors[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return Ranges(method, opts, tensors, cset.provenance(), file_sha256(prepared_onnx))
