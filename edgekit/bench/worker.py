"""The benchmark worker: one fresh process per artifact, so the memory it reports is that artifact's own.

It runs on the device (`python -m edgekit.bench.worker`), reads one JSON object per line on stdin and
answers each with one JSON line on stdout. The harness drives several workers in turn (interleaved rounds),
so a worker holds its loaded model between requests and only ever times when asked. Anything that speaks
this protocol can be a worker, e.g. a native program on a phone behind `adb shell`.

Protocol (every reply carries `ok`; on failure `error`, and `user_error` when it is the artifact's fault):

    hello                                   -> env (host, cpu_model, cores, os, versions), pid, protocol
    load    artifact, threads, batch, seed  -> load_ms, first_inference_ms, cold_start_ms, rss_*_mb, runtime
    time    batch, min_iters, min_seconds, max_seconds, prime -> times_ns (one per timed inference)
    memory                                  -> peak_rss_mb (peak since just before load, minus RSS then)
    eval    inputs (.npy path, or .npz keyed by input name), outputs (.npz path) -> samples
    exit                                    -> (the process ends)

Memory: the runtime's Python module is imported first, then the RSS is read and the kernel's high-water
mark reset (Linux: `echo 5 > /proc/self/clear_refs`), then the model is loaded. `memory` reports the
high-water mark since then minus that RSS: what loading and running the model cost, without the
interpreter and the runtime library. Where the mark cannot be reset, the lifetime peak is used (and said).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL = 1
_MB = 2**20


# -- memory ---------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def peak_bytes() -> int:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# -- the worker -----------------------------------------------------------------------------------------
class Worker:
    """State of one worker: the artifact, its runner, and the inputs per batch size (made once, seeded)."""

    def __init__(self) -> None:
        self.runner: Any = None
        self.manifest: dict[str, Any] = {}
        self.inputs: dict[int, np.ndarray | dict[str, np.ndarray]] = {}
        self.seed = 0
        self.rss_before = 0
        self.peak_method = "VmHWM reset before load"

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            raise ValueError(f"unknown command {cmd!r}")
        return handler(msg)

    def cmd_hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        from edgekit.bench.environment import describe

        return {"env": describe(), "pid": os.getpid(), "protocol": PROTOCOL}

    def _input(self, batch: int) -> np.ndarray | dict[str, np.ndarray]:
        """Seeded inputs for timing: float noise for an image model (as always), valid random feeds (token ids
        inside the vocabulary, masks of ones then zeros, at the exported sequence length) for the others."""
        if batch not in self.inputs:
            model = self.manifest["model"]
            if model.get("inputs") and (len(model["inputs"]) > 1 or
                                        not str(model["inputs"][0].get("dtype", "")).startswith("float")):
                from edgekit.common.io import InputSpec, random_feeds

                specs = [InputSpec.from_json(d) for d in model["inputs"]]
                self.inputs[batch] = random_feeds(specs, batch, seed=self.seed)
            else:
                shape = (batch, *model["input_shape"][1:])
                rng = np.random.default_rng(self.seed)
                self.inputs[batch] = rng.standard_normal(shape, dtype=np.float32)
        return self.inputs[batch]

    def cmd_load(self, msg: dict[str, Any]) -> dict[str, Any]:
        from edgekit.artifact import load_artifact
        from edgekit.backends import registry

        art = load_artifact(msg["artifact"])  # checks the files again, on the device, after any transfer
        self.manifest = art.manifest
        self.seed = int(msg.get("seed", 0))
        spec = registry.get_spec(art.backend)
        runner_cls = registry.runner_class(art.backend)
        with contextlib.suppress(ImportError):  # the runtime library is not the model's memory: import it first
            importlib.import_module(spec.runtime_module)
        x = self._input(int(msg["batch"]))
        gc.collect()
        self.rss_before = rss_bytes()
        if not reset_peak():
            self.peak_method = "lifetime peak (high-water mark could not be reset)"
        t0 = time.perf_counter_ns()
        self.runner = runner_cls(art.path, art.manifest, threads=msg.get("threads") or None)
        self.runner.load()
        t1 = time.perf_counter_ns()
        self.runner.infer(x)
        t2 = time.perf_counter_ns()
        return {
            "load_ms": (t1 - t0) / 1e6, "first_inference_ms": (t2 - t1) / 1e6, "cold_start_ms": (t2 - t0) / 1e6,
            "rss_before_load_mb": self.rss_before / _MB, "rss_after_load_mb": rss_bytes() / _MB,
            "runtime": spec.runtime_module, "runtime_version": self.runner.runtime_version,
            "threads": self.runner.threads_used,
            "executes": getattr(self.runner, "executes", None),
        }

    def cmd_time(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Run until at least min_iters inferences and min_seconds have passed, or max_seconds (>= 1 run).

        `prime` untimed inferences come first: another worker ran in between and evicted this one's caches.
        The garbage collector is off while timing, as in timeit, so a collection is not charged to a run.
        """
        if self.runner is None:
            raise ValueError("'time' before 'load'")
        x = self._input(int(msg["batch"]))
        infer = self.runner.infer
        for _ in range(int(msg.get("prime", 0))):
            infer(x)
        min_iters = int(msg["min_iters"])
        min_ns = float(msg["min_seconds"]) * 1e9
        max_ns = float(msg["max_seconds"]) * 1e9
        times: list[int] = []
        clock = time.perf_counter_ns
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = clock()
            while True:
                t0 = clock()
                infer(x)
                t1 = clock()
                times.append(t1 - t0)
                elapsed = t1 - start
                if (len(times) >= min_iters and elapsed >= min_ns) or elapsed >= max_ns:
                    break
        finally:
            if gc_was_enabled:
                gc.enable()
        return {"times_ns": times, "seconds": (clock() - start) / 1e9}

    def cmd_memory(self, msg: dict[str, Any]) -> dict[str, Any]:
        peak = peak_bytes()
        return {"peak_rss_mb": (peak - self.rss_before) / _MB, "peak_rss_total_mb": peak / _MB,
                "rss_mb": rss_bytes() / _MB, "method": self.peak_method}

    def cmd_profile(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The runtime's per-op profile of the loaded artifact (edgekit.bench.opprofile)."""
        from edgekit.backends import registry
        from edgekit.bench.opprofile import profile

        if self.runner is None:
            raise ValueError("'profile' before 'load'")
        runtime = registry.get_spec(self.manifest["backend"]).runtime_module
        return {"profile": profile(self.runner, self._input(int(msg.get("batch", 1))), runtime,
                                   int(msg.get("iters", 20)))}

    def cmd_eval(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Outputs on the evaluation inputs, written to an .npz (out0, out1, ...) the harness compares."""
        from edgekit.backends.base import run_batched

        if self.runner is None:
            raise ValueError("'eval' before 'load'")
        loaded = np.load(msg["inputs"], allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):  # a model with named inputs: one array per input
            with loaded:
                x = {k: loaded[k] for k in loaded.files}
        else:
            x = loaded
        outs = run_batched(self.runner, x, batch=int(msg["batch"]) if msg.get("batch") else None)
        Path(msg["outputs"]).parent.mkdir(parents=True, exist_ok=True)
        np.savez(msg["outputs"], **{f"out{i}": o for i, o in enumerate(outs)})
        return {"samples": len(next(iter(x.values())) if isinstance(x, dict) else x)}

    def cmd_exit(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.runner is not None:
            self.runner.close()
        return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main() -> int:
    # The protocol owns the real stdout; whatever a runtime prints goes to stderr instead of corrupting it.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from edgekit.errors import EdgekitError

    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        msg: dict[str, Any] = {}
        try:
            msg = json.loads(line)
            reply = {"ok": True, **worker.handle(msg)}
        except EdgekitError as exc:
            reply = {"ok": False, "error": _first_line(exc), "user_error": True}
        except Exception as exc:  # reported to the harness, which fails this artifact only
            reply = {"ok": False, "error": f"{type(exc).__name__}: {_first_line(exc)}", "user_error": False,
                     "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
        if msg.get("cmd") == "exit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
