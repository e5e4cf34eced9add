"""Budgets and diagnosis of models with token inputs (transformers): the int8 forms ONNX Runtime's
transformer quantizer writes (dynamic int8, static QDQ), with the most sensitive projections and embedding
tables kept float, measured with the first output's own metric (cosine for embeddings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import registry
from edgekit.data.calibration import CalibrationSet
from edgekit.errors import EdgekitError
from edgekit.graph.onnx_export import OnnxModel
from edgekit.targets import Target

#: the ExportPipeline a call comes from (typed loosely: the pipeline imports this module, not the reverse)
ExportPipeline = Any


def transformer_quantizer(extra: dict[str, Any] | None = None) -> Callable[..., dict[str, Any]] | None:
    """edgekit.quant.transformer's quantizer, adapted to what an exporter passes (the target's backend options,
    of which it takes the ones it knows, and the user's own transformer options), or None where that module
    is absent (the exporters then use ONNX Runtime's quantizers directly). `extra`: options the pipeline adds
    (a budget's `keep_float`)."""
    try:
        from edgekit.quant import transformer as tq
    except ImportError:
        return None
    known = set(getattr(tq, "OPTION_NAMES", ()))

    def run(src: Path, dest: Path, precision: str, feeds: Any, target_options: dict[str, Any],
            user_options: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in target_options.items() if k in known}
        options.update(user_options)
        for key, value in (extra or {}).items():
            options[key] = sorted({*options.get(key, []), *value}) if key == "keep_float" else value
        return tq.quantize_transformer(src, dest, precision, feeds, options)

    return run


def token_setup(pipeline: ExportPipeline, tgt: Target, precision: str, cal: CalibrationSet, held: CalibrationSet,
                 onnx_model: OnnxModel, user_options: dict[str, Any], workdir: Path):
    """The transformer int8 graph of `precision` for `tgt`, measured on `held` (quant.tgraph)."""
    from edgekit.common.io import batches
    from edgekit.quant.tgraph import make_setup

    if registry.get_spec(tgt.backend).qdq_style != "onnxruntime":
        raise EdgekitError(f"budgets and diagnosis of models with token inputs build ONNX Runtime's transformer "
                           f"int8 (dynamic or static QDQ); target {tgt.name} runs {tgt.backend}: pick an "
                           "onnxruntime target such as x86-server-cpu")
    names = [s.name for s in pipeline.src.inputs]
    feeds = list(batches(cal.feeds(names), 8))
    outputs = [o.to_json() for o in pipeline.src.outputs]
    return make_setup(onnx_model.path, precision, dict(tgt.backend_options), user_options,
                      held.feeds(names), pipeline.reference(held), outputs, feeds, workdir, pipeline.metric)


def budgeted_token_int8(pipeline: ExportPipeline, tgt: Target, precision: str, cset: CalibrationSet | None,
                        onnx_model: OnnxModel, budget, techniques: Sequence[str], exporter_options: dict[str, Any],
                        check: CalibrationSet | None) -> dict[str, Any]:
    """Budgeted fallback of a transformer's int8: the most sensitive projections (and embedding tables)
    kept float, chosen by quant.search on the transformer's own graphs, until the budget holds."""
    from edgekit.quant import fallback
    from edgekit.quant.budget import describe
    from edgekit.quant.diagnose import rank_token_layers

    if techniques:
        raise EdgekitError(f"techniques= (--equalize, --range-choice, --bias-correction) work on models with one "
                           f"float input; {pipeline.src.spec} takes {', '.join(s.name for s in pipeline.src.inputs)}")
    first = pipeline.src.outputs[0].to_json().get("metric") if pipeline.src.outputs else "agreement"
    by_agreement = (pipeline.metric or first) == "agreement"
    if (budget.min_agreement is not None or budget.max_accuracy_drop is not None) and not by_agreement:
        raise EdgekitError(f"{pipeline.src.spec}'s first output is compared by cosine, not top-1 agreement: "
                           "budget it with min_cosine= (--min-cosine C, e.g. 0.99) or min_sqnr_db= (--min-sqnr DB)")
    if precision not in ("int8", "dynamic-int8"):
        raise EdgekitError(f"a budget applies to the int8 forms (int8, dynamic-int8); got precision {precision}")
    if onnx_model.quantization is not None:
        raise EdgekitError(f"{pipeline.src.spec} already carries its own Q/DQ quantization; a budget re-quantizes an "
                           "FP32 model: export the FP32 model instead")
    if cset is None:
        raise EdgekitError("a budgeted int8 export needs calibration data (calib=, --calib; .txt sentences for "
                           "hf: models)")
    if check is None:
        cal, held = fallback.split_calibration(cset, held_out=budget.samples_needed())
        what = "held out from the calibration set"
    else:
        cal, held, what = cset, check, f"the --eval set {check.source}"
    budget.check_resolution(held.count, what)
    user = dict(exporter_options.get("transformer") or {})
    setup = token_setup(pipeline, tgt, precision, cal, held, onnx_model, user, pipeline.workdir / "tfallback")
    pipeline.log(f"checking {precision} on {held.count} samples {what}, never used for calibration")
    start = setup.build_and_evaluate([], "full-int8")
    pipeline.log(f"full {precision}: {describe(start)}")
    ranking = None if budget.holds(start) else rank_token_layers(setup, log=pipeline.log)
    plan = fallback.search(setup, budget, ranking=ranking, log=pipeline.log, start=start)
    plan.checked_on = f"{held.count} samples {what}"
    record = plan.to_json()
    record["method"] = ("layers ranked by what each alone in int8 costs the first output (its metric), kept "
                        "float in that order until the budget held on the check data, then any layer not "
                        "needed for the budget dropped again")
    pipeline.log(f"budget {'holds' if plan.holds else 'NOT met'} on the check data with {len(plan.kept)} "
                 f"layer(s) kept float: {', '.join(plan.kept) or 'none'}")
    exporter = registry.exporter_class(tgt.backend)(**exporter_options)
    return {"exporter": exporter, "ranges": None, "prepared": None, "manifest": {"fallback": record},
            "check": held, "budget": budget, "transformer_options": {"keep_float": list(plan.kept)}}


def diagnose_token_model(pipeline: ExportPipeline, tgt: Target, cset: CalibrationSet, precision: str | None,
                         samples: int, options: dict[str, Any]) -> dict[str, Any]:
    """Every projection and embedding table quantized alone, ranked by what it costs the first output."""
    from edgekit.quant import fallback
    from edgekit.quant.diagnose import diagnose_tokens

    precision = precision or ("dynamic-int8" if "dynamic-int8" in tgt.precisions else "int8")
    tgt.check_precision(precision)
    onnx_model = pipeline.onnx(tgt, None)
    cal, held = fallback.split_calibration(cset)
    if held.count > samples:
        idx = np.arange(samples)
        held = dataclasses.replace(held, x=held.x[idx], named={k: v[idx] for k, v in (held.named or {}).items()},
                                   selection=f"{held.selection}; first {samples}")
    setup = token_setup(pipeline, tgt, precision, cal, held, onnx_model, options, pipeline.workdir / "diagnose")
    pipeline.log(f"diagnosing {precision} on {held.count} held-out samples: each candidate layer quantized alone")
    report = diagnose_tokens(setup, log=pipeline.log)
    report.update({"model": pipeline.src.spec, "target": tgt.name, "calibration": cal.provenance(),
                   "options": setup.options})
    return report
