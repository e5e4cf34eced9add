"""Q/DQ graph rules and rewrites for TensorRT's explicit quantization, usable on any ONNX graph.

TensorRT (10.x, strongly typed networks) builds INT8 only from QuantizeLinear/DequantizeLinear pairs in the
ONNX graph, and only a subset of what ONNX allows: int8 with zero point 0 (symmetric), per-tensor scales on
activations, per-tensor or per-channel scales on weights where the channel is the layer's output channel,
and float biases (no int32 bias DequantizeLinear). ONNX Runtime runs all of these and more, so a graph that
passes ONNX Runtime's accuracy check can still fail TensorRT's parser, or be parsed with different
numerics. `check_tensorrt_qdq` enforces the rules on a graph edgekit made or one the user brought (QAT),
naming the offending node so the user knows what to fix.

The float16 helpers exist for the same reason: a strongly typed TensorRT network takes each layer's
precision from the ONNX tensor types, so fp16 (and the fp16 part of `mixed`) must be written into the graph.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: ops whose second input is a weight (what int8 quantizes per channel and a Q/DQ graph holds as integers)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: ops whose output TensorRT's guidance says not to quantize: it fuses the next layer's input quantizer into
#: them, and a quantizer on their output adds a second rounding (and int8 logits) for nothing
NO_OUTPUT_QUANTIZATION = list(WEIGHTED_OPS)

#: numerically sensitive ops kept in float32 in the fp16 graph: reductions and exponentials lose range or
#: precision in fp16 (a mean over many values, exp/log/pow overflow, softmax and normalisation statistics)
FP16_SENSITIVE_OPS = (
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Softplus", "CumSum", "TopK", "Range",
    "NonMaxSuppression", "RoiAlign",
)

_FLOAT = 1
_FLOAT16 = 10
_INT8 = 3
_UINT8 = 2
_INT32 = 6
_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 10: "float16",
               17: "float8e4m3fn", 21: "uint4", 22: "int4"}


def constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name: QAT exports often carry scales as Constant nodes."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def consumers_of(model) -> dict[str, list[Any]]:
    """The nodes reading each tensor, by tensor name."""
    out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def following_activation(node, consumers: dict[str, list[Any]], consts: dict[str, np.ndarray]
                         ) -> tuple[str, str | None, tuple[float, float] | None]:
    """The Relu/Clip that alone reads `node`'s output, which a quantizer folds into the layer's output range:
    (the tensor the layer hands on, the activation's op or None, its bounds or None). A Clip input left
    out or not constant is unbounded on that side, as ONNX defines it."""
    readers = consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type not in ("Relu", "Clip"):
        return node.output[0], None, None
    act = readers[0]
    if act.op_type == "Relu":
        return act.output[0], "Relu", (0.0, math.inf)
    lo = float(consts[act.input[1]]) if len(act.input) > 1 and act.input[1] in consts else -math.inf
    hi = float(consts[act.input[2]]) if len(act.input) > 2 and act.input[2] in consts else math.inf
    return act.output[0], "Clip", (lo, hi)


#: ops that write a graph output in float from int8 inputs in one fused ONNX Runtime kernel (QGemm,
#: MatMulIntegerToFloat): float_graph_outputs leaves their graph outputs unquantized
FLOAT_OUTPUT_OPS = ("Gemm", "MatMul")


def float_graph_outputs(model, ops: tuple[str, ...] = FLOAT_OUTPUT_OPS) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pair between an `ops` node and a graph output, in place, so
    the node writes the output in float; returns the outputs changed.

    Why: the graph's output is float anyway, and rounding a classifier's logits to 8 bits only adds error where
    it matters most: two classes whose logits differ by less than one grid step (about 0.1 on ImageNet logits)
    come out tied or swapped. ONNX Runtime runs a Gemm/MatMul with int8 inputs and a float output as one fused
    kernel, so it costs no speed (measured on EfficientNet-Lite1: 2 fewer top-1 flips in 300, same latency);
    a Conv is left alone, as its int8 kernel needs a quantized output."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = consumers_of(model)
    changed: list[str] = []
    for out in model.graph.output:
        dq = producers.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(readers.get(q.output[0], [])) != 1:
            continue
        node = producers.get(q.input[0])
        if node is None or node.op_type not in ops or len(readers.get(q.input[0], [])) != 1:
            continue
        model.graph.node.remove(dq)
        model.graph.node.remove(q)
        node.output[0] = out.name
        changed.append(out.name)
    return changed


_INT8_TYPES = (2, 3)  # uint8, int8


def pad_input_channels(model, multiple: int) -> list[dict[str, Any]]:
    """Pad the input channels of each int8 Conv that reads a graph input through its own Q -> DQ to a multiple of
    `multiple`, in place: a Pad of the quantized input with its zero point, and zero weights for the new channels
    (the weight's zero point where it has one), so the output is unchanged. Returns one record per conv.

    Why: ONNX Runtime's x86 int8 convolution (MLAS's symmetric kernels, AVX2 / AVX-512 VNNI) takes input
    channels in groups of 4; an RGB stem has 3, so it falls back to a generic im2col path that runs slower than
    the float convolution it replaces (EfficientNet-Lite1's stem: 0.73 ms int8 against 0.38 ms fp32, and
    0.32 ms once padded to 4, with identical outputs). Only convs reading a graph input are padded: a network's
    inner channel counts are multiples of 8 anyway, and a pad there would copy a large tensor."""
    import onnx
    from onnx import numpy_helper

    if multiple <= 1:
        return []
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = consumers_of(model)
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    done: list[dict[str, Any]] = []
    for name in graph_inputs:
        for q in [n for n in readers.get(name, []) if n.op_type == "QuantizeLinear"]:
            dqs = readers.get(q.output[0], [])
            if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
                continue
            convs = readers.get(dqs[0].output[0], [])
            if len(convs) != 1 or convs[0].op_type != "Conv" or attr(convs[0], "group", 1) != 1:
                continue
            conv = convs[0]
            q_zp = numpy_helper.to_array(inits[q.input[2]]) if len(q.input) > 2 and q.input[2] in inits else None
            if q.input[1] not in inits or numpy_helper.to_array(inits[q.input[1]]).size != 1 or (
                    q_zp is not None and q_zp.size != 1):
                continue  # a per-axis input quantizer: not a pattern ONNX Runtime quantizes an image input with
            wdq = producers.get(conv.input[1])
            if wdq is None or wdq.op_type != "DequantizeLinear" or len(readers.get(conv.input[1], [])) != 1:
                continue
            w_init = inits.get(wdq.input[0])
            if w_init is None or w_init.data_type not in _INT8_TYPES or len(readers.get(w_init.name, [])) != 1:
                continue
            w = numpy_helper.to_array(w_init)
            channels = w.shape[1]
            padded = -(-channels // multiple) * multiple
            if channels == padded:
                continue
            zp = numpy_helper.to_array(inits[wdq.input[2]]) if len(wdq.input) > 2 and wdq.input[2] in inits \
                else np.zeros((), w.dtype)
            fill = np.broadcast_to(zp.reshape((-1,) + (1,) * (w.ndim - 1)) if zp.ndim else zp,
                                   (w.shape[0], padded - channels, *w.shape[2:])).astype(w.dtype)
            w_init.CopyFrom(numpy_helper.from_array(np.concatenate([w, fill], axis=1), w_init.name))
            pads_name, out_name = f"{conv.name}_input_pads", f"{conv.name}_input_padded"
            pads = np.zeros(2 * w.ndim, np.int64)
            pads[w.ndim + 1] = padded - channels
            model.graph.initializer.append(numpy_helper.from_array(pads, pads_name))
            # padded after the QuantizeLinear, in 8 bits with the zero point (a quarter of the bytes of a float
            # pad); what the pad holds is multiplied by zero weights anyway
            fill_value = []
            if q_zp is not None:  # Pad's constant value must be a scalar; a zero point may be stored as [1]
                fill_value = [f"{conv.name}_input_pad_value"]
                model.graph.initializer.append(numpy_helper.from_array(q_zp.reshape(()), fill_value[0]))
            pad = onnx.helper.make_node("Pad", [q.output[0], pads_name, *fill_value], [out_name],
                                        name=f"{conv.name}_input_pad", mode="constant")
            model.graph.node.insert(list(model.graph.node).index(q) + 1, pad)
            dqs[0].input[0] = out_name
            stale = {q.output[0], dqs[0].output[0], wdq.output[0]}
            for info in [v for v in model.graph.value_info if v.name in stale]:
                model.graph.value_info.remove(info)
            done.append({"node": conv.name, "input": name, "channels": int(channels), "padded_to": int(padded)})
    return done


def _const_types(model) -> dict[str, int]:
    out = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = node.attribute[0].t.data_type
    return out


def attr(node, name: str, default: int) -> int:
    """An integer attribute of an ONNX node (`default` when absent)."""
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _label(node) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def output_channel_axis(node, weight_rank: int) -> int:
    """The axis of `node`'s weight that indexes its output channels (where TensorRT allows per-channel)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return weight_rank - 1  # MatMul: [..., K, N]


def weighted_nodes(model) -> list[str]:
    """Names of the Conv/ConvTranspose/Gemm/MatMul nodes whose weight is a constant, in graph order."""
    consts = set(constants(model))
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        w = node.input[1]
        # a weight may reach the op through DequantizeLinear (and QuantizeLinear) of a constant
        while w not in consts and w in producers and producers[w].op_type in (*QDQ_OPS, "Cast", "Identity"):
            w = producers[w].input[0]
        if w in consts:
            names.append(node.name)
    return names


def check_tensorrt_qdq(model, *, allow_bias_qdq: bool = False, remedy: str | None = None) -> dict[str, Any]:
    """Raise EdgekitError naming the first node that breaks TensorRT's Q/DQ rules; else summarise the graph.

    Checked: every zero point is a constant 0 of type int8 (a missing zero point means uint8 in ONNX, which
    ONNX Runtime would then run with different numerics than TensorRT); activation scales are per-tensor;
    per-channel weight scales run along the output-channel axis; no Q/DQ sits on a bias (unless
    `allow_bias_qdq`, for a graph about to go through `fold_bias_dequantize`). `remedy`, when given, replaces
    the generic advice in the zero-point and type errors (e.g. how to redo the QAT that made the graph).
    """
    consts = constants(model)
    ctypes = _const_types(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    summary: dict[str, Any] = {"quantize_nodes": 0, "dequantize_nodes": 0, "zero_points": "all 0 (int8)",
                               "activation_quantizers": 0, "weights": {}}
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        summary["quantize_nodes" if node.op_type == "QuantizeLinear" else "dequantize_nodes"] += 1
        label = _label(node)
        if len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear":
                raise EdgekitError(
                    f"Q/DQ node '{label}' has no zero point, which ONNX reads as uint8; TensorRT needs an int8 "
                    f"zero point of 0: {remedy or 're-export the quantized model with symmetric int8 quantization'}"
                )
            continue
        zp_name = node.input[2]
        if zp_name not in consts:
            raise EdgekitError(f"Q/DQ node '{label}' has a zero point that is not a constant ('{zp_name}'); "
                               "TensorRT needs a constant int8 zero point of 0")
        zp_type = ctypes.get(zp_name)
        zp = consts[zp_name]
        is_bias = zp_type == _INT32
        if zp_type not in (_INT8, _INT32):
            raise EdgekitError(
                f"Q/DQ node '{label}' quantizes to {_TYPE_NAMES.get(zp_type, zp_type)}; TensorRT's INT8 Q/DQ "
                "must be int8 with zero point 0: " + (remedy or "re-quantize with symmetric int8 activations and "
                "weights, or export the FP32 model with --calib DATA and edgekit writes TensorRT's Q/DQ")
            )
        if np.any(zp != 0):
            nz = np.asarray(zp).reshape(-1)
            shown = int(nz[nz != 0][0])
            raise EdgekitError(
                f"Q/DQ node '{label}' has a non-zero zero point ({shown}); TensorRT supports only symmetric "
                "int8 quantization (zero point 0): " + (remedy or "use symmetric activation quantization (QAT "
                "observers or --calib from the FP32 model)")
            )
        if is_bias:
            continue  # reported below, where the consumer tells whether it is a bias
        scale = consts.get(node.input[1])
        x_is_const = node.input[0] in consts
        if not x_is_const and node.op_type == "QuantizeLinear" and scale is not None and np.size(scale) > 1:
            raise EdgekitError(f"Q/DQ node '{label}' quantizes an activation per channel; TensorRT supports only "
                               "per-tensor activation scales")
        if node.op_type == "QuantizeLinear" and not x_is_const:
            summary["activation_quantizers"] += 1
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        label = _label(node)
        if not allow_bias_qdq and len(node.input) > 2 and node.input[2] and node.input[2] in producers \
                and producers[node.input[2]].op_type == "DequantizeLinear":
            raise EdgekitError(
                f"node '{label}' has a quantized bias ('{producers[node.input[2]].name}'); TensorRT wants float "
                "biases with no Q/DQ (fold the bias DequantizeLinear into a float initializer)"
            )
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        # the weight: DQ(int8 const), or DQ(Q(float const)) when the graph keeps float weights
        q = producers.get(dq.input[0])
        w_name = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]
        if w_name not in consts:
            continue
        rank = np.ndim(consts[w_name])
        scale = consts.get(dq.input[1])
        per_channel = scale is not None and np.size(scale) > 1
        axis = attr(dq, "axis", 1) % max(rank, 1)
        want = output_channel_axis(node, rank) % max(rank, 1)
        if per_channel and axis != want:
            raise EdgekitError(
                f"weight quantizer '{_label(dq)}' of node '{label}' is per-channel along axis {axis}, but TensorRT "
                f"needs the output-channel axis {want} for {node.op_type}"
            )
        summary["weights"][node.name] = {"op": node.op_type, "quantizer": dq.name, "per_channel": per_channel,
                                         "axis": axis if per_channel else None,
                                         "channels": int(np.size(scale)) if scale is not None else None}
    return summary


def fold_bias_dequantize(model) -> list[str]:
    """Replace each constant int32 bias DequantizeLinear of a weighted op by its float value, in place.

    QAT and ONNX Runtime's default QDQ format quantize biases to int32; TensorRT wants float biases, and the
    float value is exactly what the DequantizeLinear computed, so this changes no numerics. Returns the
    names of the DequantizeLinear nodes removed.
    """
    from onnx import numpy_helper

    consts = constants(model)
    ctypes = _const_types(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    uses = Counter(i for n in model.graph.node for i in n.input)
    folded: list[str] = []
    drop: set[int] = set()
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        dq = producers.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in consts:
            continue
        if ctypes.get(dq.input[0]) != _INT32 or dq.input[1] not in consts:
            continue
        q = consts[dq.input[0]].astype(np.float64)
        zp = consts[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
        value = ((q - zp) * consts[dq.input[1]].astype(np.float64)).astype(np.float32)
        name = f"{dq.output[0]}_folded"
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        node.input[2] = name
        uses[dq.output[0]] -= 1
        if uses[dq.output[0]] == 0:
            drop.add(id(dq))
        folded.append(dq.name)
    if drop:
        keep = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        prune_initializers(model)
    return folded


def prune_initializers(model) -> None:
    """Drop initializers no node (or graph output) reads any more."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def convert_to_fp16(model, *, keep_io_fp32: bool, fp32_ops: list[str]) -> tuple[Any, list[dict[str, str]]]:
    """The whole graph in float16 except `fp32_ops` (and Q/DQ), with ONNX Runtime's converter.

    Returns the converted model and the nodes kept in float32 (name and op type), for the manifest.
    """
    import logging
    import warnings

    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # ORT's own list holds ops it cannot run in fp16 (ML ops, Resize-like ops): keep them too
    block = sorted({*DEFAULT_OP_BLOCK_LIST, *fp32_ops, *QDQ_OPS})
    kept = [{"name": n.name, "op": n.op_type} for n in model.graph.node if n.op_type in block
            and n.op_type not in QDQ_OPS]
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = convert_float_to_float16(model, keep_io_types=keep_io_fp32, op_block_list=block)
    finally:
        logging.getLogger().setLevel(level)
    return converted, kept


def nodes_to_fp16(model, names: list[str]) -> Any:
    """Run the named nodes in float16: cast their float inputs down and their outputs back up, in place.

    The rest of the graph keeps its types (fp32 and int8 Q/DQ), so a strongly typed TensorRT network runs
    exactly these layers in fp16. (ONNX Runtime's converter with a node block list instead rounds every
    tensor between blocked nodes through fp16, which would change the fp32 part's numerics.)
    """
    import onnx
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    types.update(_const_types(model))
    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(names)
    new_nodes = []
    new_inits = {}
    changed_outputs: set[str] = set()
    for node in model.graph.node:
        if node.name not in wanted:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if not name or types.get(name) != _FLOAT:
                continue
            if name in inits:
                half = f"{name}_fp16"
                if half not in new_inits:
                    new_inits[half] = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16),
                                                              half)
                node.input[i] = half
            else:
                cast_out = f"{name}_fp16_for_{node.name}"
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], name=f"{cast_out}_cast",
                                                  to=onnx.TensorProto.FLOAT16))
                node.input[i] = cast_out
        post = []
        for j, out in enumerate(node.output):
            if out and types.get(out) == _FLOAT:
                node.output[j] = f"{out}_fp16"
                post.append(helper.make_node("Cast", [f"{out}_fp16"], [out], name=f"{out}_to_fp32",
                                             to=onnx.TensorProto.FLOAT))
                changed_outputs.add(out)
        new_nodes.append(node)
        new_nodes.extend(post)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(new_inits.values())
    keep_vi = [vi for vi in model.graph.value_info if vi.name not in changed_outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep_vi)
    prune_initializers(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise EdgekitError(f"cannot run node(s) {', '.join(names)} in float16: {str(exc).splitlines()[0]}") from None
    return model
