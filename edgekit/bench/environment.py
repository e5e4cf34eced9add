"""What a record says about the machine it was measured on. Runs inside the worker, i.e. on the device, so a
remote device reports its own CPU and runtime versions, not the host's. Standard library only (psutil when
present), because a device may have little more than Python and the runtime.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from typing import Any

from edgekit.graph.ort_session import cpu_flags

# packages whose versions go into every record when installed (pip names)
VERSIONED = ("numpy", "onnxruntime", "torch", "ai-edge-litert", "tensorflow", "tensorrt", "edgekit")


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux (x86 'model name', Arm 'Hardware'/'Model'), else platform."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
            for k, v in fields.items():
                if k.strip() == key and v.strip():
                    return v.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def int8_isa() -> list[str]:
    """The x86 vector extensions that decide int8 kernel speed (and ONNX Runtime's saturation), for reports."""
    flags = cpu_flags() or set()
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"))


def physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def memory_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**20, 1)
    except ImportError:
        return None


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """python's version and those of the named packages that are installed (pip names)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def runtime_versions() -> dict[str, str]:
    return installed_versions(VERSIONED)


def describe() -> dict[str, Any]:
    """host, cpu_model, cores (logical), physical_cores, os, arch, memory_mb and the runtime versions."""
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "os": platform.platform(),
        "arch": platform.machine(),
        "memory_mb": memory_total_mb(),
        "versions": runtime_versions(),
    }
