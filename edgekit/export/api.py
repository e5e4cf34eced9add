"""The export functions of the Python API: one model to one or several targets (`edgekit.export`), a single
export (`export_model`), and the int8 sensitivity report (`diagnose`). Data arguments take any form
`edgekit.as_dataset` takes; errors name the parameters, not command-line flags.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact, check_destination
from edgekit.backends import registry
from edgekit.common.facade import progress_log
from edgekit.common.io import InputSpec
from edgekit.data.calibration import DEFAULT_MAX_SAMPLES, CalibrationSet
from edgekit.data.datasets import as_dataset
from edgekit.errors import EdgekitError
from edgekit.export.pipeline import ExportPipeline, check_opset, default_out, is_text_data
from edgekit.models.source import SourceModel
from edgekit.targets import Target, load_target


def shape_from(data: CalibrationSet | str | Path | None) -> tuple[int, ...] | None:
    return None if not isinstance(data, CalibrationSet) or data.named else (1, *(int(d) for d in data.x.shape[1:]))


def diagnose(model: Any, target: str | Path | Target = "x86-server-cpu", calib: Any = None,
             progress: Callable[[str], None] | logging.Logger | None = None, *,
             input_shape: tuple[int, ...] | str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Where `model` loses accuracy in int8 on `target`: the report of ExportPipeline.diagnose (keyword
    arguments: backend, calib_method, calib_samples, samples, verify)."""
    cset = as_dataset(calib, what="calib=", max_samples=kwargs.get("calib_samples", DEFAULT_MAX_SAMPLES)) \
        if calib is not None else None
    if input_shape is None and not isinstance(model, str | Path | SourceModel):
        input_shape = shape_from(cset)
    with ExportPipeline(model, input_shape, log=progress_log(progress)) as pipeline:
        return pipeline.diagnose(target if isinstance(target, Target) else str(target), cset, **kwargs)


def export(model: Any, target: str | Path | Target | Sequence[str | Path | Target], precision: str | None = None,
           calib: Any = None, eval: Any = None, out: Path | str | None = None, force: bool = False,
           progress: Callable[[str], None] | logging.Logger | None = None, *,
           input_shape: tuple[int, ...] | str | None = None, calib_method: str = "minmax",
           calib_options: dict[str, Any] | None = None, calib_samples: int | None = DEFAULT_MAX_SAMPLES,
           backend: str | None = None, opset: int | None = None, min_agreement: float | None = None,
           max_accuracy_drop: float | None = None, techniques: Sequence[str] = (),
           budget_first_try: Sequence[str] | None = None, min_sqnr_db: float | None = None,
           keep_best_effort: bool = False, int16_rung: bool = True,
           input_spec: list[InputSpec] | str | None = None, dynamic: Sequence[str] = (), task: str | None = None,
           metric: str | None = None, min_cosine: float | None = None, **options: Any) -> Artifact | list[Artifact]:
    """Export `model` for `target` and return the Artifact; with a list of targets, a list of Artifacts that
    share one ONNX export, one calibration and one FP32 reference.

    `model`: an nn.Module, a .onnx or .pt2 path, `package.module:factory` or `zoo:NAME`. `target`: a name, a
    .toml path, a Target, or a list of them. `calib` / `eval`: any form `edgekit.as_dataset` takes (array,
    (x, y), tensor, dict of arrays, DataLoader, path, zoo:digits); an nn.Module given no `input_shape` takes
    its shape from them. `out`: the artifact folder (with several targets: the folder that holds one per
    target), default `MODEL-TARGET-PRECISION` here. `progress`: a function or logger that sees the stage
    lines. `min_agreement` / `max_accuracy_drop` / `min_cosine` are fractions; `min_sqnr_db`, `keep_best_effort` and
    `int16_rung` as in ExportPipeline.export. `input_spec` (InputSpecs or `input_ids:int64:1x128,...`) with
    `dynamic` axes describes named, typed inputs; `task` picks an hf: model's outputs; `metric` overrides each
    output's comparison. `**options` go to the backend's exporter
    (e.g. `require_engine=True`); an unknown one lists those accepted. Everything is validated before
    anything is written.
    """
    several = not isinstance(target, str | Path | Target)
    wanted = list(target) if several else [target]  # type: ignore[arg-type]
    if not wanted:
        raise EdgekitError("target= is an empty list: name at least one target (see edgekit.targets())")
    tgts = [t if isinstance(t, Target) else load_target(str(t)) for t in wanted]
    if backend is not None:
        tgts = [t.with_backend(backend) for t in tgts]
    names = [t.name for t in tgts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EdgekitError(f"target(s) given more than once: {', '.join(twice)}")
    if calib_samples is not None and calib_samples < 1:
        raise EdgekitError(f"calib_samples must be at least 1 (got {calib_samples})")
    for t in tgts:  # precisions, opsets and exporter options: all checked before any work
        check_opset(t, opset)
        registry.exporter_class(t.backend)(**options)
    cset = as_dataset(calib, what="calib=", max_samples=calib_samples) \
        if calib is not None and not is_text_data(calib) else calib
    evalset = as_dataset(eval, what="eval=", max_samples=None) if eval is not None and not is_text_data(eval) \
        else eval
    if input_shape is None and input_spec is None and not isinstance(model, str | Path | SourceModel):
        input_shape = shape_from(cset) or shape_from(evalset)
    log = progress_log(progress)
    with ExportPipeline(model, input_shape, log=log, input_spec=input_spec, dynamic=tuple(dynamic), task=task,
                        metric=metric) as pipeline:
        plan = []
        for t in tgts:
            prec = t.check_precision(precision)
            dest = Path(out) if out is not None and not several else (
                Path(out) / default_out(pipeline.src, t, prec) if out is not None else None)
            check_destination(dest if dest is not None else default_out(pipeline.src, t, prec), force)
            plan.append((t, dest))
        arts = [pipeline.export(t, precision, calib=cset, calib_method=calib_method, calib_options=calib_options,
                                calib_samples=calib_samples, eval_data=evalset, out=dest, force=force,
                                exporter_options=options or None, min_agreement=min_agreement,
                                max_accuracy_drop=max_accuracy_drop, techniques=techniques,
                                budget_first_try=budget_first_try, opset=opset, min_sqnr_db=min_sqnr_db,
                                keep_best_effort=keep_best_effort, int16_rung=int16_rung, min_cosine=min_cosine)
                for t, dest in plan]
    return arts if several else arts[0]


def export_model(model: Any, target: str | Target, precision: str | None = None, *,
                 input_shape: tuple[int, ...] | str | None = None, input_spec: list[InputSpec] | str | None = None,
                 dynamic: tuple[str, ...] = (), task: str | None = None, metric: str | None = None,
                 **kwargs: Any) -> Artifact:
    """One export: `edgekit export` as a function. See ExportPipeline.export for the keyword arguments."""
    with ExportPipeline(model, input_shape, input_spec=input_spec, dynamic=dynamic, task=task,
                        metric=metric) as pipeline:
        return pipeline.export(target, precision, **kwargs)
