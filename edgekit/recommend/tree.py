"""The static half of the precision helper: a small decision tree over the target profile's fields (device
class, CPU architecture, the precisions its backend offers) plus the user's priority and workload. Every node
it passes is recorded, so the user sees *why*.

The tree reads fields, never target names, so a user's own target file gets the same reasoning as a built-in
one. Whatever a leaf wants, the target may not offer; the precision then falls back along `FALLBACK_ORDER`
(accelerators and MCUs skip dynamic-int8) and the path says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgekit.errors import EdgekitError
from edgekit.targets import Target

PRIORITIES = ("latency", "cost")
WORKLOADS = ("online", "batch")
TECHNIQUES = ("distill", "prune", "qat", "ptq")

#: where a wanted precision goes when the target does not offer it, nearest first. INT8-family wishes stay
#: integer as long as they can (the reason they were wanted is integer kernels); everything ends at fp32,
#: which every backend offers. When nothing listed matches, the target's own default precision is used.
FALLBACK_ORDER: dict[str, tuple[str, ...]] = {
    "mixed": ("fp16", "int8", "fp32"),
    "fp16": ("fp32",),
    "int8": ("dynamic-int8", "mixed", "fp16", "fp32"),
    "dynamic-int8": ("int8", "fp32"),
    "int4-weight": ("int8", "dynamic-int8", "fp32"),
    "fp32": (),
}
#: dynamic quantization computes activation ranges at run time on CPU kernels; GPUs, NPUs and MCUs need
#: static ranges, so it is never a fallback there.
_STATIC_ONLY_CLASSES = ("gpu", "npu", "mcu")
#: device classes that run on the device itself (one request at a time) rather than in a server
_EDGE_CLASSES = ("edge-cpu", "mcu")
_ARM_ARCHES = ("aarch64", "arm64", "arm")


@dataclass(frozen=True)
class TreeDecision:
    """Where the static tree ends. `leaf` is a stable id (tests and reports key on it); `path` is readable."""

    leaf: str
    wanted: str  # what the leaf asked for, before the target's precisions were consulted
    precision: str  # what the target offers, after fallback
    techniques: tuple[str, ...]
    workload: str
    path: tuple[str, ...]


def is_arm(cpu_arch: str) -> bool:
    arch = cpu_arch.lower()
    return arch in _ARM_ARCHES or arch.startswith("armv")


def is_cortex_a_class(target: Target) -> bool:
    """An application-class ARM core on the device itself (phones, boards). Not an ARM server CPU (class cpu,
    Neoverse), not a GPU module's host CPU (class gpu), not a Cortex-M (class mcu)."""
    return target.device_class == "edge-cpu" and is_arm(target.cpu_arch)


def default_workload(target: Target) -> str:
    """An edge device serves its own requests one at a time; a server-class device is usually fed batches.
    An ARM host makes a gpu or npu an embedded module (Jetson-class), hence online."""
    if target.device_class in _EDGE_CLASSES or (target.device_class in ("gpu", "npu") and is_arm(target.cpu_arch)):
        return "online"
    return "batch"


def techniques_for(base: Sequence[str], precision: str) -> tuple[str, ...]:
    """The training/export steps for `precision`. Static INT8 (and the INT8 half of mixed) needs activation
    ranges: when a training loop runs anyway (distillation), fake-quant fine-tuning (QAT) with the teacher's
    targets is nearly free and recovers more than calibration alone; otherwise post-training calibration."""
    out = list(base)
    if precision in ("int8", "mixed"):
        out.append("qat" if "distill" in base else "ptq")
    return tuple(t for t in TECHNIQUES if t in out)


def resolve_precision(target: Target, wanted: str) -> tuple[str, str]:
    """The precision to use on `target` for a leaf that wants `wanted`, and the path step that says how."""
    offered = ", ".join(target.precisions)
    if wanted in target.precisions:
        return wanted, f"target offers {wanted}? yes ({target.backend}: {offered})"
    chain = [p for p in FALLBACK_ORDER[wanted]
             if not (p == "dynamic-int8" and target.device_class in _STATIC_ONLY_CLASSES)]
    order = " -> ".join((wanted, *chain))
    for p in chain:
        if p in target.precisions:
            return p, (f"target offers {wanted}? no ({target.backend}: {offered}) -> falling back to {p} "
                       f"(order {order})")
    return target.default_precision, (
        f"target offers {wanted}? no ({target.backend}: {offered}), nor any of {order} -> "
        f"the target's default precision {target.default_precision}")


def decide(target: Target, priority: str = "latency", workload: str | None = None) -> TreeDecision:
    """Walk the tree for `target`; every node appends one readable step to the path."""
    if priority not in PRIORITIES:
        raise EdgekitError(f"unknown priority '{priority}'; choose one of {', '.join(PRIORITIES)}")
    if workload is not None and workload not in WORKLOADS:
        raise EdgekitError(f"unknown workload '{workload}'; choose one of {', '.join(WORKLOADS)}")
    cls = target.device_class
    path = [f"target {target.name}: device_class {cls}, backend {target.backend}, cpu_arch {target.cpu_arch}"]
    if workload is None and priority == "latency":
        workload = "online"  # latency-sensitive means someone waits for each answer
        workload_step = "workload: online (latency priority)"
    elif workload is None:
        workload = default_workload(target)
        workload_step = f"workload: {workload} (default for device_class {cls}"
        workload_step += f" on {target.cpu_arch})" if cls in ("gpu", "npu") else ")"
    else:
        workload_step = f"workload: {workload} (--workload)"
    base: tuple[str, ...] = ()

    if priority == "latency":
        path.append("priority: latency -> decide by device class")
        if workload == "batch":
            path.append(f"{workload_step}; under latency priority the device class decides alone")
        if cls == "gpu":
            leaf, wanted = "latency/gpu", "mixed"
            path.append("device class gpu -> mixed precision (FP16 + INT8): tensor cores run both; INT8 where "
                        "it costs little, FP16 where it does not")
        elif cls in ("cpu", "edge-cpu"):
            leaf, wanted = "latency/cpu", "dynamic-int8"
            path.append(f"device class {cls} (a CPU) -> dynamic INT8: int8 weights and GEMMs with activation "
                        "ranges taken at run time, no calibration set to get wrong")
        elif cls == "npu":
            leaf, wanted = "latency/npu", "int8"
            path.append("device class npu -> static INT8: NPUs run calibrated fixed-point graphs natively; "
                        "ranges must be known before compilation")
        else:  # mcu
            leaf, wanted = "latency/mcu", "int8"
            path.append("device class mcu -> full-integer INT8: microcontrollers have little or no floating "
                        "point and kilobytes of memory")
    else:
        path.append("priority: cost -> decide by workload")
        path.append(workload_step)
        if workload == "batch":
            base = ("distill", "prune")
            wanted = "mixed" if cls == "gpu" else "int8"
            leaf = "cost/batch"
            path.append(f"batch inference -> distillation + pruning: fewer FLOPs per sample cut the bill at any "
                        f"precision; precision {wanted}, the throughput precision of device class {cls}")
        elif is_cortex_a_class(target):
            base = ("distill",)
            path.append(f"edge device with an ARM Cortex-A class CPU? yes (device_class {cls}, cpu_arch "
                        f"{target.cpu_arch}) -> 4-bit weights + distillation where the runtime supports it")
            if "int4-weight" in target.precisions:
                leaf, wanted = "cost/arm-int4", "int4-weight"
                path.append(f"runtime supports 4-bit weights? yes ({target.backend} offers int4-weight) -> "
                            "4-bit weights take an eighth of FP32's bytes and half of INT8's; distillation "
                            "recovers the accuracy they cost")
            else:
                leaf, wanted = "cost/arm-int8", "int8"
                path.append(f"runtime supports 4-bit weights? no ({target.backend} offers "
                            f"{', '.join(target.precisions)}; no int4-weight kernels) -> distillation + INT8 "
                            "instead: INT8 is the smallest weight format this runtime executes natively")
        else:
            base = ("distill",)
            leaf, wanted = "cost/edge-int8", "int8"
            where = "edge device" if default_workload(target) == "online" else "online serving on a server"
            path.append(f"{where} (device_class {cls}; the 4-bit rule is for ARM Cortex-A class edge CPUs) -> "
                        "distillation + INT8: a smaller student at a quarter of FP32's bytes per weight")
    precision, step = resolve_precision(target, wanted)
    path.append(step)
    techniques = techniques_for(base, precision)
    path.append(f"recommend {precision}" + (f" with {' + '.join(techniques)}" if techniques else ""))
    return TreeDecision(leaf, wanted, precision, techniques, workload, tuple(path))
