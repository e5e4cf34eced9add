"""Read the text TFLite's `benchmark_model` prints into numbers a benchmark record can hold.

The tool (tensorflow/lite/tools/benchmark) prints, among settings and delegate logs:

    Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
    count=9 first=56903 curr=56276 min=56251 max=56903 avg=56415.2 std=245          <- warm-up runs (us)
    Running benchmark for at least 50 iterations and at least 1 seconds but ...
    count=50 first=56282 curr=56234 min=56227 max=56707 avg=56283.9 std=79 [p5=… median=… p95=…]
    Inference timings in us: Init: 7003, First inference: 56903, Warmup (avg): 56415.2, Inference (avg): 56283.9
    Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE ...
    Memory footprint delta from the start of the tool (MB): init=4.21094 overall=46.0859
    [Overall peak memory footprint (MB) via periodic monitoring: 52.1]

Newer builds prefix lines with "INFO: " (logcat: "I tflite  : "), older ones say "Peak memory footprint
(MB): init=… overall=…", and percentiles (p5/median/p95) appear only in newer builds. Numbers may be in
exponent form (2.95034e+06). Op-profiling tables repeat "count=" lines; only the one right after each
"Running benchmark" line is a run statistic. The tool gives no per-run times, so p90/p99 stay unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_RUNNING = re.compile(r"Running benchmark for at least")
_STAT = re.compile(r"(?:^|\s)count=(\d+)(.*)$")
_FIELD = re.compile(r"(\w+)=" + _NUM)
_SUMMARY = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, Warmup \(avg\): {_NUM}, "
                      rf"Inference \(avg\): {_NUM}")
_MEMORY = re.compile(rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                     rf"init={_NUM} overall={_NUM}")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}")
_INIT_SESSION = re.compile(rf"Initialized session in {_NUM}\s*ms")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): {_NUM}")
_THREADS = re.compile(r"(?:#threads used for CPU inference|Num threads): \[(\d+)\]")


@dataclass
class RunStat:
    """One `count=… first=… …` line, in microseconds (min/max/avg/std absent when all runs were equal)."""

    count: int
    values: dict[str, float] = field(default_factory=dict)

    @property
    def all_same(self) -> bool:
        return "avg" not in self.values

    def get(self, key: str) -> float | None:
        if key in self.values:
            return self.values[key]
        if self.all_same and key in ("min", "max", "avg"):
            return self.values.get("curr")
        if self.all_same and key == "std":
            return 0.0
        return None


@dataclass
class BenchmarkModelOutput:
    init_us: float
    first_inference_us: float
    warmup_avg_us: float
    inference_avg_us: float
    run: RunStat
    warmup: RunStat | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    peak_memory_mb: float | None = None  # periodic monitoring, when the tool ran it
    session_init_ms: float | None = None
    model_size_mb: float | None = None
    threads: int | None = None

    def latency_ms(self) -> dict[str, float | None]:
        """The record's latency_ms: mean/std/min/max from the run line, p50 from its median when printed;
        p90/p99 null (the tool keeps no per-run times)."""
        def ms(key: str) -> float | None:
            v = self.run.get(key)
            return None if v is None else v / 1000.0

        return {"mean": ms("avg"), "std": ms("std"), "p50": ms("median"), "p90": None, "p99": None,
                "min": ms("min"), "max": ms("max")}

    def extra_percentiles_ms(self) -> dict[str, float]:
        return {k: self.run.values[k] / 1000.0 for k in ("p5", "p95") if k in self.run.values}

    def memory_mb(self) -> tuple[float | None, str]:
        """(peak MB, how it was measured): the tool's numbers, which it itself calls APPROXIMATE."""
        if self.peak_memory_mb is not None and self.peak_memory_mb > 0:
            return self.peak_memory_mb, "benchmark_model periodic peak memory footprint (APPROXIMATE, per the tool)"
        if self.memory_overall_mb is not None:
            return self.memory_overall_mb, ("benchmark_model memory footprint delta from the tool's start "
                                            "(APPROXIMATE, per the tool)")
        return None, "not reported by benchmark_model"


def _stat(rest: str, count: int) -> RunStat:
    return RunStat(count, {k: float(v) for k, v in _FIELD.findall(rest)})


def parse(text: str) -> BenchmarkModelOutput:
    """Parse benchmark_model's stdout+stderr; EdgekitError quoting the last lines when it holds no timings."""
    stats: list[RunStat] = []
    expect_stat = False
    found: dict[str, Any] = {}
    for raw in text.replace("\r", "").splitlines():
        line = raw.strip()
        if _RUNNING.search(line):
            expect_stat = True
            continue
        m = _STAT.search(line)
        if m and expect_stat:
            stats.append(_stat(m.group(2), int(m.group(1))))
            expect_stat = False
            continue
        for key, pattern in (("summary", _SUMMARY), ("memory", _MEMORY), ("peak", _PEAK),
                             ("session", _INIT_SESSION), ("size", _MODEL_SIZE), ("threads", _THREADS)):
            hit = pattern.search(line)
            if hit and key not in found:
                found[key] = hit.groups()
    if "summary" not in found or not stats:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:] if line.strip())
        raise EdgekitError(f"benchmark_model printed no timings (is it TFLite's benchmark_model, and did the model "
                           f"load?); its last lines: {tail or '(nothing)'}")
    init, first, warm, inference = (float(v) for v in found["summary"])
    mem = found.get("memory")
    return BenchmarkModelOutput(
        init_us=init, first_inference_us=first, warmup_avg_us=warm, inference_avg_us=inference,
        run=stats[-1], warmup=stats[0] if len(stats) > 1 else None,
        memory_init_mb=float(mem[0]) if mem else None, memory_overall_mb=float(mem[1]) if mem else None,
        peak_memory_mb=float(found["peak"][0]) if "peak" in found else None,
        session_init_ms=float(found["session"][0]) if "session" in found else None,
        model_size_mb=float(found["size"][0]) if "size" in found else None,
        threads=int(found["threads"][0]) if "threads" in found else None,
    )
