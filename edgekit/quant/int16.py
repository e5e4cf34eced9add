"""The int16 rung: chosen layers keep int16 weights (A8W16), the step between int8 and float.

Why weights: on a depthwise-separable CNN with BatchNorm folded into the convolutions (EfficientNet-Lite),
the per-channel int8 weight grid is the larger share of the output error; int16 weights on the first few
layers alone measured +5.5 dB of output SQNR. ONNX Runtime's QDQ quantizer writes 16-bit weights per tensor
through its `TensorQuantOverrides`, and ONNX Runtime's CPU provider runs them, but it has no int16
convolution kernel: such a layer runs as a float convolution whose weight a DequantizeLinear computes on
every run, outside the blocked (NCHWc) layout, measured ~2x slower than the FP32 model. So the int16
weights are then folded to the float constants the DequantizeLinear computes (the numbers do not change:
they are exactly the int16 grid values), and the layer runs ONNX Runtime's fast float convolution between
its int8 neighbours. The activations around the layer stay int8.

The layers to widen are chosen by measurement (`edgekit.quant.int16_search`): the output SQNR gain of int16
weights on each layer alone, per float multiply-accumulate it costs, on the check data, added in that order
until the goal holds. This module holds the graph side only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def overrides(prepared, layers: Sequence[str], per_channel: bool = True) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime `TensorQuantOverrides` giving the weights of `layers` int16 (symmetric, like int8's).

    The axis is given explicitly: an override without one quietly turns a per-channel weight per-tensor
    (measured: every channel then had the error of the largest one)."""
    from onnxruntime.quantization import QuantType

    from edgekit.graph.qdq import output_channel_axis

    wanted = set(layers)
    ranks = {t.name: len(t.dims) for t in prepared.graph.initializer}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in prepared.graph.node:
        if node.name in wanted and len(node.input) > 1:
            o: dict[str, Any] = {"quant_type": QuantType.QInt16, "symmetric": True}
            if per_channel and node.input[1] in ranks:
                o["axis"] = output_channel_axis(node, ranks[node.input[1]])
            out[node.input[1]] = [o]
    return out


def fold_weights(model, layers: Sequence[str], prepared=None) -> list[str]:
    """Replace DequantizeLinear(constant) on the weight of each of `layers` by the float constant it computes,
    in place, and its bias by the FP32 bias from `prepared` (the graph before quantization); returns the layers
    changed (see the module docstring for why).

    The bias is restored, not dequantized: ONNX Runtime quantizes a bias to int32 with scale input_scale x
    weight_scale, and with a 256x finer int16 weight scale a large bias overflows int32 and is clipped (measured
    on a Linear layer: int16 weights then lowered the output SQNR from 23.6 to 15.1 dB instead of raising it).
    """
    from onnx import numpy_helper

    from edgekit.quant.graphs import constant_dequantized_inputs, dequantize, drop_unread_qdq

    wanted = set(layers)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    fp32 = {}
    if prepared is not None:
        prep_inits = {t.name: t for t in prepared.graph.initializer}
        fp32 = {n.name: prep_inits[n.input[2]] for n in prepared.graph.node
                if n.name in wanted and len(n.input) > 2 and n.input[2] in prep_inits}
    changed: list[str] = []
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for idx, dq in constant_dequantized_inputs(node, producers, inits):
            name = f"{node.input[idx]}_folded"
            if name not in inits:
                if idx == 2 and node.name in fp32:
                    value = numpy_helper.to_array(fp32[node.name]).astype("float32")
                else:
                    value = dequantize(dq, inits)
                model.graph.initializer.append(numpy_helper.from_array(value, name))
                inits[name] = model.graph.initializer[-1]
            node.input[idx] = name
        changed.append(node.name)
    if changed:
        drop_unread_qdq(model)
    return changed


def restore_activations(model, prepared, layers: Sequence[str]) -> list[str]:
    """Put back, after each of `layers`, the ReLU/Clip ONNX Runtime's quantizer folded into the next quantizer's
    range, in place; returns the activations restored.

    Why: between two float-kernel layers ONNX Runtime's graph optimiser removes the QuantizeLinear ->
    DequantizeLinear pair as a no-op, and with it the clamp that stood for the dropped activation (measured:
    output SQNR 37.5 dB without optimisation, 15.1 dB with it). An explicit activation computes the same
    numbers either way.
    """
    from onnx import helper

    from edgekit.graph.qdq import consumers_of

    wanted = set(layers)
    consumers = consumers_of(prepared)
    prep_nodes = {n.name: n for n in prepared.graph.node}
    prep_inits = {t.name: t for t in prepared.graph.initializer}
    inits = {t.name for t in model.graph.initializer}
    producers = {o for n in model.graph.node for o in n.output}
    restored: list[str] = []
    added = []
    for node in model.graph.node:
        prep = prep_nodes.get(node.name)
        if node.name not in wanted or prep is None:
            continue
        nxt = consumers.get(prep.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type not in ("Relu", "Clip"):
            continue
        act = nxt[0]
        # folded: the layer now writes the activation's output tensor itself, and no node computes the activation
        if node.output[0] != act.output[0] or any(n.op_type == act.op_type and act.output[0] in n.output
                                                  for n in model.graph.node if n is not node):
            continue
        pre = f"{act.output[0]}_pre_{act.op_type.lower()}"
        node.output[0] = pre
        for c in act.input[1:]:
            if c and c in prep_inits and c not in inits and c not in producers:
                model.graph.initializer.append(prep_inits[c])
                inits.add(c)
        added.append(helper.make_node(act.op_type, [pre, *act.input[1:]], [act.output[0]],
                                      name=f"{act.output[0]}_restored",
                                      **{a.name: helper.get_attribute_value(a) for a in act.attribute}))
        restored.append(act.output[0])
    if added:
        from edgekit.quant.graphs import topological_sort

        model.graph.node.extend(added)
        topological_sort(model)
    return restored


def weight_sqnr(prepared_path, per_channel: bool = True) -> dict[str, float]:
    """Each weighted layer's int8 weight SQNR (dB, symmetric, per channel when `per_channel`): a free proxy
    used to pick which layers are worth measuring on a large graph."""
    import onnx
    from onnx import numpy_helper

    from edgekit.graph.qdq import output_channel_axis, weighted_nodes

    model = onnx.load(str(prepared_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    names = set(weighted_nodes(model))
    out: dict[str, float] = {}
    for node in model.graph.node:
        if node.name not in names or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        axis = output_channel_axis(node, w.ndim) if per_channel else None
        wc = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
        step = np.abs(wc).max(1, keepdims=True) / 127.0
        q = np.round(wc / np.where(step > 0, step, 1)) * step
        noise = float(((wc - q) ** 2).sum())
        out[node.name] = 200.0 if noise == 0 else 10 * np.log10(float((wc**2).sum()) / noise)
    return out
