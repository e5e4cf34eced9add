"""Where a figure was measured and on what: the fields that keep a benchmark record from claiming more than it
measured.

An artifact built for a GPU or NPU target (a TensorRT Q/DQ ONNX, the ONNX given to Huawei's atc) can still be
run here, in ONNX Runtime on the CPU, to check its numerics; its latency then says nothing about the device it
was built for. Every record therefore says what actually executed it (`executed_on`, e.g. "ORT CPU x86-64"),
which device runtime that execution stood in for (`stand_in_for`, e.g. "TensorRT"), the class of the device
that measured it (`measured_on`), and what data the quality figures came from (`eval_data`).
"""

from __future__ import annotations

from typing import Any

from edgekit.backends import registry

_RUNTIME_LABELS = {"onnxruntime": "ORT", "ai_edge_litert": "LiteRT", "tensorflow": "TFLite (TensorFlow)",
                   "torch": "torch eager", "tensorrt": "TensorRT"}
_ARM = ("aarch64", "arm")  # aarch64, arm64, arm64-v8a (an Android ABI), armv7l, ...


def arch_label(arch: str | None) -> str:
    """x86_64 -> x86-64, aarch64 -> arm64: the names a reader of a table expects."""
    a = (arch or "").lower()
    if a in ("x86_64", "amd64"):
        return "x86-64"
    if a in ("aarch64", "arm64"):
        return "arm64"
    return a or "unknown arch"


def is_stand_in(backend: str | None, executes: str | None) -> bool:
    """True when an artifact for a device runtime ran in something else (ONNX Runtime on this CPU); the
    backend declares its device runtime (BackendSpec.device_runtime)."""
    spec = registry.find_spec(backend)
    return spec is not None and bool(spec.device_runtime) and executes != spec.native_execution


def executed_on(runtime_module: str | None, executes: str | None, arch: str | None, gpu: str | None = None) -> str:
    """One phrase for what ran the artifact: runtime, execution provider and processor."""
    native = registry.native_spec(executes)
    if native is not None:
        return f"{native.device_runtime} on {gpu or native.native_device_class.upper()}"
    label = _RUNTIME_LABELS.get(runtime_module or "", runtime_module or "unknown runtime")
    return f"{label} CPU {arch_label(arch)}"


def device_class(arch: str | None, executes: str | None) -> str:
    """The class (as target profiles name them) of the device that measured: gpu when a GPU engine ran,
    edge-cpu for an Arm CPU, cpu otherwise."""
    native = registry.native_spec(executes)
    if native is not None:
        return native.native_device_class
    return "edge-cpu" if (arch or "").lower().startswith(_ARM) else "cpu"


def where(backend: str | None, runtime_module: str | None, executes: str | None, env: dict[str, Any],
          device_name: str | None) -> dict[str, Any]:
    """The `executed_on`, `stand_in_for` and `measured_on` fields of a record."""
    arch = env.get("arch")
    spec = registry.find_spec(backend)
    stand_in = spec.device_runtime if spec is not None and is_stand_in(backend, executes) else None
    return {
        "executed_on": executed_on(runtime_module, executes, arch, env.get("gpu")),
        "stand_in_for": stand_in,
        "measured_on": {"host": env.get("host"), "device": device_name, "device_class": device_class(arch, executes),
                        "arch": arch, "cpu_model": env.get("cpu_model")},
    }


def ran_on(rec: dict[str, Any]) -> str:
    """The table's "ran on" cell: "ORT CPU x86-64 (stand-in for TensorRT)"."""
    where_ = rec.get("executed_on") or rec.get("runtime") or "?"
    return f"{where_} (stand-in for {rec['stand_in_for']})" if rec.get("stand_in_for") else str(where_)


def same_class(rec: dict[str, Any], target_class: str) -> bool | None:
    """Whether a record was measured on a device of `target_class`; None when the record does not say
    (hand-written results), which callers take at its word."""
    mo = rec.get("measured_on")
    if not isinstance(mo, dict) or not mo.get("device_class"):
        return None
    return mo["device_class"] == target_class and not rec.get("stand_in_for")
