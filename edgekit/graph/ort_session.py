"""ONNX Runtime CPU sessions as edgekit opens them everywhere: the export check, the quantization searches
and the ONNX Runtime backend's runner all apply the same session config, so what is checked is what runs.

The one CPU-dependent rule: on x86 CPUs without VNNI, ONNX Runtime's int8 kernels saturate unless
`session.x64quantprecision` is set (`int8_saturates_here`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 'flags', Arm 'Features'); None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


X64_QUANT_PRECISION = "session.x64quantprecision"
#: CPU features whose int8 dot products accumulate in 32 bits (VPDPBUSD, AMX): no saturation on them
NON_SATURATING_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")
X64_POLICY = (f"{X64_QUANT_PRECISION}=1 on x86 CPUs without VNNI or AMX (their u8s8 kernels saturate), unset "
              "elsewhere; set it explicitly with the backend option session_config")


def int8_saturates_here() -> bool:
    """Whether ONNX Runtime's default u8s8 int8 kernels saturate on this CPU.

    On x86 CPUs without VNNI, they multiply with VPMADDUBSW, whose int16 intermediate saturates: measured on
    an AMD EPYC (AVX2, no VNNI) a digits CNN fell from 99.8% to 84% top-1 agreement. `session.x64quantprecision
    =1` switches such layers to a non-saturating u8u8 path. On VNNI/AMX CPUs the default kernels accumulate
    in 32 bits and the switch only costs speed: measured on a Xeon with AVX512-VNNI and AMX, a 1.2 M-parameter
    CNN ran int8 at 0.95x fp32 with it and 2.9x without it. Arm CPUs are unaffected. Unknown x86 CPUs
    (no /proc/cpuinfo) get the safe setting.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags()
    return flags is None or not any(f in flags for f in NON_SATURATING_INT8)


def session_config(options: dict[str, Any]) -> dict[str, str]:
    """The session config entries recorded in the manifest: the ones the target or user set explicitly. The
    CPU-dependent `session.x64quantprecision` is decided where the model runs (`effective_session_config`),
    since the CPU that exports is rarely the one that deploys; the manifest states that policy."""
    return {str(k): str(v) for k, v in options.get("session_config", {}).items()}


def effective_session_config(recorded: dict[str, str] | None = None) -> dict[str, str]:
    """What a session on this machine sets: the recorded entries, plus `session.x64quantprecision=1` when
    this CPU's int8 kernels would saturate and nobody chose otherwise."""
    config = dict(recorded or {})
    if X64_QUANT_PRECISION not in config and int8_saturates_here():
        config[X64_QUANT_PRECISION] = "1"
    return config


def ort_session(path: Path, recorded: dict[str, str] | None = None, threads: int | None = None):
    """An ONNX Runtime CPU session with the config edgekit's runners use: on x86 CPUs without VNNI the int8
    kernels saturate unless `session.x64quantprecision` is set, and a quantized graph's check would measure
    that saturation instead of the graph. `recorded`: the session config a manifest records; `threads`:
    intra-op threads (one inter-op thread), else ONNX Runtime's default."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    for key, value in effective_session_config(recorded).items():
        opts.add_session_config_entry(key, value)
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
