"""The benchmark record (DESIGN.md): one per artifact, batch size and device, JSON-ready.

Every record has every field of the contract, so a consumer (`edgekit recommend --results`, a CSV reader)
never meets a missing key; a field that does not apply is null. `status` says whether the numbers exist:
"ok" (measured), "skipped" (e.g. a batch size the artifact's fixed input cannot take) or "error" (the
artifact could not be measured; `error` says why). Consumers of results should keep `status == "ok"`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SCHEMA = "edgekit.bench/1"

#: the fields DESIGN.md names, in the order records are written
CONTRACT_FIELDS = (
    "artifact", "target", "precision", "device", "runtime", "runtime_version", "threads", "batch", "warmup",
    "iters", "latency_ms", "throughput_per_s", "cold_start_ms", "peak_rss_mb", "model_bytes", "accuracy",
    "agreement", "sqnr_db",
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
