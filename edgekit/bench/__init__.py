"""The benchmark harness (`edgekit bench`): latency, memory, size and accuracy of artifacts, per device.

Layout, so each piece can change alone:

- `harness`  what is measured and in which order (interleaved rounds), references, records;
- `worker`   the process that loads one artifact and times it (runs on the device, speaks JSON lines);
- `devices`  where workers run: a Device starts workers and moves files; `local` now, ssh/adb later;
- `records`  the benchmark record: its fields, statistics, validation, flattening;
- `report`   the terminal table, JSON, CSV and the latency-vs-accuracy Pareto plot.

Nothing heavy is imported here: the worker imports this package on the device before it measures memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.common.facade import make_callable, progress_log


def _path(artifact: Any) -> str | Path:
    """An Artifact (from edgekit.export) or the path of an artifact folder."""
    return artifact.path if hasattr(artifact, "path") and hasattr(artifact, "manifest") else artifact


def bench(artifacts: Any, eval: Any = None, *, device: Any = "local", reference: Any = None,
          trust_model_source: bool = False, progress: Callable[[str], None] | Any = None,
          **settings: Any) -> list[dict[str, Any]]:
    """Measure artifacts (Artifacts or folder paths; one or a list) on a device, interleaved, and return the
    benchmark records, one per artifact and batch size; a failed artifact's record has status "error".

    `eval`: data with the model's input shape, in any form `edgekit.as_dataset` takes (labels give
    accuracy); default: the data the export was checked on, when readable here. `settings` are BenchConfig's
    fields (warmup, iters, min_seconds, max_seconds, rounds, batches, threads, eval_samples, interleave).
    `reference`: the FP32 model or artifact agreement is measured against; without it a manifest's
    `module:factory` source is imported only when `trust_model_source=True` (artifacts are data, not code).
    `progress`: a function or logger that sees the bench lines.
    """
    from edgekit.bench.harness import run_bench
    from edgekit.bench.records import BenchConfig
    from edgekit.data.datasets import as_dataset

    items = [artifacts] if isinstance(artifacts, str | Path) or hasattr(artifacts, "manifest") else list(artifacts)
    config = BenchConfig(**settings)
    data = None
    if eval is not None:
        data = eval if isinstance(eval, str | Path) else as_dataset(eval, what="eval=",
                                                                      max_samples=config.eval_samples)
    result = run_bench([_path(a) for a in items], config, device=device, eval_data=data,
                       reference=None if reference is None else _path(reference), log=progress_log(progress),
                       trust_model_source=trust_model_source)
    return result.records


make_callable(__name__, "bench")
