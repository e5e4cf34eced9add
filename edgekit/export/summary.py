"""What an export summary ends with: the command the user must run next on the device, and the warnings
about what the export's own check does not prove.

Both are read from the manifest alone, so they say the same thing whether the export just ran or an artifact
folder is inspected later. An artifact whose runtime needs a build step or a device (a TensorRT engine, an
Ascend .om, a phone) is not finished when `edgekit export` returns, and a check on the calibration data, a
low agreement or an unverified precision would otherwise only be found inside manifest.json.
"""

from __future__ import annotations

from typing import Any

#: below this top-1 agreement with FP32 the summary warns
MIN_AGREEMENT = 0.99


def next_step(manifest: dict[str, Any]) -> str | None:
    """The exact command that finishes or measures the artifact on its device (its backend knows which), or
    None when none is needed."""
    from edgekit.backends.registry import next_step as backend_next_step

    return backend_next_step(manifest)


def warnings(manifest: dict[str, Any]) -> list[str]:
    """One line per thing the export's own check does not establish; empty when there is nothing to say."""
    v = manifest.get("verification") or {}
    out = []
    data = str(v.get("data", ""))
    if v.get("calibration_data"):
        out.append(f"checked on the calibration data only ({data}): the ranges were fitted to it, so agreement "
                   "there is optimistic; pass eval= (--eval DATA) with held-out samples")
    elif data.startswith("random normal"):
        out.append("checked on random inputs only: pass eval= (--eval DATA) with real samples")
    agreement = v.get("agreement")
    if isinstance(agreement, float) and agreement < MIN_AGREEMENT:
        out.append(f"agreement {agreement:.4f} with FP32 is below {MIN_AGREEMENT}: try --min-agreement "
                   f"{MIN_AGREEMENT} (keeps sensitive layers in float), --equalize, or `edgekit diagnose` to find "
                   "the layers that lose it")
    if v.get("not_verified"):
        out.append(str(v["not_verified"]))
    cost = (manifest.get("fallback") or {}).get("cost") or {}
    speedup = cost.get("speedup_vs_fp32")
    if isinstance(speedup, int | float) and speedup <= 1.0:
        out.append(f"int8 measured no faster than fp32 on this machine ({speedup:.2f}x): check `edgekit bench` on "
                   "the device before shipping it")
    return out
