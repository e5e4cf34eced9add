"""Where bench's FP32 reference outputs come from, in order of preference:

1. `reference=` (`--reference MODEL_OR_ARTIFACT`): an artifact folder (typically the torch-eager or an fp32
   export), or a model the user names (zoo:NAME, .onnx, .pt2, package.module:factory);
2. the model named in the artifact's manifest (`model.source`) when it is data, not code: a built-in `zoo:`
   model, or an .onnx / .pt2 file (read with the safe loaders), run as the export check runs it, so bench and
   export report the same agreement. A `module:factory` source is imported only with `trust_model_source`
   (`--trust-model-source`), announced: an artifact received from someone else must not run their code;
3. an fp32 artifact of the same source in this run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import registry
from edgekit.bench.jobs import EvalSet, Job, input_specs, source_is_data
from edgekit.errors import EdgekitError

REFERENCE_HINT = ("for them pass reference= (--reference MODEL_OR_ARTIFACT), bench the fp32 artifact of the same "
                  "model in this run, or pass trust_model_source=True (--trust-model-source) to import the model "
                  "the manifest names")


class References:
    """One bench run's reference outputs, each loaded and run once per (source, evaluation set)."""

    def __init__(self, reference: str | Path | None, trust_model_source: bool, threads: int | None,
                 log: Callable[[str], None]) -> None:
        self.path = Path(reference) if reference is not None else None
        #: the reference is an artifact folder (else a model spec the user named, loaded with load_model)
        self.is_artifact = self.path is not None and (self.path / "manifest.json").is_file()
        self.model: Any = None
        self.trust_model_source = trust_model_source
        self.threads = threads
        self.log = log
        self._announced: set[str] = set()
        self._references: dict[tuple[str, str], tuple[list[np.ndarray] | None, str]] = {}

    def check(self, active: list[Job]) -> None:
        """A bad --reference is a bad call: fail before measuring anything."""
        if self.path is None:
            return
        if self.is_artifact:
            from edgekit.artifact import load_artifact

            load_artifact(self.path)
            return
        from edgekit.models.source import load_model

        spec = str(self.path)
        if not spec.startswith("zoo:") and ":" not in spec and not Path(spec).suffix:
            raise EdgekitError(f"--reference {spec}: not an artifact folder (no manifest.json) nor a model "
                               "(zoo:NAME, .onnx, .pt2, package.module:factory)")
        shapes = [j.manifest["model"]["input_shape"] for j in active]
        specs = [input_specs(j.manifest) for j in active]
        if specs and not (len(specs[0]) == 1 and specs[0][0].is_float):  # named inputs: the reference takes them too
            self.model = load_model(spec, input_spec=specs[0])
        else:
            self.model = load_model(spec, tuple(shapes[0]) if shapes else None)

    def _model_outputs(self, evalset: EvalSet) -> tuple[list[np.ndarray] | None, str]:
        from edgekit.graph.onnx_export import reference_outputs

        label = f"reference model {self.path}"
        try:
            return reference_outputs(self.model, evalset.data), label
        except Exception as exc:  # e.g. its input does not fit this artifact's evaluation data
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, f"unavailable: {label} could not run on this artifact's inputs ({reason})"

    def _artifact_outputs(self, evalset: EvalSet, jobs: list[Job]) -> tuple[list[np.ndarray] | None, str]:
        from edgekit.artifact import load_artifact
        from edgekit.backends.base import run_batched

        assert self.path is not None
        if not self.is_artifact:
            return self._model_outputs(evalset)
        label = f"reference artifact {self.path}"
        for job in jobs:
            if job.ok and job.outputs is not None and job.path.resolve() == self.path.resolve() \
                    and job.evalset is not None and job.evalset.key == evalset.key:
                return job.outputs, label
        try:
            art = load_artifact(self.path)
            with art.runner(self.threads) as runner:
                return run_batched(runner, evalset.data), label
        except Exception as exc:  # e.g. its inputs do not fit this artifact's evaluation data
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, f"unavailable: {label} could not run here ({reason})"

    def _source_outputs(self, job: Job, jobs: list[Job]) -> tuple[list[np.ndarray] | None, str]:
        from edgekit.graph.onnx_export import reference_outputs
        from edgekit.models.source import load_model

        source = str(job.manifest["model"].get("source", ""))
        assert job.evalset is not None
        if source_is_data(source) or self.trust_model_source:
            if not source_is_data(source) and source not in self._announced:
                self._announced.add(source)
                self.log(f"bench: --trust-model-source: importing '{source}', named by {job.path}'s manifest, "
                         "to build the FP32 reference (this runs that code)")
            key = (source, job.evalset.key)
            if key not in self._references:  # one load and run per source and evaluation set
                try:
                    model = job.manifest["model"]
                    if model.get("inputs") and (len(model["inputs"]) > 1 or model.get("task") or not str(
                            model["inputs"][0].get("dtype", "float32")).startswith("float")):
                        src = load_model(source, input_spec=input_specs(job.manifest), task=model.get("task"))
                    else:
                        src = load_model(source, tuple(model["input_shape"]))
                    how = "torch" if src.kind != "onnx" else "ONNX Runtime, the given .onnx"
                    self._references[key] = (reference_outputs(src, job.evalset.data),
                                             f"FP32 source model {source} ({how})")
                except Exception as exc:  # the source may live elsewhere (another machine, a moved file)
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    self._references[key] = (None, f"source model not loadable here: {first}")
            outputs, reason = self._references[key]
            if outputs is not None:
                return outputs, reason
        else:
            reason = f"the manifest's source '{source}' is code, which bench does not import unless asked"
        # an fp32 artifact of the same model, preferring torch-eager (the model itself) over a converted one
        # (never the artifact itself: agreeing with itself says nothing)
        fp32 = [o for o in jobs if o is not job and o.ok and o.outputs is not None
                and o.manifest.get("precision") == "fp32"
                and o.manifest["model"].get("source") == source and o.evalset is not None
                and o.evalset.key == job.evalset.key]
        fp32.sort(key=lambda o: (not getattr(registry.find_spec(o.manifest.get("backend")), "runs_source", False),
                                 o.index))
        if fp32:
            return fp32[0].outputs, f"fp32 artifact {fp32[0].path} ({reason})"
        return None, f"unavailable: {reason}, and no fp32 artifact of it in this run"

    def outputs_for(self, job: Job, jobs: list[Job]) -> tuple[list[np.ndarray] | None, str]:
        """The FP32 outputs `job` is compared with and where they came from (or None and why not)."""
        assert job.evalset is not None
        if self.path is None:
            return self._source_outputs(job, jobs)  # per job: the fp32-artifact fallback is never the job itself
        key = (str(self.path), job.evalset.key)
        if key not in self._references:
            self._references[key] = self._artifact_outputs(job.evalset, jobs)
        return self._references[key]
