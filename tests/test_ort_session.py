"""The CPU-dependent ONNX Runtime setting: session.x64quantprecision only where u8s8 int8 kernels saturate."""

from __future__ import annotations

import pytest

from edgekit.graph import ort_session as ortb


@pytest.mark.parametrize("machine, flags, expected", [
    ("x86_64", {"avx2", "fma"}, True),  # AVX2 only (e.g. AMD EPYC Zen 2): VPMADDUBSW saturates
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
    ("x86_64", {"avx2", "avx_vnni"}, False),
    ("x86_64", {"avx2", "amx_int8"}, False),
    ("x86_64", None, True),  # unknown x86 CPU: the safe setting
    ("aarch64", None, False),  # Arm kernels do not have the problem
])
def test_x64quantprecision_only_where_int8_saturates(monkeypatch, machine, flags, expected):
    monkeypatch.setattr("platform.machine", lambda: machine)
    monkeypatch.setattr("edgekit.graph.ort_session.cpu_flags", lambda: flags)
    assert ortb.int8_saturates_here() is expected
    config = ortb.effective_session_config({"session.intra_op.allow_spinning": "0"})
    assert config.get(ortb.X64_QUANT_PRECISION) == ("1" if expected else None)
    assert config["session.intra_op.allow_spinning"] == "0"
    # an explicit choice recorded in the manifest always wins
    assert ortb.effective_session_config({ortb.X64_QUANT_PRECISION: "0"})[ortb.X64_QUANT_PRECISION] == "0"


def test_this_machines_cpu_flags_are_read():
    import platform

    if platform.system() != "Linux":
        pytest.skip("reads /proc/cpuinfo")
    from edgekit.bench.environment import cpu_flags

    flags = cpu_flags()
    assert flags and ("sse2" in flags or "fp" in flags or "asimd" in flags)
