"""The backend registry (after timm's): list it, look entries up by name, and never import a runtime until
an entry is used. A backend whose runtime is not installed resolves to a stand-in that raises an error
naming the missing package and the pip extra that provides it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError, MissingRuntimeError


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    package: str  # pip name
    extra: str  # edgekit extra that installs it


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    precisions: tuple[str, ...]
    exporter: str  # "module:Class"
    runner: str | None
    requires: tuple[Requirement, ...]
    runtime_module: str  # whose version the records carry
    #: precisions a budgeted int8 export can keep chosen layers in, cheapest first (empty: no per-layer
    #: fallback); the last one is the float precision kept layers fall back to
    layer_fallback: tuple[str, ...] = ()
    #: how the int8 Q/DQ graph is written for a budgeted export: "onnxruntime" (the target's own int8 format)
    #: or "tensorrt" (symmetric int8, float biases, no quantizer on weighted layers' outputs); None: not a Q/DQ
    #: ONNX backend
    qdq_style: str | None = None
    #: why this backend has no budgeted export, when it has none (shown to the user instead of a generic line)
    no_fallback_reason: str = ""
    #: "module:function" -> (bool, why): can the device runtime / compiler itself run here? None: the runtime
    #: in `requires` is the one that runs the artifact, so installed means it runs here
    native_check: str | None = None
    #: "module:function" -> the command that finishes or measures an artifact on its device, from its manifest
    #: (None from the function: nothing to do); None: artifacts of this backend are complete where exported
    next_step: str | None = None
    #: artifacts for a device runtime edgekit can only stand in for on a CPU host: that runtime's name as a
    #: reader knows it, what the runner reports in `executes` when it ran that runtime itself, and the class
    #: of device it then ran on (empty: the runtime that runs the artifact is the one in `requires`)
    device_runtime: str = ""
    native_execution: str = ""
    native_device_class: str = ""
    #: runs the source model itself, no conversion: the best FP32 reference among a run's artifacts
    runs_source: bool = False
    #: its runtime can keep every intermediate tensor of a run (LiteRT's preserve_all_tensors): the side
    #: `edgekit diagnose --against` lines up layer by layer with an ONNX Q/DQ artifact
    intermediate_tensors: bool = False
    #: what of edgekit's improved int8 preparation reaches this backend's int8 artifact, which decides the PTQ
    #: techniques (--equalize, --adaround, ...) that apply to it: "graph" (an FP32-equivalent rewrite of the
    #: graph, e.g. equalised weights), "weights" (float weights on the int8 grid of symmetric per-output-channel
    #: weights with scale max|w|/127, which its quantizer reproduces integer for integer, bar channels it
    #: rescales for reasons of its own, which the artifact check counts), "biases" (float
    #: biases, kept in float or as int32 at the product of the input and weight scales), "ranges" (edgekit's
    #: activation ranges). Empty: no technique reaches it
    ptq_inputs: tuple[str, ...] = ()
    #: why an input missing from `ptq_inputs` does not reach the artifact, by input (shown in the manifest)
    ptq_gaps: tuple[tuple[str, str], ...] = ()
    #: "module:function" (target options) -> ONNX Runtime Q/DQ options reproducing the backend's own int8
    #: format, for a backend whose converter quantizes by itself (no Q/DQ graph of edgekit's): techniques are
    #: fitted and measured on that stand-in, then the backend converts the improved FP32 graph
    qdq_standin: str | None = None
    #: "module:function" (artifact file) -> the int8 weights it stores (values, scales, axis), for a backend
    #: whose converter quantizes by itself: how an export checks that learned rounding's integers survived
    int8_weight_reader: str | None = None


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    if spec.name in _BACKENDS:
        raise ValueError(f"backend '{spec.name}' is registered twice")
    _BACKENDS[spec.name] = spec
    return spec


_ORT = Requirement("onnxruntime", "onnxruntime", "core")

register_backend(
    BackendSpec(
        name="onnxruntime",
        description="ONNX Runtime (CPU): fp32, static QDQ int8, dynamic int8, int4 weights (MatMulNBits)",
        precisions=("fp32", "int8", "dynamic-int8", "int4-weight"),
        exporter="edgekit.backends.onnxruntime:OrtExporter",
        runner="edgekit.backends.onnxruntime:OrtRunner",
        requires=(_ORT,),
        runtime_module="onnxruntime",
        # int16: 16-bit Q/DQ weights (ONNX Runtime runs them; see edgekit.quant.int16), then fp32
        layer_fallback=("int16", "fp32"),
        qdq_style="onnxruntime",
        ptq_inputs=("graph", "weights", "biases", "ranges"),
    )
)
register_backend(
    BackendSpec(
        name="ort-mobile",
        description="ONNX Runtime Mobile: .ort model plus required_operators.config for a reduced build",
        precisions=("fp32", "int8"),
        exporter="edgekit.backends.ort_mobile:OrtMobileExporter",
        runner="edgekit.backends.ort_mobile:OrtMobileRunner",
        requires=(_ORT,),
        runtime_module="onnxruntime",
        next_step="edgekit.backends.ort_mobile:next_step",
    )
)

# --- TFLite / LiteRT ---------------------------------------------------------------------------------------
register_backend(
    BackendSpec(
        name="tflite",
        description="TFLite on the LiteRT runtime: full-integer int8, fp16 weights, dynamic-range int8",
        precisions=("fp32", "fp16", "int8", "dynamic-int8"),
        exporter="edgekit.backends.tflite:TfliteExporter",
        runner="edgekit.backends.tflite_runner:LiteRTRunner",
        requires=(
            Requirement("tensorflow", "tensorflow", "tflite"),
            Requirement("onnx2tf", "onnx2tf", "tflite"),
            Requirement("ai_edge_litert", "ai-edge-litert", "tflite"),
        ),
        runtime_module="ai_edge_litert",
        next_step="edgekit.backends.tflite:next_step",
        intermediate_tensors=True,
        # the converter quantizes the improved FP32 graph itself: per-channel symmetric weights at max|w|/127
        # (learned rounding's grid, checked integer for integer on the written file) and int32 biases reach it
        ptq_inputs=("graph", "weights", "biases"),
        ptq_gaps=(("ranges", "TFLite's converter computes its own activation min/max over the representative "
                             "dataset and takes no given ranges"),),
        qdq_standin="edgekit.backends.tflite:standin_qdq_format",
        int8_weight_reader="edgekit.backends.tflite_inspect:int8_weights",
        no_fallback_reason=(
            "TFLite full-integer int8 has no per-layer float fallback in TensorFlow's converter (every op must "
            "be int8; only the experimental QuantizationDebugger's denylisted_nodes keeps chosen nodes float, "
            "which edgekit does not drive): use --backend onnxruntime or tensorrt for a budgeted export, or "
            "--allow-float-fallback for ops that have no int8 kernel"),
    )
)

# --- TensorRT: the Q/DQ / fp16 ONNX is made everywhere; the engine only where tensorrt + CUDA exist
register_backend(
    BackendSpec(
        name="tensorrt",
        description="TensorRT: explicit Q/DQ int8, fp16, mixed; .engine built where TensorRT and a GPU exist",
        precisions=("fp32", "fp16", "int8", "mixed"),
        exporter="edgekit.backends.tensorrt:TensorRTExporter",
        runner="edgekit.backends.tensorrt_engine:TensorRTRunner",
        requires=(_ORT,),
        runtime_module="onnxruntime",
        layer_fallback=("fp16",),  # written as Casts around the layer, as the `mixed` precision does
        qdq_style="tensorrt",
        # explicit quantization: the Q/DQ graph carries edgekit's ranges and int8 weights, biases stay float
        ptq_inputs=("graph", "weights", "biases", "ranges"),
        native_check="edgekit.backends.tensorrt_engine:engine_support",
        next_step="edgekit.backends.tensorrt_engine:next_step",
        device_runtime="TensorRT",
        native_execution="tensorrt-engine",
        native_device_class="gpu",
    )
)

# --- Huawei Ascend: a stub by design; compiles with atc when it is on PATH ---------------------
register_backend(
    BackendSpec(
        name="ascend",
        description="Huawei Ascend (stub): ONNX + atc command + AIPP config; compiled only where atc exists",
        precisions=("fp32", "fp16", "mixed"),
        exporter="edgekit.backends.ascend:AscendExporter",
        runner="edgekit.backends.ascend:AscendOnnxRunner",
        requires=(_ORT,),
        runtime_module="onnxruntime",
        native_check="edgekit.backends.ascend:compile_support",
        next_step="edgekit.backends.ascend:next_step",
        device_runtime="Ascend (CANN .om)",
        native_execution="ascend-acl",
        native_device_class="npu",
    )
)

# --- torch eager FP32: the benchmark baseline, an artifact like the others ---------------------
register_backend(
    BackendSpec(
        name="torch-eager",
        description="PyTorch eager FP32 (a torch.export .pt2 of the source model): the benchmark baseline",
        precisions=("fp32",),
        exporter="edgekit.backends.torch_eager:TorchEagerExporter",
        runner="edgekit.backends.torch_eager:TorchEagerRunner",
        requires=(Requirement("torch", "torch", "torch"),),
        runtime_module="torch",
        runs_source=True,
    )
)


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_spec(name: str) -> BackendSpec:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise EdgekitError(f"unknown backend '{name}'; known backends: {', '.join(backend_names())}") from None


def budget_backends() -> list[str]:
    """Backends that can keep chosen layers of an int8 graph in higher precision (a budgeted export)."""
    return sorted(n for n, s in _BACKENDS.items() if s.layer_fallback and s.qdq_style)


def check_budget_backend(name: str, where: str = "") -> BackendSpec:
    """The backend's spec when it can run a budgeted int8 export, else a one-line error saying which can."""
    spec = get_spec(name)
    if not (spec.layer_fallback and spec.qdq_style):
        raise EdgekitError(spec.no_fallback_reason or (
            f"budgeted int8 (--min-agreement / --max-accuracy-drop / int8 techniques) works for backends "
            f"{', '.join(budget_backends())}; {where or 'this target'} runs '{name}'"))
    return spec


def technique_backends() -> list[str]:
    """Backends some int8 PTQ technique reaches (see BackendSpec.ptq_inputs)."""
    return sorted(n for n, s in _BACKENDS.items() if s.ptq_inputs)


def check_technique_backend(name: str, where: str = "") -> BackendSpec:
    """The backend's spec when int8 PTQ techniques can reach its artifact, else a one-line error saying which."""
    spec = get_spec(name)
    if not spec.ptq_inputs:
        raise EdgekitError(f"int8 techniques (--equalize, --range-choice, --range-mse, --adaround, "
                           f"--bias-correction, --qat) reach backends {', '.join(technique_backends())}; "
                           f"{where or 'this target'} runs '{name}': export for one of those (--backend)")
    return spec


def standin_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The ONNX Runtime Q/DQ options techniques are fitted and measured with for backend `name`: its own
    options for a Q/DQ backend, the declared stand-in of its int8 format for a backend that converts."""
    spec = get_spec(name)
    return _load(spec.qdq_standin)(options) if spec.qdq_standin else dict(options)


def backend_precisions(name: str) -> tuple[str, ...]:
    return get_spec(name).precisions


def missing_requirement(name: str) -> Requirement | None:
    """The first requirement of `name` that is not importable here, or None when all are."""
    for req in get_spec(name).requires:
        if importlib.util.find_spec(req.module) is None:
            return req
    return None


def runtime_installed(name: str) -> bool:
    return missing_requirement(name) is None


def run_here(name: str) -> tuple[bool, str]:
    """Whether this machine can run (or compile) the artifact in the device runtime itself, and why: for
    TensorRT an engine needs the tensorrt package and a CUDA GPU, for Ascend the atc compiler; exporting only
    needs the packages in `requires`."""
    spec = get_spec(name)
    if spec.native_check is not None:
        ok, why = _load(spec.native_check)()
        if not ok:
            return False, f"{why}; checks run the ONNX in ONNX Runtime on the CPU as a stand-in"
        return True, why or "the device runtime and its hardware are here"
    req = missing_requirement(name)
    if req is not None:
        return False, f"{req.package} is not installed: pip install 'edgekit[{req.extra}]'"
    return True, f"{spec.runtime_module} installed"


def next_step(manifest: dict[str, Any]) -> str | None:
    """The exact command that finishes or measures the artifact on its device, asked of its backend; None when
    none is needed (an artifact for this kind of machine, already complete) or the backend is unknown here."""
    spec = find_spec(manifest.get("backend"))
    if spec is None or spec.next_step is None:
        return None
    return _load(spec.next_step)(manifest)


def find_spec(name: str | None) -> BackendSpec | None:
    """The spec of `name`, or None for a name this edgekit does not know (e.g. a record from a newer one)."""
    return _BACKENDS.get(str(name))


def native_spec(executes: str | None) -> BackendSpec | None:
    """The backend whose device runtime itself reports `executes` (a TensorRT engine, an Ascend .om)."""
    return next((s for s in _BACKENDS.values() if executes and s.native_execution == executes), None)


def load_function(dotted: str) -> Any:
    """The object a spec field names as "module:attribute" (imported on first use)."""
    return _load(dotted)


def _load(dotted: str) -> Any:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def _check_installed(name: str) -> None:
    req = missing_requirement(name)
    if req is not None:
        raise MissingRuntimeError(name, req.package, req.extra)


def exporter_class(name: str) -> type:
    _check_installed(name)
    return _load(get_spec(name).exporter)


def runner_class(name: str) -> type:
    spec = get_spec(name)
    if spec.runner is None:
        raise EdgekitError(f"backend '{name}' has no runner on this machine")
    _check_installed(name)
    return _load(spec.runner)


def runtime_version(name: str) -> str | None:
    spec = get_spec(name)
    try:
        mod = importlib.import_module(spec.runtime_module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")
