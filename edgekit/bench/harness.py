"""What `edgekit bench` measures, and in which order.

Each artifact gets a fresh worker process on the device (its memory is its own) that loads it once: cold
start = load + first inference. The harness then times all artifacts *interleaved*: for each batch size,
`rounds` rounds, and in every round each artifact runs one block (artifact A, B, C, A, B, C, ...), so slow
drift of the machine (thermal state, a neighbour's load, frequency scaling) touches every artifact alike
instead of whichever happened to run last. Before its first block an artifact warms up (by count and by
time, like benchmark_model); every block starts with one untimed inference, because the other workers ran
in between and evicted its caches. After all blocks, each worker reports its peak memory and runs the
evaluation inputs, and the harness compares those outputs with the FP32 reference (`edgekit.common.metrics`,
the same definition the export check uses).

The FP32 reference, in order of preference:
1. `reference=` (`--reference MODEL_OR_ARTIFACT`): an artifact folder (typically the torch-eager or an fp32
   export), or a model the user names (zoo:NAME, .onnx, .pt2, package.module:factory);
2. the model named in the artifact's manifest (`model.source`) when it is data, not code: a built-in
   `zoo:` model, or an .onnx / .pt2 file (read with the safe loaders), run as the export check runs it, so
   bench and export report the same agreement. A `module:factory` source is imported only with
   `trust_model_source=True` (`--trust-model-source`), announced on stderr: an artifact received from
   someone else must not run their code;
3. an fp32 artifact of the same source in this run;
otherwise agreement and SQNR are null and one stderr line says why and how to get them.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench import provenance
from edgekit.bench import records as rec
from edgekit.bench.devices import Device, WorkerChannel, WorkerError, make_device
from edgekit.bench.records import BenchConfig as BenchConfig
from edgekit.bench.records import BenchResult as BenchResult
from edgekit.errors import EdgekitError

# Defaults follow TFLite's benchmark_model: warm-up of >= 1 run and >= 0.5 s, then >= 50 runs and >= 1 s,
# at most 150 s per artifact and batch size. Threads default to 1 so runtimes compare on equal terms.
RANDOM_EVAL_SAMPLES = 64
_LOAD_TIMEOUT_S = 900.0
_SLACK_S = 300.0


REFERENCE_HINT = ("for them pass --reference MODEL_OR_ARTIFACT, bench the fp32 artifact of the same model in this "
                  "run, or pass --trust-model-source to import the model the manifest names")


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


def _tokenizer_for(manifest: dict[str, Any]):
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


def _eval_data(ev: EvalSet, manifest: dict[str, Any]) -> dict[str, Any]:
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


class Harness:
    """One `run_bench` call. Split into steps so each is small; see the module docstring for the order."""

    def __init__(self, paths: Sequence[str | Path], config: BenchConfig, device: Device,
                 eval_data: Any, reference: str | Path | None, progress: bool,
                 log: Callable[[str], None], trust_model_source: bool = False) -> None:
        self.config = config
        self.device = device
        self.log = log
        self.progress = progress
        self.jobs = [Job(i, Path(p)) for i, p in enumerate(paths)]
        self.eval_data = eval_data
        self.reference_path = Path(reference) if reference is not None else None
        #: the reference is an artifact folder (else a model spec the user named, loaded with load_model)
        self.reference_is_artifact = self.reference_path is not None and (self.reference_path / "manifest.json"
                                                                          ).is_file()
        self.reference_model: Any = None
        self.trust_model_source = trust_model_source
        self._announced: set[str] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="edgekit-bench-host-")
        self.tmp = Path(self._tmp.name)
        self._staged_eval: dict[str, str] = {}
        self._references: dict[tuple[str, str], tuple[list[np.ndarray] | None, str]] = {}

    # -- bookkeeping ----------------------------------------------------------------------------------
    def fail(self, job: Job, message: str) -> None:
        job.error = message
        self.log(f"bench: {job.path}: error: {message}")
        if job.channel is not None:
            with contextlib.suppress(Exception):  # the worker is already gone: nothing left to release
                job.channel.close()
            job.channel = None

    def active(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    def ask(self, job: Job, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One request to the job's worker; a failure fails this artifact only and returns None."""
        assert job.channel is not None
        try:
            return job.channel.request(message, timeout=timeout)
        except WorkerError as exc:
            what = {"load": "cannot load it", "time": "failed while running",
                    "eval": "failed on the evaluation inputs"}.get(message["cmd"], f"'{message['cmd']}' failed")
            self.fail(job, f"{what}: {exc}")
            return None

    # -- steps ----------------------------------------------------------------------------------------
    def check_artifacts(self) -> None:
        from edgekit.artifact import load_artifact

        for job in self.jobs:
            try:
                art = load_artifact(job.path)
                job.manifest = art.manifest
                model = job.manifest.get("model") or {}
                if not model.get("input_shape") and not model.get("inputs"):
                    raise EdgekitError(f"artifact {job.path}: manifest.json lacks model.input_shape / model.inputs")
            except EdgekitError as exc:
                self.fail(job, str(exc))
                continue
            fixed = rec.fixed_batch(job.manifest)
            for b in self.config.batches:
                if fixed is not None and b != fixed:
                    job.skipped[b] = f"the artifact's input has a fixed batch of {fixed}"
                else:
                    job.batches.append(b)
            for b, why in job.skipped.items():
                self.log(f"bench: {job.path}: batch {b} skipped: {why}")

    def _evalset(self, data, specs, what: str = "evaluation set") -> EvalSet:
        from edgekit.data.calibration import checked

        data = checked(data, specs, what)
        single = len(specs) == 1 and specs[0].is_float and (data.named is None or "x" in data.named)
        return EvalSet(data.x, data.y, data.source, None if single else data.named)

    def choose_eval_sets(self) -> None:
        from edgekit.common.io import random_feeds
        from edgekit.data.calibration import load_data

        cache: dict[tuple[str, str], Any] = {}

        def load(spec: Any, manifest: dict[str, Any]):
            if not isinstance(spec, str | Path):  # already a data set when it came from Python in memory
                return spec
            spec = str(spec)
            text = spec.endswith(".txt") or spec.startswith("zoo:sentences")
            key = (spec, str(manifest["model"].get("source")) if text else "")
            if key not in cache:
                tokenize = _tokenizer_for(manifest) if text else None
                cache[key] = load_data(spec, max_samples=self.config.eval_samples, tokenize=tokenize)
            return cache[key]

        for job in self.active():
            specs = input_specs(job.manifest)
            if self.eval_data:
                try:
                    job.evalset = self._evalset(load(self.eval_data, job.manifest), specs)
                except EdgekitError as exc:
                    self.fail(job, str(exc))
                continue
            # no --eval: the data the export was checked on when it can be read here, else seeded noise
            spec = str((job.manifest.get("verification") or {}).get("data", ""))
            if spec.startswith("zoo:") or (spec.endswith((".npz", ".npy", ".txt")) and Path(spec).is_file()):
                try:
                    job.evalset = self._evalset(load(spec, job.manifest), specs)
                    continue
                except EdgekitError:
                    pass
            feeds = random_feeds(specs, RANDOM_EVAL_SAMPLES, seed=self.config.seed)
            single = len(specs) == 1 and specs[0].is_float
            what = "random normal" if single else "random valid inputs"
            job.evalset = EvalSet(feeds[specs[0].name], None, f"{what}, {RANDOM_EVAL_SAMPLES} samples (seed "
                                  f"{self.config.seed}; pass --eval DATA for real data)", None if single else feeds)

    def start_workers(self, jobs: list[Job], bar) -> None:
        for job in [j for j in jobs if j.ok]:
            bar.set_postfix_str(f"load {job.name}")
            try:
                job.channel = self.device.open_worker()
            except EdgekitError as exc:
                self.fail(job, str(exc))
                bar.update(1)
                continue
            hello = self.ask(job, {"cmd": "hello"}, timeout=_LOAD_TIMEOUT_S)
            if hello is None:
                continue
            job.env = hello["env"]
            try:  # a remote device's transfer can fail for one artifact (hash mismatch, runtime missing there)
                staged = self.device.stage(job.path)
            except EdgekitError as exc:
                self.fail(job, str(exc))
                bar.update(1)
                continue
            first = job.batches[0] if job.batches else rec.fixed_batch(job.manifest) or 1
            load = self.ask(job, {"cmd": "load", "artifact": staged, "batch": first,
                                  "threads": self.config.threads, "seed": self.config.seed},
                            timeout=_LOAD_TIMEOUT_S)
            if load is not None:
                job.load = load
            bar.update(1)

    def time_all(self, jobs: list[Job], bar) -> None:
        cfg = self.config
        block_iters = math.ceil(cfg.iters / cfg.rounds)
        block_min = cfg.min_seconds / cfg.rounds
        block_max = cfg.max_seconds / cfg.rounds
        for b in cfg.batches:
            for r in range(cfg.rounds):
                for job in [j for j in jobs if j.ok and b in j.batches]:
                    bar.set_postfix_str(f"batch {b} round {r + 1}/{cfg.rounds} {job.name}")
                    if r == 0 and (cfg.warmup or cfg.warmup_seconds):
                        warm = self.ask(job, {"cmd": "time", "batch": b, "min_iters": cfg.warmup,
                                              "min_seconds": cfg.warmup_seconds, "max_seconds": cfg.max_seconds,
                                              "prime": 0}, timeout=cfg.max_seconds + _SLACK_S)
                        if warm is None:
                            continue
                        job.warmups[b] = (len(warm["times_ns"]), warm["seconds"])
                    reply = self.ask(job, {"cmd": "time", "batch": b, "min_iters": block_iters,
                                           "min_seconds": block_min, "max_seconds": block_max, "prime": 1},
                                     timeout=block_max + _SLACK_S)
                    if reply is not None:
                        job.times.setdefault(b, []).extend(reply["times_ns"])
                        job.seconds[b] = job.seconds.get(b, 0.0) + reply["seconds"]
                    bar.update(1)
            # batch sizes run in increasing order, so this peak is the peak of the largest batch so far
            for job in [j for j in jobs if j.ok and b in j.batches]:
                mem = self.ask(job, {"cmd": "memory"}, timeout=60)
                if mem is not None:
                    job.memory[b] = mem

    def run_profiles(self, jobs: list[Job]) -> None:
        """After timing (so the profiler never disturbs the timed runs): one profile per artifact."""
        for job in [j for j in jobs if j.ok]:
            try:
                reply = job.channel.request({"cmd": "profile", "batch": job.batches[0] if job.batches else 1},
                                            timeout=_LOAD_TIMEOUT_S) if job.channel is not None else None
            except WorkerError as exc:  # a profiler failure does not fail the measurement
                job.profile = {"available": False, "reason": f"profiling failed: {exc}"}
                continue
            job.profile = reply["profile"] if reply else None

    def run_evaluation(self, jobs: list[Job], bar) -> None:
        for job in [j for j in jobs if j.ok]:
            bar.set_postfix_str(f"eval {job.name}")
            assert job.evalset is not None
            key = job.evalset.key
            try:
                if key not in self._staged_eval:
                    if job.evalset.feeds is not None:
                        local = self.tmp / f"eval-{key}.npz"
                        np.savez(local, **job.evalset.feeds)
                    else:
                        local = self.tmp / f"eval-{key}.npy"
                        np.save(local, job.evalset.x)
                    self._staged_eval[key] = self.device.stage(local)
                remote_out = self.device.scratch(f"outputs-{job.index}.npz")
                reply = self.ask(job, {"cmd": "eval", "inputs": self._staged_eval[key], "outputs": remote_out},
                                 timeout=_LOAD_TIMEOUT_S)
                if reply is not None:
                    local_out = self.device.fetch(remote_out, self.tmp)
                    with np.load(local_out) as data:
                        job.outputs = [data[f"out{i}"] for i in range(len(data.files))]
            except EdgekitError as exc:  # moving files to or from a remote device failed for this artifact
                self.fail(job, str(exc))
            bar.update(1)

    def close_workers(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.channel is not None:
                job.channel.close()
                job.channel = None

    # -- references and comparison --------------------------------------------------------------------
    def check_reference(self) -> None:
        """A bad --reference is a bad call: fail before measuring anything."""
        if self.reference_path is None:
            return
        if self.reference_is_artifact:
            from edgekit.artifact import load_artifact

            load_artifact(self.reference_path)
            return
        from edgekit.models.source import load_model

        spec = str(self.reference_path)
        if not spec.startswith("zoo:") and ":" not in spec and not Path(spec).suffix:
            raise EdgekitError(f"--reference {spec}: not an artifact folder (no manifest.json) nor a model "
                               "(zoo:NAME, .onnx, .pt2, package.module:factory)")
        shapes = [j.manifest["model"]["input_shape"] for j in self.active()]
        specs = [input_specs(j.manifest) for j in self.active()]
        if specs and not (len(specs[0]) == 1 and specs[0][0].is_float):  # named inputs: the reference takes them too
            self.reference_model = load_model(spec, input_spec=specs[0])
        else:
            self.reference_model = load_model(spec, tuple(shapes[0]) if shapes else None)

    def _reference_model_outputs(self, evalset: EvalSet) -> tuple[list[np.ndarray] | None, str]:
        from edgekit.graph.onnx_export import reference_outputs

        label = f"reference model {self.reference_path}"
        try:
            return reference_outputs(self.reference_model, evalset.data), label
        except Exception as exc:  # e.g. its input does not fit this artifact's evaluation data
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, f"unavailable: {label} could not run on this artifact's inputs ({reason})"

    def _reference_artifact_outputs(self, evalset: EvalSet) -> tuple[list[np.ndarray] | None, str]:
        from edgekit.artifact import load_artifact
        from edgekit.backends.base import run_batched

        assert self.reference_path is not None
        if not self.reference_is_artifact:
            return self._reference_model_outputs(evalset)
        label = f"reference artifact {self.reference_path}"
        for job in self.jobs:
            if job.ok and job.outputs is not None and job.path.resolve() == self.reference_path.resolve() \
                    and job.evalset is not None and job.evalset.key == evalset.key:
                return job.outputs, label
        try:
            art = load_artifact(self.reference_path)
            with art.runner(self.config.threads or None) as runner:
                return run_batched(runner, evalset.data), label
        except Exception as exc:  # e.g. its inputs do not fit this artifact's evaluation data
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, f"unavailable: {label} could not run here ({reason})"

    def _source_outputs(self, job: Job) -> tuple[list[np.ndarray] | None, str]:
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
        fp32 = [o for o in self.jobs if o is not job and o.ok and o.outputs is not None
                and o.manifest.get("precision") == "fp32"
                and o.manifest["model"].get("source") == source and o.evalset is not None
                and o.evalset.key == job.evalset.key]
        fp32.sort(key=lambda o: (o.manifest.get("backend") != "torch-eager", o.index))
        if fp32:
            return fp32[0].outputs, f"fp32 artifact {fp32[0].path} ({reason})"
        return None, f"unavailable: {reason}, and no fp32 artifact of it in this run"

    def reference_for(self, job: Job) -> tuple[list[np.ndarray] | None, str]:
        assert job.evalset is not None
        if self.reference_path is None:
            return self._source_outputs(job)  # per job: the fp32-artifact fallback is never the job itself
        key = (str(self.reference_path), job.evalset.key)
        if key not in self._references:
            self._references[key] = self._reference_artifact_outputs(job.evalset)
        return self._references[key]

    def compare_all(self) -> None:
        from edgekit.common.metrics import compare_outputs

        missing: list[tuple[Job, str]] = []
        for job in self.active():
            if job.outputs is None or job.evalset is None:
                continue
            ref, label = self.reference_for(job)
            ev = job.evalset
            quality: dict[str, Any] = {"data": ev.source, "samples": ev.count, "labels": ev.y is not None,
                                       "reference": label}
            if ref is not None and (len(ref) != len(job.outputs) or ref[0].shape != job.outputs[0].shape):
                quality["reference"] = (f"unusable: {label} gives outputs of shape {list(ref[0].shape)}, "
                                        f"the artifact {list(job.outputs[0].shape)}")
                ref = None
            if ref is not None:
                outputs = (job.manifest.get("model") or {}).get("outputs") or [
                    {"name": t["name"], "metric": "agreement"} for t in job.manifest.get("outputs", [])]
                cmp = compare_outputs(ref, job.outputs, outputs, ev.y, self.config.metric)
                quality.update({"agreement": cmp.get("agreement"), "sqnr_db": cmp["sqnr_db"],
                                "max_abs_err": cmp["max_abs_err"], "accuracy": cmp.get("accuracy"),
                                "reference_accuracy": cmp.get("reference_accuracy"), "cosine": cmp.get("cosine"),
                                "metric": cmp.get("metric")})
                if "outputs" in cmp:
                    quality["outputs"] = cmp["outputs"]
            elif ev.y is not None:
                from edgekit.common.metrics import accuracy

                quality["accuracy"] = accuracy(job.outputs[0], ev.y)
            if ref is None:
                missing.append((job, quality["reference"]))
            job.quality = quality
        if missing:  # one line for all, with what to do
            names = ", ".join(j.name for j, _ in missing)
            self.log(f"bench: no FP32 reference for {names}: agreement and SQNR left empty ({missing[0][1]}); "
                     f"{REFERENCE_HINT}")

    # -- records --------------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        from edgekit import __version__
        from edgekit.artifact import now_iso

        stamp = now_iso()
        bases = []
        for job in self.jobs:
            m = job.manifest
            base = rec.empty_record()
            base.update({
                "artifact": str(job.path), "name": job.name, "target": m.get("target"),
                "backend": m.get("backend"), "precision": m.get("precision"),
                "model": (m.get("model") or {}).get("source"),
                "device": {"kind": self.device.kind, "name": self.device.name,
                           **{k: v for k, v in job.env.items() if k != "versions"}},
                "runtime": job.load.get("runtime"), "runtime_version": job.load.get("runtime_version"),
                "runtime_versions": job.env.get("versions"), "threads": job.load.get("threads", self.config.threads),
                "model_bytes": rec.model_bytes(m) if m else None,
                "artifact_bytes": int(sum(f["bytes"] for f in m["files"].values())) if m else None,
                "settings": self.config.settings(), "edgekit_version": __version__, "timestamp": stamp,
            })
            if job.load:
                base.update(provenance.where(m.get("backend"), job.load.get("runtime"), job.load.get("executes"),
                                             job.env, self.device.name))
            if job.evalset is not None:
                base["eval_data"] = _eval_data(job.evalset, m)
            if self.config.profile:
                base["profile"] = job.profile
            bases.append((job, base))
        out = []
        for b in self.config.batches:  # batch-major, so a table reads one batch size at a time
            for job, base in bases:
                if not job.ok:
                    continue
                r = dict(base, batch=b)
                if b in job.skipped or not job.times.get(b):
                    r.update(status="skipped", error=job.skipped.get(b, "no timings"))
                else:
                    r.update(self._measured(job, b))
                out.append(r)
        # an artifact that could not be measured gets one record, whatever the batch sizes, after the others
        out += [dict(base, status="error", error=job.error) for job, base in bases if not job.ok]
        return out

    def _measured(self, job: Job, b: int) -> dict[str, Any]:
        lat = rec.latency_summary(job.times[b])
        mem = job.memory.get(b, {})
        warm_n, warm_s = job.warmups.get(b, (0, 0.0))
        q = job.quality
        return {
            "status": "ok", "error": None, "warmup": warm_n, "warmup_seconds": round(warm_s, 4),
            "iters": len(job.times[b]), "measured_seconds": round(job.seconds[b], 4), "latency_ms": lat,
            "throughput_per_s": b * 1e3 / lat["mean"],
            "cold_start_ms": job.load["cold_start_ms"], "load_ms": job.load["load_ms"],
            "first_inference_ms": job.load["first_inference_ms"],
            "peak_rss_mb": mem.get("peak_rss_mb"), "rss_before_load_mb": job.load["rss_before_load_mb"],
            "peak_rss_method": mem.get("method"),
            "accuracy": q.get("accuracy"), "agreement": q.get("agreement"), "sqnr_db": q.get("sqnr_db"),
            "cosine": q.get("cosine"),
            "eval": {k: v for k, v in q.items() if k not in ("accuracy", "agreement", "sqnr_db", "cosine")},
        }

    # -- the whole call -------------------------------------------------------------------------------
    def run(self) -> BenchResult:
        from tqdm import tqdm

        try:
            self.check_artifacts()
            self.choose_eval_sets()
            self.check_reference()
            n_active = len(self.active())
            blocks = sum(self.config.rounds for j in self.active() for _ in j.batches)
            with tqdm(total=2 * n_active + blocks, desc="bench", unit="step", file=sys.stderr,
                      disable=None if self.progress else True, leave=False, dynamic_ncols=True) as bar:
                # interleaved: every worker lives through all rounds; sequential: one artifact at a time
                groups = [self.active()] if self.config.interleave else [[j] for j in self.active()]
                for group in groups:
                    try:
                        self.start_workers(group, bar)
                        self.time_all(group, bar)
                        if self.config.profile:
                            self.run_profiles(group)
                        self.run_evaluation(group, bar)
                    finally:
                        self.close_workers(group)
            self.compare_all()
            records = self.records()
        finally:
            self._tmp.cleanup()
        failures = [(str(j.path), j.error or "") for j in self.jobs if not j.ok]
        return BenchResult(records, failures, self.config, self.device.name)


def measure_on(device: Device, artifacts: Sequence[str | Path], config: BenchConfig, *, eval_data: Any = None,
               reference: str | Path | None = None, progress: bool = False,
               log: Callable[[str], None] | None = None, trust_model_source: bool = False) -> BenchResult:
    """The measuring strategy is chosen here, from what the device declares: edgekit's worker wherever one
    runs (the device only moves files and starts it), else the runtime's own tools on the device."""
    if device.measuring == "runtime-tools":
        return device.run_tools(artifacts, config, eval_data=eval_data, log=log)  # type: ignore[attr-defined]
    with device:
        device.prepare(artifacts)
        return Harness(artifacts, config, device, eval_data, reference, progress, log or (lambda _m: None),
                       trust_model_source=trust_model_source).run()


def run_bench(artifacts: Sequence[str | Path], config: BenchConfig | None = None, *, device: str | Device = "local",
              eval_data: Any = None, reference: str | Path | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None, trust_model_source: bool = False) -> BenchResult:
    """Benchmark artifacts on a device, interleaved; one record per artifact and batch size.

    `reference`: the FP32 reference, an artifact folder or a model (zoo:NAME, .onnx, .pt2, module:factory).
    Without it, a manifest's `module:factory` source is imported only with `trust_model_source=True`.

    A corrupt or unloadable artifact fails alone: its records have status "error", the others are measured,
    and `BenchResult.failures` lists what failed. Bad settings, data or devices raise EdgekitError at once.
    """
    if not artifacts:
        raise EdgekitError("no artifacts to benchmark: name at least one artifact folder")
    config = config or BenchConfig()
    dev = make_device(device)
    started = time.monotonic()
    result = measure_on(dev, artifacts, config, eval_data=eval_data, reference=reference, progress=progress, log=log,
                        trust_model_source=trust_model_source)
    if log is not None:
        log(f"bench: {len(artifacts)} artifact(s) on {dev.name} in {time.monotonic() - started:.1f} s")
    return result
