"""torch -> ONNX, the one intermediate form every backend starts from, checked against torch before use.

The check runs the exported graph in ONNX Runtime on seeded random inputs and, when given, real ones, and
fails the export naming the output whose error is over tolerance: a wrong graph found here costs seconds,
found on a device it costs days.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.graph.ort_session import ort_session as ort_session
from edgekit.graph.tensors import TensorSpec
from edgekit.common.io import Feeds, count, run_batched
from edgekit.models.source import SourceModel

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
#: relative tolerance (of the largest reference output) for a graph that is already quantized: torch computes
#: a dequantized float conv then rounds, ONNX Runtime's fused int8 kernels requantize with their own rounding,
#: so a value on a rounding boundary can land one step apart and that step propagates (measured on a QAT
#: digits CNN: 0.024-0.035 of a 6.3 output range, top-1 agreement 99.8%)
QUANTIZED_RTOL = 5e-2
_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


@dataclass
class OnnxModel:
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    producer: str
    check: dict[str, Any] = field(default_factory=dict)
    #: how the graph was quantized before edgekit saw it (QAT, a user's own Q/DQ), None for a float graph
    quantization: str | None = None


QUANTIZATION_METADATA_KEY = "edgekit.quantization"


def quantization_of(path: Path) -> str | None:
    """'qat' (or whatever the producer recorded) when the graph already holds Q/DQ nodes, else None."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return None
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get(QUANTIZATION_METADATA_KEY, "pre-quantized (Q/DQ nodes in the given model)")


def quantization_label(src: SourceModel) -> str:
    """How a quantized torch graph got its ranges: the tag edgekit.train.qat puts on its Q/DQ nodes ('qat'), else
    'torchao-pt2e' (a torchao-converted graph from elsewhere, QAT or post-training)."""
    holder = src.exported if src.kind == "exported-program" else src.module
    graph = getattr(holder, "graph", None)
    for node in getattr(graph, "nodes", ()):
        tag = (node.meta.get("custom") or {}).get(QUANTIZATION_METADATA_KEY)
        if tag:
            return str(tag)
    return "torchao-pt2e"


def fold_constant_quantize(model) -> list[str]:
    """Replace QuantizeLinear nodes whose input, scale and zero point are all initializers (float weights
    quantized at run time) by the int8/uint8 initializer they compute; returns the folded tensors' names.

    A quantized graph must ship integer weights: a float weight behind a QuantizeLinear is four times the
    size and is rounded again at every load. torchao's convert_pt2e folds them already (fold_quantize=True);
    graphs made with fold_quantize=False, or by other tools, may not.
    """
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    folded: list[str] = []
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        if not all(i in inits for i in node.input[:3]):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size"):
            continue
        x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[node.input[2]])
        if zp.dtype not in (np.int8, np.uint8):
            continue
        if scale.ndim == 1 and scale.size > 1:
            axis = int(attrs.get("axis", 1)) % x.ndim
            shape = [1] * x.ndim
            shape[axis] = scale.size
            scale, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.float32)
        else:
            zp_b = zp.astype(np.float32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(x / scale) + zp_b, info.min, info.max).astype(zp.dtype)
        model.graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        model.graph.node.remove(node)
        folded.append(node.output[0])
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if folded and len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return folded


def unshare_initializers(model) -> int:
    """Give every node its own copy of an initializer another node also reads, in place; returns the copies.

    torch's exporter shares one zero-point initializer between several DequantizeLinear nodes, and ONNX
    Runtime 1.32 with `session.x64quantprecision=1` then refuses the graph ("AddInitializedOrtValue Attempt
    to replace the existing tensor"). Separate copies change no numerics."""
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                t = onnx.TensorProto()
                t.CopyFrom(inits[name])
                t.name = f"{name}__{node.name or node.op_type}_{i}"
                model.graph.initializer.append(t)
                node.input[i] = t.name
                copies += 1
            seen.add(name)
    return copies


def mark_quantized(path: Path, label: str) -> list[str]:
    """Record how the graph was quantized (metadata `edgekit.quantization`) and fold constant weight
    quantization; the exporters then skip post-training calibration for it."""
    import onnx

    model = onnx.load(str(path))
    folded = fold_constant_quantize(model)
    unshare_initializers(model)
    meta = {p.key: p for p in model.metadata_props}
    if QUANTIZATION_METADATA_KEY in meta:
        meta[QUANTIZATION_METADATA_KEY].value = label
    else:
        model.metadata_props.add(key=QUANTIZATION_METADATA_KEY, value=label)
    onnx.save(model, str(path))
    return folded


def source_is_quantized(src: SourceModel) -> bool:
    """Whether the model already carries quantization (torchao's convert_pt2e ops, or Q/DQ in an ONNX file),
    so int8 needs no post-training calibration. Cheap: no export is run."""
    if src.kind == "onnx":
        return quantization_of(src.onnx_path) is not None
    holder = src.exported if src.kind == "exported-program" else src.module
    graph = getattr(holder, "graph", None)
    if graph is None:
        return False
    return any("quantize_per" in str(getattr(n, "target", "")) for n in graph.nodes)


def _dims(value_info) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return tuple(out)


def describe(model_or_path, layout: str | None = "NCHW") -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Graph inputs (initializers excluded), outputs and the default-domain opset of an ONNX model."""
    import onnx

    model = model_or_path
    if not hasattr(model, "graph"):
        model = onnx.load(str(model_or_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}

    def spec(vi, lay):
        return TensorSpec(vi.name, _dims(vi), _ONNX_DTYPES.get(vi.type.tensor_type.elem_type, "unknown"), lay)

    inputs = [spec(vi, layout if len(_dims(vi)) == 4 else None) for vi in model.graph.input if vi.name not in inits]
    outputs = [spec(vi, None) for vi in model.graph.output]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return inputs, outputs, opset


def _torch_outputs(fn, feeds: Feeds, names: list[str]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = fn(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names))
    if isinstance(out, torch.Tensor):
        out = (out,)
    elif isinstance(out, dict):
        out = tuple(out.values())
    return [o.detach().float().numpy() for o in out]


#: input elements per batch the checks run at once (2M floats = 8 MB of input): a batch of 64 digits, but of
#: 13 ImageNet-size images, whose activations would otherwise take gigabytes at batch 64
BATCH_ELEMENTS = 2**21


def batch_for(sample_shape: tuple[int, ...] | list[int], cap: int = 64) -> int:
    """How many samples of this shape to run at once in the checks: at most `cap`, at least 1."""
    per = int(np.prod([d for d in sample_shape if isinstance(d, int) and d > 0], dtype=np.int64)) or 1
    return max(1, min(cap, BATCH_ELEMENTS // per))


def as_feeds(src: SourceModel, data: np.ndarray | Feeds) -> Feeds:
    """A bare array is the one input of a single-input model."""
    if isinstance(data, dict):
        return data
    return {src.inputs[0].name: data}


def session_batch(sess, default: int) -> int:
    """The batch an ONNX Runtime session takes at once: its first input's fixed batch, else `default`."""
    static_batch = sess.get_inputs()[0].shape[0]
    return static_batch if isinstance(static_batch, int) and static_batch > 0 else default


def run_session(sess, feeds: Feeds, batch: int | None = None) -> list[np.ndarray]:
    """An ONNX Runtime session over all samples of `feeds` (named after its inputs), in batches."""
    names = [i.name for i in sess.get_inputs()]
    if len(names) == 1 and names[0] not in feeds and len(feeds) == 1:
        feeds = {names[0]: next(iter(feeds.values()))}
    step = session_batch(sess, batch or batch_for(next(iter(feeds.values())).shape[1:]))
    return run_batched(lambda f: sess.run(None, {n: f[n] for n in names}), feeds, step)


def reference_outputs(src: SourceModel, x: np.ndarray | Feeds, batch: int | None = None) -> list[np.ndarray]:
    """FP32 reference outputs: torch for torch models, ONNX Runtime for a given .onnx. `x` is the one
    input's array, or the arrays keyed by input name."""
    feeds = as_feeds(src, x)
    batch = batch or batch_for(next(iter(feeds.values())).shape[1:])
    if src.kind == "onnx":
        return run_session(ort_session(src.onnx_path), feeds, batch)
    fn = src.torch_callable()
    if src.kind == "exported-program":  # a .pt2 program guards its example's batch size
        batch = src.input_shape[0]
    names = [s.name for s in src.inputs]
    return run_batched(lambda f: _torch_outputs(fn, f, names), feeds, batch)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress lines and warnings a user did not ask for."""
    buf = io.StringIO()
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("torch.onnx").setLevel(level)


def _export_torch(src: SourceModel, path: Path, opset: int | None) -> str:
    if not src.single_float:
        return _export_torchscript(src, path, opset or TORCHSCRIPT_OPSET)
    import torch

    target = src.exported if src.kind == "exported-program" else src.module
    shape = src.input_shape
    errors: list[str] = []
    # Dynamic batch first so the artifact can be benchmarked at several batch sizes; a program that
    # hard-codes its batch falls back to the static shape.
    attempts: list[tuple[str, Any]] = []
    if src.kind == "torch":
        attempts.append(("dynamic batch", ({0: torch.export.Dim("batch", min=1, max=4096)},)))
    attempts.append(("static shape", None))
    for label, dynamic_shapes in attempts:
        example = torch.randn(2 if dynamic_shapes else shape[0], *shape[1:])
        try:
            with _quiet():
                program = torch.onnx.export(
                    target, (example,), dynamo=True, external_data=False, opset_version=opset,
                    input_names=["input"], dynamic_shapes=dynamic_shapes, verbose=False,
                )
                program.save(str(path))
            return label
        except Exception as exc:  # try the next form, report all if none works
            errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise EdgekitError(f"torch.onnx.export failed for model '{src.spec}': {'; '.join(errors)}")


#: the TorchScript exporter at opset 17 is the form known to export BERT-class encoders (eager attention,
#: two int64 inputs, dynamic batch and sequence) cleanly; the dynamo exporter's opset 18+ graphs of them
#: are not what ONNX Runtime's transformer tooling expects
TORCHSCRIPT_OPSET = 17


def _export_torchscript(src: SourceModel, path: Path, opset: int) -> str:
    """Models with several or non-float inputs (transformers): the TorchScript exporter, named inputs and
    outputs, every named dynamic axis (batch, sequence) kept dynamic."""
    import torch

    from edgekit.common.io import random_feeds

    target = src.torch_callable()
    names = [s.name for s in src.inputs]
    feeds = random_feeds(src.inputs, 2, seed=0)
    example = tuple(torch.from_numpy(feeds[n]) for n in names)
    with torch.no_grad():
        out = target(*example)
    n_out = 1 if isinstance(out, torch.Tensor) else len(out)
    out_names = [o.name for o in src.outputs][:n_out] if len(src.outputs) >= n_out else \
        [f"output{i}" for i in range(n_out)]
    dynamic_axes: dict[str, dict[int, str]] = {}
    for spec in src.inputs:
        axes = {i: str(d) for i, d in enumerate(spec.dims) if isinstance(d, str)}
        if axes:
            dynamic_axes[spec.name] = axes
    for i, name in enumerate(out_names):
        dims = src.outputs[i].dims if i < len(src.outputs) else ("batch",)
        axes = {j: str(d) for j, d in enumerate(dims) if str(d) in ("batch", "sequence")}
        dynamic_axes[name] = axes or {0: "batch"}
    try:
        with _quiet():
            torch.onnx.export(target, example, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=out_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise EdgekitError(f"torch.onnx.export (TorchScript, opset {opset}) failed for model '{src.spec}': "
                           f"{type(exc).__name__}: {first}") from None
    dyn = sorted({a for axes in dynamic_axes.values() for a in axes.values()})
    return f"TorchScript exporter, opset {opset}, dynamic {', '.join(dyn)}"


def strip_debug_info(model) -> int:
    """Drop per-node debug metadata (the dynamo exporter's stack traces, FX node text, name scopes) and doc
    strings. They hold the exporting machine's source paths, have no meaning to any runtime, and were more
    than a third of the digits student's file: an artifact should not ship them. Returns bytes saved."""
    before = model.ByteSize()

    def clean(graph) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)
        for vi in (*graph.input, *graph.output, *graph.value_info):
            del vi.metadata_props[:]
            vi.doc_string = ""
        graph.doc_string = ""

    clean(model.graph)
    return before - model.ByteSize()


def convert_opset(model, lo: int, hi: int, what: str = "the ONNX graph", accepted_by: str = "",
                  hint: str = "") -> tuple[Any, int | None]:
    """`model` converted into the opset range [lo, hi] with ONNX's version converter; (model, old opset), the
    old opset None when no conversion was needed. A failed conversion is an EdgekitError naming both opsets.

    The converter's 18 -> 17 step for Reduce* ops moves `axes` back to an attribute but leaves opset 18's
    `noop_with_empty_axes` behind, which opset 17 does not know; it is dropped (0 is the old behaviour).
    """
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if lo <= opset <= hi:
        return model, None
    want = min(max(opset, lo), hi)
    try:
        converted = version_converter.convert_version(model, want)
        for node in converted.graph.node:
            if node.op_type.startswith("Reduce") and want < 18:
                keep = [a for a in node.attribute if a.name != "noop_with_empty_axes" or a.i != 0]
                del node.attribute[:]
                node.attribute.extend(keep)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{what} has opset {opset}, outside the target's range {lo}-{hi}"
                           f"{f' that {accepted_by} accepts' if accepted_by else ''}, and converting it to {want} "
                           f"failed ({first}){hint}") from None
    return converted, opset


def _copy_onnx(src: SourceModel, path: Path, opset_range: tuple[int, int]) -> str:
    import onnx

    model = onnx.load(str(src.onnx_path))  # pulls external data in, so the copy is self-contained
    onnx.save(convert_opset(model, *opset_range, what=str(src.onnx_path))[0], str(path))
    return f"copied from {src.onnx_path}"


def _tidy_export(path: Path, opset_range: tuple[int, int], spec: str) -> None:
    """After torch's exporter: no debug metadata, and the opset the target takes (torch may not emit every
    opset a target asks for; ONNX's converter bridges the gap or the export fails naming both)."""
    import onnx

    model = onnx.load(str(path))
    strip_debug_info(model)
    onnx.save(convert_opset(model, *opset_range, what=f"the ONNX export of '{spec}'")[0], str(path))


def verify_against_reference(
    src: SourceModel, onnx_path: Path, *, real_inputs: np.ndarray | Feeds | None = None,
    atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, seed: int = 0, random_samples: int = 8,
) -> dict[str, Any]:
    """Max abs error per output on random (and real) inputs; raises naming the output over tolerance."""
    from edgekit.common.io import random_feeds

    sess = ort_session(onnx_path)
    out_names = [o.name for o in sess.get_outputs()]
    sets: dict[str, Feeds] = {"random": random_feeds(src.inputs, random_samples, seed=seed)}
    if real_inputs is not None:
        real = as_feeds(src, real_inputs)
        if count(real):
            sets["real"] = {k: np.asarray(v[:64], dtype=v.dtype if not src.single_float else np.float32)
                            for k, v in real.items()}
    report: dict[str, Any] = {"atol": atol, "rtol": rtol, "max_abs_err": {}, "inputs": {}}
    for label, feeds in sets.items():
        ref = reference_outputs(src, feeds) if src.kind != "onnx" else None
        got = run_session(sess, feeds)
        report["inputs"][label] = count(feeds)
        if ref is None:
            continue
        if len(ref) != len(got):
            raise EdgekitError(f"ONNX export has {len(got)} outputs but the torch model returns {len(ref)}")
        for name, r, g in zip(out_names, ref, got, strict=True):
            err = float(np.max(np.abs(r.astype(np.float64) - g))) if r.size else 0.0
            limit = atol + rtol * float(np.max(np.abs(r))) if r.size else atol
            report["max_abs_err"][name] = max(err, report["max_abs_err"].get(name, 0.0))
            if not err <= limit:
                raise EdgekitError(
                    f"ONNX export does not match torch: output '{name}' max abs error {err:.3g} "
                    f"> tolerance {limit:.3g} on {label} inputs"
                )
    report["reference"] = "torch fp32" if src.kind != "onnx" else "the given ONNX file (no torch model)"
    return report


def export_to_onnx(
    src: SourceModel, path: Path, *, opset_range: tuple[int, int] = (17, 21),
    real_inputs: np.ndarray | Feeds | None = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
) -> OnnxModel:
    """Write one self-contained .onnx for `src` at `path` and check it against the FP32 reference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folded: list[str] = []
    if src.kind == "onnx":
        how = _copy_onnx(src, path, opset_range)
    else:
        how = _export_torch(src, path, None)
        _, _, opset = describe(path)
        if not opset_range[0] <= opset <= opset_range[1]:
            how = _export_torch(src, path, opset_range[1])
        _tidy_export(path, opset_range, src.spec)
        if source_is_quantized(src):  # torchao Q/DQ: keep them, say so, and compare with a quantized tolerance
            folded = mark_quantized(path, quantization_label(src))
            rtol = max(rtol, QUANTIZED_RTOL)
    inputs, outputs, opset = describe(path)
    check = verify_against_reference(src, path, real_inputs=real_inputs, atol=atol, rtol=rtol)
    check["how"] = how
    if folded:
        check["folded_weight_quantize"] = len(folded)
    producer = how if src.kind == "onnx" else (
        "torch.onnx.export (dynamo)" if src.single_float else "torch.onnx.export (TorchScript)")
    return OnnxModel(path, inputs, outputs, opset, producer, check, quantization_of(path))

