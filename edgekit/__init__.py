"""edgekit: export, calibrate, benchmark and pick precisions for distilled PyTorch models on edge hardware.

The public Python API, what the `edgekit` command calls:

    import edgekit
    art = edgekit.export(model, "x86-server-cpu", precision="int8", calib=samples)
    records = edgekit.bench([art], eval=(x, y))
    choice = edgekit.recommend("x86-server-cpu", results=records)

Every name is imported on first use (PEP 562), so `import edgekit` and `edgekit --help` load no torch, ONNX
Runtime or TensorFlow. `edgekit.export`, `edgekit.bench`, `edgekit.recommend` and `edgekit.targets` are
also modules (`edgekit.export.ExportPipeline`); they are callable, so both uses work in any import order.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute); attribute None: the (callable) module itself
_API: dict[str, tuple[str, str | None]] = {
    "export": ("edgekit.export", None),
    "bench": ("edgekit.bench", None),
    "recommend": ("edgekit.recommend", None),
    "targets": ("edgekit.targets", None),
    "load_artifact": ("edgekit.artifact", "load_artifact"),
    "load_target": ("edgekit.targets", "load_target"),
    "as_dataset": ("edgekit.data.datasets", "as_dataset"),
    "diagnose": ("edgekit.export", "diagnose"),
    "distill": ("edgekit.train.distill.stage", "distill"),
    "qat": ("edgekit.train.qat", "qat"),
    "Artifact": ("edgekit.artifact", "Artifact"),
    "Target": ("edgekit.targets", "Target"),
    "ExportPipeline": ("edgekit.export", "ExportPipeline"),
    "BenchConfig": ("edgekit.bench.records", "BenchConfig"),
    "EdgekitError": ("edgekit.errors", "EdgekitError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'edgekit' has no attribute '{name}'") from None
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
