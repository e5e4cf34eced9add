"""What each backend accepts as options, declared once and importable without any runtime.

A target's `[backend_options]` table and `edgekit export --backend-option KEY=VALUE` are both checked against
this table before any work starts, so a wrong type (`activation_type = [1, 2]`) or an unknown name is one
line naming the option, the value and what is allowed, instead of a TypeError deep inside a quantizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgekit.common import schema
from edgekit.common.schema import OptionSpec
from edgekit.errors import EdgekitError

__all__ = ["BACKEND_OPTIONS", "OptionSpec", "help_text", "names", "specs", "validate"]


def _b(name: str, help: str, default: bool | None = None) -> OptionSpec:
    return OptionSpec(name, "bool", help, default)


_QUANT_TYPES = ("int8", "uint8")
_ORT_QUANT = (
    OptionSpec("activation_type", "choice", "int8 activation type of static QDQ int8", "uint8", _QUANT_TYPES),
    OptionSpec("weight_type", "choice", "int8 weight type", "int8", _QUANT_TYPES),
    _b("activation_symmetric", "symmetric activations (zero point 0)", False),
    _b("per_channel", "weights quantized per output channel", True),
    _b("reduce_range", "7-bit weights for CPUs whose int8 kernels would overflow", False),
    OptionSpec("session_config", "table", "ONNX Runtime session config entries recorded in the manifest"),
    OptionSpec("pad_input_channels", "int", "int8: pad the channels of a conv reading a graph input (an RGB stem) "
               "to a multiple of this, with zeros, for CPU int8 kernels that need it (x86: 4); 0 leaves them",
               0, lo=0, hi=64),
)
_ORT = (
    *_ORT_QUANT,
    OptionSpec("graph_optimization_level", "choice", "ONNX Runtime graph optimisations at load", "all",
               ("disable", "basic", "extended", "all")),
    OptionSpec("intra_op_threads", "int", "threads a session uses when the caller asks for none", lo=1, hi=1024),
    OptionSpec("transformer", "mapping", "models with token inputs: the transformer quantizer's options, e.g. "
               "{\"static\": true, \"keep_float\": [\"/l.0/fc\"]} (unknown names are refused when it runs)"),
)
_REQUIRE_ENGINE = _b("require_engine", "fail unless the device engine itself is built here", False)

BACKEND_OPTIONS: dict[str, tuple[OptionSpec, ...]] = {
    "onnxruntime": _ORT,
    "ort-mobile": (
        *_ORT,
        OptionSpec("target_platform", "choice", "convert_onnx_models_to_ort --target_platform", "arm",
                   ("arm", "amd64")),
        OptionSpec("optimization_style", "choice", "auto: Runtime for int8 (keeps Q/DQ), Fixed for fp32", "auto",
                   ("auto", "Fixed", "Runtime")),
    ),
    "tflite": (
        _b("per_channel", "int8 weights per output channel", True),
        _b("xnnpack", "the runner applies the XNNPACK delegate", True),
        _b("allow_float_fallback", "int8: keep ops without an int8 kernel in float instead of failing", False),
    ),
    "tensorrt": (
        OptionSpec("activation_type", "choice", "TensorRT's explicit quantization: int8 only", "int8", ("int8",)),
        OptionSpec("weight_type", "choice", "TensorRT's explicit quantization: int8 only", "int8", ("int8",)),
        _b("activation_symmetric", "must be true: TensorRT needs zero point 0", True),
        _b("reduce_range", "must be false for TensorRT", False),
        _b("per_channel", "int8 weights per output channel", True),
        OptionSpec("io_dtype", "choice", "fp16: dtype of the graph inputs and outputs", "float32",
                   ("float32", "float16", "fp32", "fp16")),
        OptionSpec("batch_profile", "ints", "[min, opt, max] batch of the optimization profile", length=3, lo=1),
        OptionSpec("workspace_mb", "int", "trtexec workspace pool in MiB", lo=1),
        OptionSpec("tensorrt_version", "str", "the device's TensorRT (legacy calibration cache header)"),
        OptionSpec("keep_fp16", "names", "mixed: node names kept out of int8, run in fp16"),
        OptionSpec("keep_fp32", "names", "mixed: node names kept out of int8, run in fp32"),
        OptionSpec("fp32_ops", "names", "fp16: more op types kept in float32"),
        OptionSpec("timing_cache", "str", "a timing cache file to start the engine build from"),
        _b("legacy_calibration_cache", "also write TensorRT's legacy int8 calibration cache", True),
        _b("build_engine", "build the .engine when TensorRT and a GPU are here"),
        _REQUIRE_ENGINE,
    ),
    "ascend": (
        OptionSpec("soc_version", "str", "atc --soc_version, as `npu-smi info` shows on the device"),
        OptionSpec("batch_size", "int", "the static batch atc compiles", 1, lo=1),
        _b("aipp", "the NPU's pre-processing unit takes uint8 pixels", True),
        OptionSpec("aipp_input_format", "choice", "AIPP input format", "auto",
                   ("auto", "YUV400_U8", "RGB888_U8", "XRGB8888_U8")),
        OptionSpec("aipp_mean", "numbers", "per-channel mean in pixel units"),
        OptionSpec("aipp_std", "numbers", "per-channel std in pixel units", lo=0),
        _REQUIRE_ENGINE,
    ),
    "torch-eager": (
        OptionSpec("source", "str", "the torch model to save (MODEL as `edgekit export` takes it)"),
    ),
}


def specs(backend: str) -> tuple[OptionSpec, ...]:
    try:
        return BACKEND_OPTIONS[backend]
    except KeyError:
        raise EdgekitError(f"unknown backend '{backend}'; known backends: {', '.join(sorted(BACKEND_OPTIONS))}") \
            from None


def names(backend: str) -> tuple[str, ...]:
    return tuple(s.name for s in specs(backend))


def validate(backend: str, options: Mapping[str, Any], where: str,
             passthrough: tuple[str, ...] = ()) -> dict[str, Any]:
    """`options` checked against `backend`'s declaration; values normalised (a comma string of names becomes
    a list). Keys in `passthrough` are left as given (Python callers may hand over objects, e.g. a loaded
    model as `source`)."""
    declared = {s.name: s for s in specs(backend)}
    schema.refuse_unknown(where, options, declared, what=f"option(s) of backend '{backend}'")
    return {k: v if k in passthrough else declared[k].check(v, where) for k, v in options.items()}


def help_text(backend: str) -> str:
    """One line per option: name, what it takes, default, help."""
    lines = []
    for s in specs(backend):
        default = "" if s.default is None else f" (default {s.default!r})"
        lines.append(f"{s.name}: {s.allowed()}{default}; {s.help}")
    return "\n".join(lines)
