"""Read the text ONNX Runtime's `onnxruntime_perf_test` prints into numbers a benchmark record can hold.

The tool (onnxruntime/test/perftest, performance_runner.cc) prints after its runs:

    Session creation time cost: 0.217932 s
    First inference time cost: 196 ms                       <- the one warm-up run (newer builds; whole ms)
    Total inference time cost: 0.49481 s
    Total inference requests: 5
    Average inference time cost total: 98.961997 ms         <- older builds: "Average inference time cost:"
    Total inference run time: 0.494854 s
    Number of inferences per second: 10.104                 <- newer builds
    Avg CPU usage: 11 %
    Peak working set size: 271122432 bytes                  <- getrusage ru_maxrss of the whole process
    [Avg CPU usage:11 / Peak working set size:271122432 / Runs:5]   <- with no result file
    [Min Latency: 0.0958204 s ... P50/P90/P95/P99/P999 Latency: ... s]   <- with -s (or no result file)

Latencies of the statistics are in seconds, the average in milliseconds. The tool prints no standard
deviation. Older builds said "Min Latency is 0.05 sec"; both forms are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgekit.errors import EdgekitError

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PATTERNS = {
    "session_s": re.compile(rf"Session creation time cost:\s*{_NUM}\s*s\b"),
    "first_ms": re.compile(rf"First inference time cost:\s*{_NUM}\s*ms\b"),
    "total_s": re.compile(rf"Total inference time cost:\s*{_NUM}\s*s\b"),
    "requests": re.compile(r"Total inference requests:\s*(\d+)"),
    "average_ms": re.compile(rf"Average inference time cost(?: total)?:\s*{_NUM}\s*ms\b"),
    "run_s": re.compile(rf"Total inference run time:\s*{_NUM}\s*s\b"),
    "per_second": re.compile(rf"Number of inferences per second:\s*{_NUM}"),
    "cpu_percent": re.compile(rf"(?:Avg|Total) CPU usage:\s*{_NUM}"),
    "peak_bytes": re.compile(r"Peak working set size:\s*(\d+)"),
    "runs": re.compile(r"^Runs:\s*(\d+)"),
}
_STAT = re.compile(rf"^(Min|Max|P50|P90|P95|P99|P999) Latency(?::| is)\s*{_NUM}\s*s")


@dataclass
class PerfTestOutput:
    average_ms: float
    requests: int
    session_creation_ms: float | None = None
    first_inference_ms: float | None = None  # newer builds only; whole milliseconds
    total_s: float | None = None
    run_s: float | None = None
    per_second: float | None = None
    cpu_percent: float | None = None
    peak_working_set_bytes: int | None = None
    stats_ms: dict[str, float] = field(default_factory=dict)  # min/max/p50/p90/p95/p99/p999, with -s

    def latency_ms(self) -> dict[str, float | None]:
        """The record's latency_ms: mean from the average line; min/max/p50/p90/p99 from -s statistics when
        printed (null otherwise); std null (the tool does not print it)."""
        s = self.stats_ms
        return {"mean": self.average_ms, "std": None, "p50": s.get("p50"), "p90": s.get("p90"),
                "p99": s.get("p99"), "min": s.get("min"), "max": s.get("max")}

    def extra_percentiles_ms(self) -> dict[str, float]:
        return {k: self.stats_ms[k] for k in ("p95", "p999") if k in self.stats_ms}

    def memory_mb(self) -> tuple[float | None, str]:
        """(peak MB, how it was measured): the whole process's peak working set, not a delta from before the
        model was loaded, so it includes the tool itself and its generated inputs: approximate."""
        if self.peak_working_set_bytes is None:
            return None, "not reported by onnxruntime_perf_test"
        return self.peak_working_set_bytes / 2**20, ("onnxruntime_perf_test peak working set of the whole process "
                                                    "(getrusage max RSS; includes the tool and its inputs, not a "
                                                    "delta from before loading: APPROXIMATE)")


def parse(text: str) -> PerfTestOutput:
    """Parse onnxruntime_perf_test's stdout+stderr; EdgekitError quoting the last lines when it holds no timings."""
    found: dict[str, str] = {}
    stats: dict[str, float] = {}
    for raw in text.replace("\r", "").splitlines():
        line = raw.strip()
        m = _STAT.match(line)
        if m:
            stats.setdefault(m.group(1).lower(), float(m.group(2)) * 1e3)
            continue
        for key, pattern in _PATTERNS.items():
            hit = pattern.search(line)
            if hit and key not in found:
                found[key] = hit.group(1)
    requests = found.get("requests") or found.get("runs")
    if "average_ms" not in found or not requests or int(requests) < 1:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:] if line.strip())
        raise EdgekitError(f"onnxruntime_perf_test printed no timings (is it ONNX Runtime's onnxruntime_perf_test, "
                           f"built with ORT-format model support, and did the model load?); its last lines: "
                           f"{tail or '(nothing)'}")

    def num(key: str, scale: float = 1.0) -> float | None:
        return float(found[key]) * scale if key in found else None

    return PerfTestOutput(
        average_ms=float(found["average_ms"]), requests=int(requests),
        session_creation_ms=num("session_s", 1e3), first_inference_ms=num("first_ms"), total_s=num("total_s"),
        run_s=num("run_s"), per_second=num("per_second"), cpu_percent=num("cpu_percent"),
        peak_working_set_bytes=int(found["peak_bytes"]) if "peak_bytes" in found else None, stats_ms=stats,
    )
