"""The benchmark record: one per artifact, batch size and device, JSON-ready.

Every record has every field of the contract, so a consumer (`edgekit recommend --results`, a CSV reader)
never meets a missing key; a field that does not apply is null. `status` says whether the numbers exist:
"ok" (measured), "skipped" (e.g. a batch size the artifact's fixed input cannot take) or "error" (the
artifact could not be measured; `error` says why). Consumers of results should keep `status == "ok"`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

SCHEMA = "edgekit.bench/1"

#: the contract's fields, in the order records are written
CONTRACT_FIELDS = (
    "artifact", "target", "precision", "device", "runtime", "runtime_version", "threads", "batch", "warmup",
    "iters", "latency_ms", "throughput_per_s", "cold_start_ms", "peak_rss_mb", "model_bytes", "accuracy",
    "agreement", "cosine", "sqnr_db",
)
#: where the figures were measured and on what (edgekit.bench.provenance); present in every record
PROVENANCE_FIELDS = ("executed_on", "stand_in_for", "measured_on", "eval_data")
DEVICE_FIELDS = ("host", "cpu_model", "cores", "os")
LATENCY_FIELDS = ("mean", "std", "p50", "p90", "p99", "min", "max")
#: fractions in [0, 1] everywhere (records, manifests, reports)
FRACTION_FIELDS = ("accuracy", "agreement")


def latency_summary(times_ns: Sequence[int]) -> dict[str, float]:
    """mean, std (sample, ddof=1), p50/p90/p95/p99 (linear interpolation), min, max, in milliseconds."""
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no timings")
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "mean": float(ms.mean()), "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99), "min": float(ms.min()),
        "max": float(ms.max()),
    }


def empty_record() -> dict[str, Any]:
    """A record with every contract field present and null: the skeleton both ok and failed records fill."""
    rec: dict[str, Any] = {"schema": SCHEMA, "status": "error", "error": None}
    rec.update(dict.fromkeys(CONTRACT_FIELDS))
    rec.update(dict.fromkeys(PROVENANCE_FIELDS))
    return rec


def validate_record(rec: dict[str, Any]) -> list[str]:
    """Problems with a record, as messages (empty when it follows the contract). Used by tests and readers."""
    problems = [f"missing field '{f}'" for f in (*CONTRACT_FIELDS, *PROVENANCE_FIELDS) if f not in rec]
    if problems:
        return problems
    if rec.get("status") != "ok":
        return [] if rec.get("error") or rec.get("status") == "skipped" else ["failed record without 'error'"]
    dev = rec["device"]
    if not isinstance(dev, dict):
        return ["'device' must be an object"]
    problems += [f"device lacks '{f}'" for f in DEVICE_FIELDS if dev.get(f) in (None, "")]
    lat = rec["latency_ms"]
    if not isinstance(lat, dict) or any(not isinstance(lat.get(k), float) for k in LATENCY_FIELDS):
        return [*problems, f"'latency_ms' must hold floats {', '.join(LATENCY_FIELDS)}"]
    if not lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]:
        problems.append("latency percentiles are not ordered min <= p50 <= p90 <= p99 <= max")
    if lat["std"] < 0 or not lat["min"] <= lat["mean"] <= lat["max"]:
        problems.append("latency mean/std inconsistent")
    for key in ("threads", "batch", "warmup", "iters", "model_bytes"):
        if not isinstance(rec[key], int) or isinstance(rec[key], bool) or rec[key] < 0:
            problems.append(f"'{key}' must be a non-negative integer")
    if isinstance(rec["batch"], int) and rec["batch"] < 1:
        problems.append("'batch' must be at least 1")
    if isinstance(rec["iters"], int) and rec["iters"] < 1:
        problems.append("'iters' must be at least 1")
    for key in ("throughput_per_s", "cold_start_ms", "peak_rss_mb"):
        if not isinstance(rec[key], float) or not math.isfinite(rec[key]):
            problems.append(f"'{key}' must be a finite number")
    for key in ("throughput_per_s", "cold_start_ms"):
        if isinstance(rec[key], float) and rec[key] <= 0:
            problems.append(f"'{key}' must be positive")
    for key in FRACTION_FIELDS:
        v = rec[key]
        if v is not None and not (isinstance(v, float) and 0.0 <= v <= 1.0):
            problems.append(f"'{key}' must be a fraction in [0, 1] or null (got {v!r})")
    cos = rec["cosine"]
    if cos is not None and not (isinstance(cos, dict) and all(
            isinstance(cos.get(k), float) and -1.0 - 1e-6 <= cos[k] <= 1.0 + 1e-6 for k in ("mean", "worst"))):
        problems.append(f"'cosine' must be null or {{mean, worst}} in [-1, 1] (got {cos!r})")
    if rec["sqnr_db"] is not None and not isinstance(rec["sqnr_db"], float):
        problems.append("'sqnr_db' must be a number or null (null: identical to the reference)")
    if not isinstance(rec["measured_on"], dict) or not rec["measured_on"].get("device_class"):
        problems.append("'measured_on' must say the measuring device's class")
    ev = rec["eval_data"]
    if not isinstance(ev, dict) or not isinstance(ev.get("calibration_data"), bool):
        problems.append("'eval_data' must say its source, sample count and whether it is the calibration data")
    for key in ("runtime", "runtime_version", "target", "precision", "artifact", "executed_on"):
        if not isinstance(rec[key], str) or not rec[key]:
            problems.append(f"'{key}' must be a non-empty string")
    return problems


def flatten(rec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects become prefixed columns: latency_ms.p50 -> latency_ms_p50, device.os -> device_os."""
    out: dict[str, Any] = {}
    for key, value in rec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}_"))
        elif isinstance(value, list | tuple):
            out[name] = ";".join(map(str, value))
        else:
            out[name] = value
    return out


def columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The union of keys in first-seen order, so CSV columns are stable and nothing is dropped."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


# -- how a measurement is asked for, and what one call returns -----------------------------------------
DEFAULT_WARMUP = 1
DEFAULT_WARMUP_SECONDS = 0.5
DEFAULT_ITERS = 50
DEFAULT_MIN_SECONDS = 1.0
DEFAULT_MAX_SECONDS = 150.0
DEFAULT_ROUNDS = 5
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class BenchConfig:
    """How long and how to measure; validated at construction, so a bad value fails before any work."""

    warmup: int = DEFAULT_WARMUP
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS
    iters: int = DEFAULT_ITERS
    min_seconds: float = DEFAULT_MIN_SECONDS
    max_seconds: float = DEFAULT_MAX_SECONDS
    rounds: int = DEFAULT_ROUNDS
    batches: tuple[int, ...] = (1,)
    threads: int = DEFAULT_THREADS  # 0: the runtime's own default
    eval_samples: int | None = None  # cap on evaluation samples (None: all)
    seed: int = 0
    #: False: one artifact at a time (one model in memory; small devices), with no protection against drift
    interleave: bool = True
    #: the runtime's per-op profile (edgekit.bench.opprofile) into each record, after the timed runs
    profile: bool = False
    #: how outputs are compared with the reference (None: per output, the metric its kind calls for)
    metric: str | None = None

    def __post_init__(self) -> None:
        from edgekit.common.metrics import METRICS

        checks = [
            (self.metric is None or self.metric in METRICS,
             f"unknown metric (--metric) '{self.metric}'; available: {', '.join(METRICS)}"),
            (self.warmup >= 0, f"warmup (--warmup) must be >= 0 (got {self.warmup})"),
            (self.warmup_seconds >= 0, f"warmup_seconds (--warmup-seconds) must be >= 0 (got {self.warmup_seconds})"),
            (self.iters >= 1, f"iters (--iters) must be >= 1 (got {self.iters})"),
            (self.min_seconds >= 0, f"min_seconds (--min-seconds) must be >= 0 (got {self.min_seconds})"),
            (self.max_seconds > 0, f"max_seconds (--max-seconds) must be > 0 (got {self.max_seconds})"),
            (self.max_seconds >= self.min_seconds,
             f"max_seconds ({self.max_seconds}) must be >= min_seconds ({self.min_seconds})"),
            (self.rounds >= 1, f"rounds (--rounds) must be >= 1 (got {self.rounds})"),
            (len(self.batches) >= 1 and all(b >= 1 for b in self.batches),
             f"batch sizes (batches=, --batch) must be positive integers (got {list(self.batches)})"),
            (self.threads >= 0, f"threads (--threads) must be >= 0, 0 for the runtime's default (got {self.threads})"),
            (self.eval_samples is None or self.eval_samples >= 1,
             f"eval_samples (--eval-samples) must be >= 1 (got {self.eval_samples})"),
        ]
        for ok, message in checks:
            if not ok:
                raise EdgekitError(message)
        object.__setattr__(self, "batches", tuple(sorted(dict.fromkeys(self.batches))))

    def settings(self) -> dict[str, Any]:
        return {"warmup_min_iters": self.warmup, "warmup_min_seconds": self.warmup_seconds,
                "min_iters": self.iters, "min_seconds": self.min_seconds, "max_seconds": self.max_seconds,
                "rounds": self.rounds, "interleaved": self.interleave}


@dataclass
class BenchResult:
    records: list[dict[str, Any]]
    failures: list[tuple[str, str]]  # (artifact, message)
    config: BenchConfig
    device: str

    @property
    def ok(self) -> bool:
        return not self.failures


def fixed_batch(manifest: dict[str, Any]) -> int | None:
    dim = manifest["inputs"][0]["shape"][0] if manifest["inputs"] and manifest["inputs"][0]["shape"] else None
    return dim if isinstance(dim, int) and dim > 0 else None


def model_bytes(manifest: dict[str, Any]) -> int:
    """The model file plus files that belong to it by name (e.g. model.onnx.data external weights)."""
    main = manifest["model_file"]
    return int(sum(meta["bytes"] for name, meta in manifest["files"].items() if name == main
                   or name.startswith(main + ".")))
