"""SmoothQuant-style activation smoothing: move per-channel outlier scale from activations into weights.

Transformer activations feeding the projection GEMMs have a few channels tens of times larger than the
rest; a per-tensor int8 activation scale set by those channels leaves the others a handful of levels.
For X @ W the product is unchanged by X' = X / s, W' = diag(s) W; with s_j = max|X_j|^alpha /
max|W_j|^(1 - alpha) both sides end up with comparable per-channel ranges, and the weight side is
quantized per output channel, where the extra range costs little.

In a post-LayerNorm encoder (BERT, MiniLM) the LayerNorm output also feeds the residual path, so 1/s
cannot be folded into the LayerNorm's gamma as in pre-LN models: it is a float Mul on the branch into
the projections (one per shared input, a small elementwise op next to the GEMMs it serves).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def channel_absmax(model, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of the named float tensors over the calibration feeds."""
    import copy

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = copy.deepcopy(model)
    have = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in have:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx.ModelProto.SerializeToString(probe), opts,
                                   providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(tensors, feed)
        for name, v in zip(tensors, values, strict=True):
            m = np.abs(v.reshape(-1, v.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def smooth(model, matmuls: list[Any], feeds: Iterable[dict[str, np.ndarray]], alpha: float = 0.5) -> dict[str, Any]:
    """Smooth the inputs of the given MatMul nodes (2-D float initializer weights) in place.

    Consumers of one input tensor share one s (the max over their weights), so a single Mul serves, e.g.,
    the query, key and value projections. Returns what was smoothed and how far the ranges moved.
    """
    from collections import Counter

    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(i for n in model.graph.node for i in n.input)
    groups: dict[str, list[Any]] = {}
    for node in matmuls:
        w = inits.get(node.input[1])
        # a weight shared with another node would be rescaled under that node too: left alone
        if w is not None and len(w.dims) == 2 and uses[w.name] == 1:
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return {"smoothed_inputs": 0}
    act = channel_absmax(model, list(groups), feeds)
    done = []
    for x_name, nodes in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        a_max = act[x_name]
        s = np.power(np.maximum(a_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        inv_name = f"{x_name}_smooth_inv"
        out_name = f"{x_name}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        for node, w in zip(nodes, weights, strict=True):
            t = inits[node.input[1]]
            t.CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), t.name))
            node.input[0] = out_name
        mul = helper.make_node("Mul", [x_name, inv_name], [out_name], name=f"{x_name}_smooth")
        # the Mul goes right before its first consumer, which keeps the graph topologically sorted
        first = min(list(model.graph.node).index(n) for n in nodes)
        model.graph.node.insert(first, mul)
        done.append({"input": x_name, "consumers": [n.name for n in nodes],
                     "activation_range_ratio_before": float(a_max.max() / max(np.median(a_max), 1e-9)),
                     "activation_range_ratio_after": float((a_max / s).max() / max(np.median(a_max / s), 1e-9))})
    return {"alpha": alpha, "smoothed_inputs": len(done), "inputs": done}
