"""Calibration sets and activation ranges, computed once and reused by every backend.

A calibration set carries its provenance (source, count, sha256 of the exact samples, preprocessing) so a
manifest can say which data produced an artifact's ranges. Ranges are computed on the quantization-ready
graph (see `prepare_for_quantization`) and saved as JSON keyed by tensor name: ONNX Runtime's quantizer,
TensorRT's Q/DQ graph and its calibration cache all read the same numbers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.common.resources import builtin_dir, load_toml
from edgekit.common.schema import OptionSpec
from edgekit.data.calibration import CalibrationSet, Ranges
from edgekit.errors import EdgekitError

# method -> default options. Entropy and percentile use 2048 histogram bins: with ONNX Runtime's default
# (128) entropy returns exactly the min-max range (STACK-NOTES.md), which would make the choice meaningless.
METHODS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}

_SYMMETRIC = OptionSpec("symmetric", "bool", "symmetric ranges (centred on zero)", False)
_BINS = OptionSpec("num_bins", "int", "histogram bins", 2048, lo=16, hi=1 << 20)
#: what each method's options take, for recipes and `--calib-option` alike
METHOD_OPTIONS: dict[str, tuple[OptionSpec, ...]] = {
    "minmax": (_SYMMETRIC,),
    "entropy": (_SYMMETRIC, _BINS,
                OptionSpec("num_quantized_bins", "int", "bins of the quantized distribution", 128, lo=2,
                           hi=1 << 20)),
    "percentile": (_SYMMETRIC, _BINS,
                   OptionSpec("percentile", "float", "the percentile of |x| kept, e.g. 99.99", 99.999, lo=90,
                              hi=100)),
}


@dataclass(frozen=True)
class Recipe:
    """A calibration method and its options, checked at construction: from a recipe file, `--calib-method`
    and `--calib-option`. `source` is what errors name (the file, or the flag)."""

    method: str
    options: dict[str, Any]
    source: str = "--calib-option"

    def __post_init__(self) -> None:
        from edgekit.common import schema

        schema.string(self.source, "method", self.method, METHODS)
        opts = schema.table(self.source, "options", self.options)
        declared = {o.name: o for o in METHOD_OPTIONS[self.method]}
        schema.refuse_unknown(self.source, opts, declared, what=f"option(s) of calibration method '{self.method}'")
        merged = {**METHODS[self.method], **{k: declared[k].check(v, self.source) for k, v in opts.items()}}
        if self.method == "entropy" and merged["num_quantized_bins"] > merged["num_bins"]:
            raise schema.bad(self.source, "num_quantized_bins", merged["num_quantized_bins"],
                             f"at most num_bins ({merged['num_bins']})")
        object.__setattr__(self, "options", merged)


def load_recipe(path: Path) -> tuple[str, dict[str, Any]]:
    """A recipe file's method and options (options not yet checked: the command line may add to them)."""
    from edgekit.common import schema

    where = str(path)
    recipe = load_toml(path, "calibration recipe")
    schema.refuse_unknown(where, recipe, ("method", "options"))
    if "method" not in recipe:
        raise EdgekitError(f"{where}: missing required field 'method' (one of {', '.join(METHODS)})")
    method = schema.string(where, "method", recipe["method"], METHODS)
    return method, dict(schema.table(where, "options", recipe.get("options", {})))


def resolve_method(method: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """A method name, or a recipe .toml (built-in name or path) with `method` and options; `options` (from
    `--calib-option`) override the recipe's."""
    options = dict(options or {})
    recipe_path = None
    if method.endswith(".toml"):
        recipe_path = Path(method)
    elif method not in METHODS:
        candidate = builtin_dir("calibration") / f"{method}.toml"
        if candidate.is_file():
            recipe_path = candidate
    source = "--calib-option"
    if recipe_path is not None:
        if not recipe_path.is_file():
            raise EdgekitError(f"calibration recipe not found: {recipe_path}")
        method, recipe_options = load_recipe(recipe_path)
        options = {**recipe_options, **options}
        source = f"{recipe_path} (with --calib-option)" if options.keys() - recipe_options.keys() else str(recipe_path)
    if method not in METHODS:
        raise EdgekitError(
            f"unknown calibration method '{method}'; available: {', '.join(METHODS)} or a recipe in "
            f"{builtin_dir('calibration')}"
        )
    recipe = Recipe(method, options, source)
    return recipe.method, dict(recipe.options)


def file_sha256(path: Path) -> str:
    from edgekit.artifact import sha256_file

    return sha256_file(path)


def prepare_for_quantization(src: Path, dest: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, Conv+BatchNorm folding and other basic fusions).

    Ranges are keyed on this graph's tensor names, so every backend that quantizes starts from it.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    src, dest = Path(src).resolve(), Path(dest).resolve()
    # when symbolic shape inference is incomplete (transformers), ONNX Runtime saves its partial graph as
    # sym_shape_infer_temp.onnx plus a <uuid>.data file in the working directory: keep those out of the user's
    with tempfile.TemporaryDirectory(prefix="edgekit-preprocess-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; ONNX's own inference is enough
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=True)
    return dest


class _Reader:
    """ONNX Runtime CalibrationDataReader over named arrays, in batches."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int) -> None:
        self.feeds, self.batch, self.i = feeds, batch, 0
        self.n = len(next(iter(feeds.values())))

    def get_next(self):
        if self.i >= self.n:
            return None
        out = {k: v[self.i : self.i + self.batch] for k, v in self.feeds.items()}
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
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    in_vi = graph_inputs[0]
    batch_dim = in_vi.type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_value if batch_dim.HasField("dim_value") else 8
    extra = {"symmetric": bool(opts.get("symmetric", False))}
    extra.update({k: v for k, v in opts.items() if k != "symmetric"})
    with tempfile.TemporaryDirectory(prefix="edgekit-calib-") as tmp:
        calibrator = create_calibrator(
            Path(prepared_onnx), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method, extra_options=extra,
        )
        feeds = cset.feeds([vi.name for vi in graph_inputs])
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress lines on stdout
            # one batch per call: each calibrator keeps every intermediate tensor of what one call reads before
            # reducing it (about 80 MB per 240x240 image for an EfficientNet-Lite), and both the min-max and
            # the histogram calibrators merge successive calls
            for i in range(0, cset.count, batch):
                calibrator.collect_data(_Reader({k: v[i : i + batch] for k, v in feeds.items()}, batch))
            data = calibrator.compute_data()
        del calibrator
    tensors: dict[str, tuple[float, float]] = {}
    for name, td in data.data.items():
        lo, hi = td.range_value
        tensors[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return Ranges(method, opts, tensors, cset.provenance(), file_sha256(prepared_onnx))
