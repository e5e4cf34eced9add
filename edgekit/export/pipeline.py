"""The export pipeline: model -> verified ONNX -> (ranges, once) -> backend files -> accuracy check ->
manifest, written atomically.

`ExportPipeline` keeps the verified ONNX, the quantization-ready graph, the ranges and the reference
outputs between exports of the same model, so exporting to many targets calibrates once per
(data, method) and every backend's artifact is checked against the same FP32 outputs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.artifact import Artifact, check_destination, now_iso, staging, write_manifest
from edgekit.backends import registry
from edgekit.backends.base import Exporter, ExportRequest, run_batched
from edgekit.common.io import Feeds, InputSpec, random_feeds
from edgekit.common.metrics import METRICS, compare_outputs
from edgekit.data.calibration import DEFAULT_MAX_SAMPLES, CalibrationSet, Ranges, check_calibration, checked, load_data
from edgekit.data.datasets import as_dataset
from edgekit.errors import EdgekitError
from edgekit.export.tokens import transformer_quantizer
from edgekit.graph.onnx_export import OnnxModel, export_to_onnx, reference_outputs, source_is_quantized
from edgekit.models.source import SourceModel, load_model
from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization, resolve_method
from edgekit.targets import Target, load_target

_VERSIONED = ("torch", "onnx", "onnxruntime", "numpy", "onnxscript", "tensorflow", "ai-edge-litert", "onnx2tf",
              "torchao", "tensorrt")


#: at most this many samples of a model with token inputs go through range calibration (see ExportPipeline.ranges)
TOKEN_RANGE_SAMPLES = 32


def tool_versions() -> dict[str, str]:
    from edgekit.bench.environment import installed_versions

    return {"edgekit": __version__, **installed_versions(_VERSIONED)}


def check_opset(target: Target, opset: int | None) -> tuple[int, int]:
    """The opset range to export at: the one asked for, which must lie in the target's range, else the range."""
    if opset is None:
        return target.opset_min, target.opset_max
    if isinstance(opset, bool) or not isinstance(opset, int) or not target.opset_min <= opset <= target.opset_max:
        raise EdgekitError(f"opset {opset!r} is outside target {target.name}'s range {target.opset_min}-"
                           f"{target.opset_max}; give an opset in that range (opset=, --opset) or leave it out")
    return opset, opset


def default_out(src: SourceModel, target: Target, precision: str) -> Path:
    return Path(f"{src.name}-{target.name}-{precision}")


def data_feeds(data: CalibrationSet) -> np.ndarray | Feeds:
    """What a runner or reference takes for `data`: the bare array of an image model, else the named arrays."""
    return data.named if data.named and "x" not in data.named else data.x


def is_text_data(data: Any) -> bool:
    """Sentences (a .txt file, zoo:sentences) become inputs through the model's own tokenizer, so they are
    loaded once the model is."""
    return isinstance(data, str | Path) and (str(data).endswith(".txt") or str(data).startswith("zoo:sentences"))


class ExportPipeline:
    """Exports one model to any number of targets; the ONNX, ranges and references are made once."""

    def __init__(self, model: Any, input_shape: tuple[int, ...] | str | None = None,
                 log: Callable[[str], None] | None = None, *, input_spec: list[InputSpec] | str | None = None,
                 dynamic: tuple[str, ...] = (), task: str | None = None, metric: str | None = None) -> None:
        if metric is not None and metric not in METRICS:
            raise EdgekitError(f"unknown --metric '{metric}'; available: {', '.join(METRICS)}")
        self.src = load_model(model, input_shape, input_spec=input_spec, dynamic=dynamic, task=task)
        self.metric = metric
        self.log = log or (lambda _msg: None)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgekit-export-")
        self.workdir = Path(self._tmp.name)
        self._onnx: OnnxModel | None = None
        self._prepared: Path | None = None
        self._ranges: dict[tuple[str, str, str], Ranges] = {}
        self._references: dict[str, list[np.ndarray]] = {}

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> ExportPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared intermediates -------------------------------------------------------------------------
    def onnx(self, target: Target, real_inputs: np.ndarray | Feeds | None, opset: int | None = None) -> OnnxModel:
        """The verified ONNX export, made once and reused by every target whose opset range holds it."""
        lo, hi = check_opset(target, opset)
        if self._onnx is None or not lo <= self._onnx.opset <= hi:
            self.log(f"exporting {self.src.spec} to ONNX and checking it against the FP32 reference")
            path = self.workdir / f"fp32-opset{hi}.onnx"
            self._onnx = export_to_onnx(self.src, path, opset_range=(lo, hi), real_inputs=real_inputs)
            self._prepared = None
        return self._onnx

    def prepared(self) -> Path:
        if self._prepared is None:
            assert self._onnx is not None
            self._prepared = prepare_for_quantization(self._onnx.path, self.workdir / "prepared.onnx")
        return self._prepared

    def ranges(self, cset: CalibrationSet, method: str, options: dict[str, Any]) -> Ranges:
        key = (cset.sha256, method, repr(sorted(options.items())))
        if key not in self._ranges and not self.src.single_float and cset.count > TOKEN_RANGE_SAMPLES:
            # every activation of every sample is held while ranges are reduced: for a transformer at 128
            # tokens that is tens of MB per sample, so its shared ranges come from a seeded subset
            idx = np.sort(np.random.default_rng(0).permutation(cset.count)[:TOKEN_RANGE_SAMPLES])
            named = {k: v[idx] for k, v in (cset.named or {}).items()}
            cset = dataclasses.replace(cset, x=cset.x[idx], y=None if cset.y is None else cset.y[idx], named=named,
                                       selection=f"{TOKEN_RANGE_SAMPLES} of {cset.count} (seeded, for ranges)")
            key = (cset.sha256, method, repr(sorted(options.items())))
        if key not in self._ranges:
            self.log(f"calibrating: {method} ranges from {cset.count} samples of {cset.source}")
            self._ranges[key] = compute_ranges(self.prepared(), cset, method, options)
        return self._ranges[key]

    def reference(self, data: CalibrationSet) -> list[np.ndarray]:
        if data.sha256 not in self._references:
            self._references[data.sha256] = reference_outputs(self.src, data_feeds(data))
        return self._references[data.sha256]

    # -- one export -----------------------------------------------------------------------------------
    def export(
        self, target: str | Target, precision: str | None = None, *, calib: Any = None,
        calib_method: str = "minmax", calib_options: dict[str, Any] | None = None,
        calib_samples: int | None = DEFAULT_MAX_SAMPLES, eval_data: Any = None,
        out: Path | str | None = None, force: bool = False, exporter_options: dict[str, Any] | None = None,
        backend: str | None = None, min_agreement: float | None = None, max_accuracy_drop: float | None = None,
        techniques: Sequence[str] = (), budget_first_try: Sequence[str] | None = None, opset: int | None = None,
        min_sqnr_db: float | None = None, keep_best_effort: bool = False, int16_rung: bool = True,
        min_cosine: float | None = None,
    ) -> Artifact:
        """Validate everything first (nothing is written on bad input), then build the artifact.

        `calib` / `eval_data`: any form `edgekit.as_dataset` takes (a path, arrays, a DataLoader, ...).

        `min_agreement` / `max_accuracy_drop` (fractions) ask for a budgeted int8 export: the most sensitive
        layers are kept in higher precision until the budget holds on a held-out part of the calibration set
        (see edgekit.quant.fallback). `techniques` (equalize, range-choice, bias-correction; see
        edgekit.quant.ptq_improve) improve the int8 graph before that; the manifest reports what each one changed.
        `budget_first_try`:
        the all-int8 techniques a budget tries before keeping layers in float (None: fallback.FIRST_TRY;
        () for layer fallback alone). `min_sqnr_db` adds an output-SQNR goal to the budget; `int16_rung` lets
        the search give chosen layers int16 weights before keeping any in float (backends that run 16-bit Q/DQ).
        `opset`: the ONNX opset to export at, within the target's range. `min_cosine`: a budget on the mean
        cosine of the first output (an embedding) to FP32, for models with token inputs: their int8 forms
        (dynamic int8, static QDQ) keep the most sensitive projections float until it holds.

        A budget is judged on the `eval_data` when given, else on a held-out split of the calibration set large
        enough to resolve it, and the final check of the written artifact runs on the same data: when that
        check misses the budget the export raises (nothing written) unless `keep_best_effort`, which writes
        the artifact with `budget: {"status": "missed"}` in its manifest.
        """
        tgt = target if isinstance(target, Target) else load_target(target)
        if backend is not None:
            tgt = tgt.with_backend(backend)
        precision = tgt.check_precision(precision)
        check_opset(tgt, opset)
        out_path = Path(out) if out is not None else default_out(self.src, tgt, precision)
        check_destination(out_path, force)
        exporter: Exporter = registry.exporter_class(tgt.backend)(**(exporter_options or {}))
        if (exporter_options or {}).get("transformer"):
            from edgekit.quant import transformer as tq

            if precision in tq.PRECISIONS:  # a bad option name fails here, before any work
                tq.resolve_options(exporter_options["transformer"], precision)
        needs_data = precision in exporter.needs_calibration
        # models with token inputs calibrate inside ONNX Runtime's transformer quantizer, from the named feeds
        needs_ranges = precision in exporter.uses_ranges and (self.src.single_float
                                                              or not exporter.calibrates_token_models)
        method, method_opts = resolve_method(calib_method, calib_options)

        cset = self._calibration(calib, calib_samples)
        if needs_data and cset is None and not source_is_quantized(self.src):
            raise EdgekitError(
                f"precision '{precision}' needs calibration data: give calib= (an array, a dict of arrays, a "
                "DataLoader, or a .npz/.npy/zoo:digits path, .txt sentences for hf: models; --calib on the command "
                "line)"
            )
        evalset = self._evaluation(eval_data, cset)
        if evalset is not None and evalset is not cset and (
                min_agreement is not None or max_accuracy_drop is not None):
            from edgekit.quant.budget import Budget

            # before any work: a check set that cannot resolve the budget is refused
            Budget(min_agreement, max_accuracy_drop, min_sqnr_db, min_cosine).check_resolution(
                evalset.count, f"the --eval set {evalset.source}")
        onnx_model = self.onnx(tgt, data_feeds(evalset) if evalset is not None else None, opset)
        if onnx_model.quantization is not None and needs_ranges:
            # QAT (or the user's own Q/DQ) already fixed the ranges: no post-training calibration
            needs_data = needs_ranges = False
        if needs_data and cset is None:
            raise EdgekitError(f"precision '{precision}' needs calibration data and {self.src.spec} holds no "
                               "complete Q/DQ quantization: give calibration data (calib=, --calib)")
        improve = None
        budgeted = min_agreement is not None or max_accuracy_drop is not None or min_sqnr_db is not None \
            or min_cosine is not None
        if budgeted or techniques:
            check = evalset if eval_data is not None or evalset is not cset else None
            improve = self._improve_int8(tgt, precision, cset, onnx_model, method, method_opts, min_agreement,
                                         max_accuracy_drop, techniques, exporter_options or {}, budget_first_try,
                                         min_sqnr_db, check, int16_rung, min_cosine)
            exporter = improve["exporter"]
            evalset = improve["check"]
        ranges = self.ranges(cset, method, method_opts) if needs_ranges and improve is None else (
            improve["ranges"] if improve is not None else None)
        prepared = (improve["prepared"] if improve is not None else self.prepared()) if needs_ranges else None

        from edgekit.bench.worker import peak_bytes, reset_peak

        peak_reset = reset_peak()  # this export's own peak, not an earlier one's in the same process
        with staging(out_path, force) as stage:
            self.log(f"building {tgt.backend} {precision} artifact for target {tgt.name}")
            # with int8 techniques: the calibration part (the rest checks them), and for a backend that
            # converts the FP32 graph itself, the graph the techniques improved
            request_onnx = onnx_model if improve is None or improve.get("graph") is None else dataclasses.replace(
                onnx_model, path=improve["graph"])
            calibration = cset if improve is None else improve.get("calibration", cset)
            request = ExportRequest(request_onnx, tgt, precision, calibration, ranges, stage, prepared, self.src,
                                    None if self.src.single_float else transformer_quantizer(
                                        improve.get("transformer_options") if improve is not None else None))
            result = exporter.export(request)
            manifest: dict[str, Any] = {
                "manifest_version": 1,
                "edgekit_version": __version__,
                "created": now_iso(),
                "target": tgt.name,
                "backend": tgt.backend,
                "precision": precision,
                "model_file": result.model_file,
                "model": self._model_json(),
                "inputs": [t.to_json() for t in result.inputs],
                "outputs": [t.to_json() for t in result.outputs],
                "target_profile": {"device": tgt.device, "device_class": tgt.device_class, "cpu_arch": tgt.cpu_arch,
                                   "input_layout": tgt.input_layout, "source": tgt.source},
                "onnx_export": {"opset": onnx_model.opset, "producer": onnx_model.producer, **onnx_model.check},
                "backend_details": result.details,
            }
            if ranges is not None:
                ranges.save(stage / "calibration_ranges.json")
                manifest["calibration"] = {**ranges.calibration, "method": ranges.method,
                                           "options": ranges.options, "ranges_file": "calibration_ranges.json",
                                           "tensors": len(ranges.tensors)}
            elif onnx_model.quantization is not None:
                manifest["calibration"] = {"method": onnx_model.quantization,
                                           "source": "ranges fixed in the model's Q/DQ nodes (no PTQ calibration)"}
            elif needs_data and calibration is not None:
                method_used = result.details.get("calibration_method", f"{tgt.backend} converter")
                manifest["calibration"] = {**calibration.provenance(), "method": method_used}
            else:
                manifest["calibration"] = {"method": "none", "reason": f"{precision} needs no calibration"}
            if improve is not None:
                manifest.update(improve["manifest"])
                if improve.get("learned") is not None:
                    from edgekit.quant.adaround import check_artifact

                    # learned rounding only counts if the written file holds its integers: checked on the file
                    grid = check_artifact(tgt.backend, improve["learned"], stage / result.model_file)
                    if grid is not None:
                        manifest["learned_rounding_in_artifact"] = grid
            manifest["verification"] = self._verify(stage, manifest, evalset, cset)
            if improve is not None and improve["budget"] is not None:
                manifest["budget"] = self._final_check(improve["budget"], manifest["verification"], keep_best_effort)
            manifest["tool_versions"] = tool_versions()
            manifest["export_resources"] = {
                "peak_rss_mb": round(peak_bytes() / 2**20, 1),
                "how": "the exporting process's RSS high-water mark (VmHWM) " + (
                    "since this export began" if peak_reset else "over the process's lifetime (could not reset)")}
            manifest = write_manifest(stage, manifest)
        self.log(f"wrote {out_path}")
        return Artifact(out_path, manifest)

    def _final_check(self, budget, verification: dict[str, Any], keep_best_effort: bool) -> dict[str, Any]:
        """The budget judged on the written artifact's own check (the data the search used): met, or missed
        and refused (EdgekitError: nothing is written) unless the best effort was asked for."""
        from edgekit.quant.budget import ci_text, describe

        n = verification["samples"]
        status = "met" if budget.holds(verification) else "missed"
        record = {"status": status, **budget.to_json(), "checked_on": verification["data"], "samples": n}
        if verification.get("cosine") is not None:
            record["cosine"] = verification["cosine"]
            measured = describe(verification)
        else:
            record.update({"agreement": verification["agreement"], "agreement_ci95": verification["agreement_ci95"]})
            measured = (f"agreement {ci_text(verification['agreement'], n)}, SQNR "
                        f"{verification.get('sqnr_db') or 0:.1f} dB")
        if status == "missed":
            what = f"the budget {budget.to_json()} is missed on the final check: {measured} on {verification['data']}"
            if not keep_best_effort:
                raise EdgekitError(f"{what}; nothing written: relax the budget, try techniques= equalize / "
                                   "range-choice / bias-correction (--equalize, ...) or QAT, or pass "
                                   "keep_best_effort=True (--keep-best-effort) to write it anyway")
            self.log(f"{what}; writing the best effort (--keep-best-effort), manifest budget: missed")
        return record

    def _improve_int8(self, tgt: Target, precision: str, cset: CalibrationSet | None, onnx_model: OnnxModel,
                      method: str, method_opts: dict[str, Any], min_agreement: float | None,
                      max_accuracy_drop: float | None, techniques: Sequence[str],
                      exporter_options: dict[str, Any], budget_first_try: Sequence[str] | None = None,
                      min_sqnr_db: float | None = None, check: CalibrationSet | None = None,
                      int16_rung: bool = True, min_cosine: float | None = None) -> dict[str, Any]:
        """Budgeted fallback and PTQ techniques (quant.search, quant.ptq_improve): checks, then the search.

        `check` is the data the budget is judged on (the --eval set); None: a held-out split of `cset`."""
        from edgekit.backends.registry import check_budget_backend
        from edgekit.quant import fallback, ptq_improve

        if not self.src.single_float:
            from edgekit.export.tokens import budgeted_token_int8

            return budgeted_token_int8(self, tgt, precision, cset, onnx_model, fallback.Budget(
                min_agreement, max_accuracy_drop, min_sqnr_db, min_cosine), techniques, exporter_options, check)
        if min_cosine is not None:
            raise EdgekitError(f"min_cosine (--min-cosine) budgets the embedding output of models with token inputs; "
                               f"{self.src.spec} has one float input: use min_agreement or min_sqnr_db "
                               "(--min-agreement, --min-sqnr)")
        budget = None
        if min_agreement is not None or max_accuracy_drop is not None or min_sqnr_db is not None:
            budget = fallback.Budget(min_agreement, max_accuracy_drop, min_sqnr_db)
        ptq_improve.check_techniques(techniques)
        if precision != "int8":
            raise EdgekitError(f"min_agreement, max_accuracy_drop and the int8 techniques apply to precision "
                               f"int8 (got {precision})")
        if budget is not None:
            check_budget_backend(tgt.backend, f"target {tgt.name}")
        else:
            registry.check_technique_backend(tgt.backend, f"target {tgt.name}")
        spec = registry.get_spec(tgt.backend)
        techniques, not_applied = ptq_improve.for_backend(techniques, tgt.backend)
        for skip in not_applied:
            self.log(f"{skip['technique']} {skip['why']} (target {tgt.name})")
        if onnx_model.quantization is not None:
            raise EdgekitError(f"{self.src.spec} already carries its own Q/DQ quantization "
                               f"({onnx_model.quantization}); budgeted fallback re-quantizes an FP32 model: export "
                               "the FP32 model instead")
        if cset is None:
            raise EdgekitError("a budgeted int8 export needs calibration data (calib=, --calib)")
        if check is None:
            cal, held = fallback.split_calibration(cset, held_out=budget.samples_needed() if budget else None)
            what = "held out from the calibration set"
        else:
            cal, held, what = cset, check, f"the --eval set {check.source}"
        fallback.check_labels(budget, labels=held.y is not None)
        if budget is not None:
            budget.check_resolution(held.count, what)
        self.log(f"checking int8 on {held.count} samples {what}, never used for ranges")
        if not techniques and budget is None and not spec.qdq_style:
            # none of the asked techniques reaches this converter: a plain export, which says so
            return {"exporter": registry.exporter_class(tgt.backend)(**exporter_options), "ranges": None,
                    "prepared": self.prepared(), "check": held, "budget": None, "graph": None, "calibration": cal,
                    "learned": None, "manifest": {"ptq_techniques_not_applied": not_applied}}
        ranges = self.ranges(cal, method, method_opts)
        # the user's --backend-option values override the target's here as in the exporter: the search must
        # measure the int8 format the artifact will have
        # (for a backend that quantizes by itself: the declared Q/DQ stand-in of its int8 format)
        options = registry.standin_options(tgt.backend, {**tgt.backend_options, **exporter_options})
        setup = fallback.QuantSetup(tgt.backend, self.prepared(), ranges, options, held.x,
                                    self.reference(held)[0], held.y, self.workdir / "fallback")
        setup.workdir.mkdir(exist_ok=True)
        manifest: dict[str, Any] = {}
        if techniques:
            setup, steps = ptq_improve.apply(setup, techniques, cal, method, method_opts, log=self.log)
            manifest["ptq_techniques"] = steps
            if spec.qdq_standin:
                manifest["ptq_techniques_measured_on"] = (
                    f"ONNX Runtime Q/DQ stand-in of {tgt.backend}'s int8 format ({options}) with edgekit's "
                    f"{ranges.method} ranges, on {held.count} samples {what}; the {tgt.backend} converter then "
                    "quantizes the improved FP32 graph itself (the artifact's own check: verification)")
        if not_applied:
            manifest["ptq_techniques_not_applied"] = not_applied
        if budget is not None:
            # all-int8 techniques (equalisation) first, then layers in float only if the budget still fails
            setup, plan = fallback.budgeted_search(setup, budget, cal, method, method_opts, applied=techniques,
                                                   first_try=budget_first_try, int16_rung=int16_rung, log=self.log)
            plan.checked_on = f"{held.count} samples {what}"
            plan.cost = fallback.plan_cost(setup, plan)
            manifest["fallback"] = plan.to_json()
            extra = "".join(f" after {t}" for t in plan.techniques_applied)
            rung = f", {len(plan.int16)} with int16 weights" if plan.int16 else ""
            self.log(f"budget {'holds' if plan.holds else 'NOT met'} on the check data{extra} with "
                     f"{len(plan.kept)} layer(s) kept in {plan.kept_precision}{rung}: "
                     f"{', '.join(plan.kept) or 'none'}")
        else:
            plan = fallback.FallbackPlan(None, [], setup.kept_precision, {}, {}, [], [], len(held.x))
        graph = None
        if spec.qdq_style:
            exporter = fallback.budgeted_exporter(tgt.backend, plan, setup, exporter_options)
        else:
            # the backend's own converter quantizes: it gets the improved FP32 graph in place of the export
            exporter = registry.exporter_class(tgt.backend)(**exporter_options)
            graph = setup.prepared if techniques else None
        # a converter that calibrates by itself takes no ranges: the manifest then records its own calibration
        return {"exporter": exporter, "ranges": setup.ranges if spec.qdq_style else None,
                "prepared": setup.prepared, "manifest": manifest, "check": held, "budget": budget, "graph": graph,
                "calibration": cal, "learned": setup.prepared if "adaround" in techniques else None}

    def _model_json(self) -> dict[str, Any]:
        src = self.src
        out: dict[str, Any] = {"source": src.spec, "kind": src.kind, "input_shape": list(src.input_shape),
                               "inputs": [s.to_json() for s in src.inputs]}
        if src.outputs:
            out["outputs"] = [o.to_json() for o in src.outputs]
        if src.task:
            out["task"] = src.task
        return out

    def _load(self, spec: str | CalibrationSet, samples: int | None, what: str) -> CalibrationSet:
        tokenize = None
        if self.src.tokenizer is not None:
            from edgekit.models.hf import tokenize as hf_tokenize

            def tokenize(sentences: list[str]) -> Feeds:
                return hf_tokenize(self.src.tokenizer, sentences, self.src.inputs)

        if is_text_data(spec):
            cset = load_data(str(spec), max_samples=samples, tokenize=tokenize)
        else:
            cset = as_dataset(spec, what="calib=" if what.startswith("calibration") else "eval=",
                              max_samples=samples)
        return checked(cset, self.src.inputs, what)

    def diagnose(self, target: str | Target, calib: Any = None, *, backend: str | None = None,
                 calib_method: str = "minmax", calib_samples: int | None = DEFAULT_MAX_SAMPLES, samples: int = 64,
                 verify: int = 12, precision: str | None = None,
                 transformer_options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Where int8 loses accuracy on `target`: per-layer errors and the layers ranked by what keeping each
        in higher precision buys, measured on a held-out quarter of the calibration data.

        Models with token inputs (transformers) are diagnosed in the int8 form the target's exporter writes
        (`precision`: dynamic-int8 or int8, `transformer_options` e.g. {"static": True}): every projection and
        embedding table quantized alone, ranked by what it costs the first output in its own metric."""
        from edgekit.quant import fallback
        from edgekit.quant.diagnose import diagnose

        tgt = load_target(target)
        if backend is not None:
            tgt = tgt.with_backend(backend)
        if not registry.get_spec(tgt.backend).qdq_style:
            raise EdgekitError(f"diagnose quantizes for ONNX Q/DQ backends ({', '.join(registry.budget_backends())})"
                               f"; target {tgt.name} runs {tgt.backend}: for tflite, export it and compare the "
                               "artifacts instead (`edgekit diagnose ART --against ART`)")
        method, opts = resolve_method(calib_method)
        cset = self._calibration(calib, calib_samples)
        if cset is None:
            raise EdgekitError("diagnose needs calibration data (calib=, --calib; .txt sentences for hf: models)")
        if not self.src.single_float:
            from edgekit.export.tokens import diagnose_token_model

            return diagnose_token_model(self, tgt, cset, precision, samples, transformer_options or {})
        self.onnx(tgt, None)
        cal, held = fallback.split_calibration(cset)
        setup = fallback.QuantSetup(tgt.backend, self.prepared(), self.ranges(cal, method, opts),
                                    dict(tgt.backend_options), held.x[:samples], self.reference(held)[0][:samples],
                                    None, self.workdir / "diagnose")
        setup.workdir.mkdir(exist_ok=True)
        report = diagnose(setup, verify=verify, log=self.log)
        report.update({"model": self.src.spec, "target": tgt.name, "calibration": cal.provenance(),
                       "calibration_method": method})
        return report

    def _calibration(self, calib, samples) -> CalibrationSet | None:
        if calib is None and self.src.spec.startswith("zoo:digits"):
            calib = "zoo:digits"
        if calib is None:
            return None
        cset = self._load(calib, samples, "calibration set")
        if self.src.single_float:
            check_calibration(cset, self.log)  # too small, constant or repeated sets cannot calibrate
        return cset

    def _evaluation(self, eval_data, cset: CalibrationSet | None) -> CalibrationSet | None:
        if eval_data is None and cset is not None and cset.source == "zoo:digits:train":
            eval_data = "zoo:digits:test"
        if eval_data is None:
            return cset
        return self._load(eval_data, None, "evaluation set")

    def _verify(self, stage: Path, manifest: dict[str, Any], evalset: CalibrationSet | None,
                calibration: CalibrationSet | None = None) -> dict[str, Any]:
        """Run the new artifact with its own runner and compare each output with the FP32 reference."""
        if evalset is None:
            feeds = random_feeds(self.src.inputs, 32, seed=0)
            what = "random normal" if self.src.single_float else "random valid inputs"
            first = feeds[self.src.inputs[0].name]
            evalset = CalibrationSet(first, None, f"{what} (no calibration or evaluation data given)", {}, 32,
                                     "all 32", None if self.src.single_float else feeds)
        self.log(f"checking the artifact against FP32 on {evalset.count} samples of {evalset.source}")
        reference = self.reference(evalset)
        runner = registry.runner_class(manifest["backend"])(stage, manifest)
        with runner:
            got = run_batched(runner, data_feeds(evalset))
        outputs = [o.to_json() for o in self.src.outputs] or [
            {"name": t["name"], "metric": "agreement"} for t in manifest["outputs"]]
        result = compare_outputs(reference, got, outputs, evalset.y, self.metric)
        details = manifest.get("backend_details", {})
        result.update({"reference": manifest["onnx_export"].get("reference", "torch fp32"),
                       "data": evalset.source, "data_sha256": evalset.sha256,
                       "runtime": runner.runtime_version,
                       "verified_precision": details.get("verified_precision", manifest["precision"]),
                       # the same samples, or the same source the calibration samples were drawn from
                       "calibration_data": calibration is not None and (evalset.sha256 == calibration.sha256
                                                                        or evalset.source == calibration.source)})
        if details.get("not_verified"):
            result["not_verified"] = details["not_verified"]
        return result
