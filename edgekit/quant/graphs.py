"""Graph surgery on ONNX Runtime's Q/DQ graphs: reading a kept layer's input in float, folding constant
weight DequantizeLinear nodes, removing unread Q/DQ pairs, exposing intermediate tensors as outputs.

Kept apart from the search so the diagnosis, the PTQ techniques and the int16 rung share one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.graph.qdq import FLOAT_OUTPUT_OPS, WEIGHTED_OPS, attr, consumers_of, prune_initializers

__all__ = ["WEIGHTED_OPS", "attr", "dequantize", "drop_unread_qdq", "float_inputs", "fold_float_output_weights",
           "topological_sort", "with_outputs"]

#: activation ops ONNX Runtime's QDQ quantizer may fold into the following quantizer's range (and drop)
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")


def with_outputs(src: Path, names: Sequence[str], dest: Path) -> Path:
    """A copy of the graph at `src` that also outputs the tensors `names` (float32 or float16)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have:
            model.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(dest))
    return dest


def constant_dequantized_inputs(node, producers: dict[str, Any], inits: dict[str, Any]) -> list[tuple[int, Any]]:
    """(input index, DequantizeLinear) for a weighted node's weight (1) and bias (2) inputs that come from a
    DequantizeLinear of constants: the inputs a fold back to float rewrites."""
    found = []
    for idx in (1, 2):
        if idx >= len(node.input) or not node.input[idx]:
            continue
        dq = producers.get(node.input[idx])
        if dq is not None and dq.op_type == "DequantizeLinear" and all(i in inits for i in dq.input if i):
            found.append((idx, dq))
    return found


def dequantize(dq, inits: dict[str, Any]) -> np.ndarray:
    """What a DequantizeLinear of constants computes: (q - zero_point) * scale in float32, per axis."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]])
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2]
            else np.zeros_like(scale, dtype=np.int32))
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)


def private_input_dequantize(model, layers: Sequence[str]) -> list[str]:
    """Give each of `layers` (Conv/ConvTranspose/Gemm with a constant float weight) its own DequantizeLinear on
    its input, with the per-tensor scale written per channel (the same value repeated), in place; returns the
    layers changed.

    Why: ONNX Runtime's WeightBiasQuantization optimiser (ORT >= 1.20, at load, every optimisation level)
    re-quantizes the float weight of any Conv/Gemm whose input comes from a per-tensor DequantizeLinear to
    symmetric *per-tensor* int8, and its bias to int32: a layer edgekit deliberately gave float (int16-grid)
    weights would silently run coarser than plain per-channel int8. It skips a layer whose input scale is not
    a scalar; a per-channel scale of identical values computes the same numbers.
    """
    from onnx import helper, numpy_helper

    wanted = set(layers)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    added, changed = [], []
    for node in model.graph.node:
        if node.name not in wanted or node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size != 1:
            continue
        w = inits[node.input[1]].dims
        if node.op_type == "Conv":
            channels = w[1] * attr(node, "group", 1)
        elif node.op_type == "ConvTranspose":
            channels = w[0]
        else:
            channels = w[1] if attr(node, "transB", 0) else w[0]
        tag = f"{node.name}_input_per_channel"
        inputs = [dq.input[0], f"{tag}_scale"]
        model.graph.initializer.append(numpy_helper.from_array(np.full(channels, scale.reshape(-1)[0],
                                                                       dtype=scale.dtype), f"{tag}_scale"))
        if len(dq.input) > 2 and dq.input[2] in inits:
            zp = numpy_helper.to_array(inits[dq.input[2]])
            model.graph.initializer.append(numpy_helper.from_array(np.full(channels, zp.reshape(-1)[0],
                                                                           dtype=zp.dtype), f"{tag}_zero_point"))
            inputs.append(f"{tag}_zero_point")
        added.append(helper.make_node("DequantizeLinear", inputs, [f"{tag}_dq"], name=f"{tag}_dq", axis=1))
        node.input[0] = f"{tag}_dq"
        changed.append(node.name)
    if added:
        model.graph.node.extend(added)
        drop_unread_qdq(model)
        topological_sort(model)
    return changed


def fold_float_output_weights(model) -> list[str]:
    """For each weighted node ONNX Runtime cannot fuse into an int8 kernel (its output is not read by exactly
    one QuantizeLinear: it feeds a kept layer), replace DequantizeLinear(constant) on its weight and bias by
    the float constant it computes, in place; returns the nodes changed.

    Why: ONNX Runtime runs such a node as a float op whose weight is computed by a DequantizeLinear on every
    run, and a weight that is not a constant also keeps the op out of its NCHWc (blocked) convolution: a
    depthwise layer measured 10x slower that way than in the FP32 graph. The numbers do not change: the
    folded constant is exactly what DequantizeLinear computes ((q - zero_point) * scale in float32).
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = consumers_of(model)
    outputs = {o.name for o in model.graph.output}
    changed: list[str] = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        readers = consumers.get(node.output[0], [])
        if node.output[0] not in outputs and len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
            continue  # DQ -> op -> Q: ONNX Runtime fuses it into its int8 kernel
        data = producers.get(node.input[0])
        if node.output[0] in outputs and node.op_type in FLOAT_OUTPUT_OPS and data is not None \
                and data.op_type == "DequantizeLinear":
            continue  # DQ -> Gemm/MatMul -> float graph output (float_graph_outputs): fused into one kernel too
        done = False
        for idx, dq in constant_dequantized_inputs(node, producers, inits):
            value = dequantize(dq, inits)
            name = f"{node.input[idx]}_folded"
            if name not in inits:
                model.graph.initializer.append(numpy_helper.from_array(value, name))
                inits[name] = model.graph.initializer[-1]
            node.input[idx] = name
            done = True
        if done:
            changed.append(node.name)
    if changed:
        drop_unread_qdq(model)
        private_input_dequantize(model, changed)
    return changed


def float_inputs(model, prepared, kept: Sequence[str]) -> list[str]:
    """Make each kept node read its activation inputs in float, in place; returns the tensors so restored.

    A kept node's input comes through DequantizeLinear(QuantizeLinear(t)); it is rewired to t. When the
    quantizer folded a ReLU/Clip into that quantizer (t is then the pre-activation tensor), the activation is
    re-inserted from the FP32 graph. Q/DQ pairs left with no reader are removed.
    """
    import onnx
    from onnx import helper

    producers = {o: n for n in model.graph.node for o in n.output}
    prep_nodes = {n.name: n for n in prepared.graph.node}
    prep_producers = {o: n for n in prepared.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    prep_inits = {t.name: t for t in prepared.graph.initializer}
    wanted = set(kept)
    restored: list[str] = []
    added: list[Any] = []
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue
            source = q.input[0]
            # the tensor this input is in the FP32 graph, and whether the quantizer dropped its activation
            prep_input = prep_nodes[node.name].input[i] if node.name in prep_nodes else source
            act = prep_producers.get(prep_input)
            have = producers.get(source)
            if (act is not None and act.op_type in FOLDABLE_ACTIVATIONS and have is not None
                    and have.op_type != act.op_type):
                out = f"{source}_{act.op_type.lower()}_float"
                if out not in {o for n in added for o in n.output}:
                    extra_inputs = [n for n in act.input[1:] if n]
                    for c in extra_inputs:
                        if c in prep_inits and c not in inits:
                            model.graph.initializer.append(prep_inits[c])
                            inits.add(c)
                    added.append(helper.make_node(act.op_type, [source, *act.input[1:]], [out],
                                                  name=f"{out}_node", **{a.name: helper.get_attribute_value(a)
                                                                          for a in act.attribute}))
                source = out
            node.input[i] = source
            restored.append(source)
    if added:
        model.graph.node.extend(added)
    drop_unread_qdq(model)
    topological_sort(model)
    onnx.checker.check_model(model)
    return restored


def drop_unread_qdq(model) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (after rewiring), then unread initializers."""
    while True:
        read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        ids = {id(n) for n in dead}
        keep = [n for n in model.graph.node if id(n) not in ids]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    prune_initializers(model)


def topological_sort(model) -> None:
    """Reorder nodes so each comes after its inputs' producers (rewiring may break ONNX's order)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise EdgekitError(f"cannot order the graph after keeping layers in float (cycle near {rest[0].name})")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)
