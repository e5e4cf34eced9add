"""Embedding tables quantized per row, so a transformer's file shrinks where most of its bytes are.

A BERT-style encoder keeps half its weights in the word-embedding table (30522 x 384 floats in MiniLM-L6),
and ONNX Runtime's `quantize_dynamic` quantizes that table per tensor: one scale for rows whose ranges
differ by an order of magnitude, which is where much of its accuracy goes. Each row is what one token
looks up, so one scale per row loses almost nothing, and the lookup stays a plain Gather: the int8 rows
and their scales are gathered by the same indices and multiplied back. Only standard ONNX ops are used, so
every runtime that runs ONNX runs the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: tables smaller than this many elements are not worth a rewrite (token-type tables: 2 x hidden)
MIN_TABLE_ELEMENTS = 4096


def embedding_gathers(model) -> list[Any]:
    """Gather nodes that look rows up in a float rank-2 initializer (axis 0): the embedding lookups."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table.data_type == TensorProto.FLOAT and len(table.dims) == 2 and axis == 0:
            found.append(node)
    return found


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (int8 table, float32 scale per row); an all-zero row gets scale 1."""
    amax = np.abs(table).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_embeddings_int8(model, min_elements: int = MIN_TABLE_ELEMENTS) -> list[dict[str, Any]]:
    """Rewrite each embedding Gather over a large float table into an int8 per-row lookup, in place.

    Gather(table, ids) becomes Mul(Cast(Gather(table_int8, ids)), Unsqueeze(Gather(scale, ids), -1)).
    Returns one record per table: name, shape, and the largest absolute rounding error.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    done: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    new_nodes = []
    axes_name = "edgekit_emb_unsqueeze_axes"
    need_axes = False
    targets = {n.output[0] for n in embedding_gathers(model)}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in model.graph.node:
        table_name = node.input[0] if node.output[0] in targets else None
        if table_name is None or int(np.prod(inits[table_name].dims)) < min_elements:
            new_nodes.append(node)
            continue
        if table_name not in done:
            table = numpy_helper.to_array(inits[table_name]).astype(np.float32)
            q, scale = quantize_rows(table)
            err = float(np.abs(q.astype(np.float32) * scale[:, None] - table).max())
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{table_name}_int8"),
                                            numpy_helper.from_array(scale, f"{table_name}_row_scale")])
            done[table_name] = table_name
            records.append({"table": table_name, "shape": list(table.shape), "format": "int8 per row (symmetric)",
                            "max_abs_error": err})
        base = node.name or node.output[0]
        ids = node.input[1]
        out = node.output[0]
        need_axes = True
        new_nodes.extend([
            helper.make_node("Gather", [f"{table_name}_int8", ids], [f"{base}_q"], name=f"{base}_q", axis=0),
            helper.make_node("Cast", [f"{base}_q"], [f"{base}_qf"], name=f"{base}_cast", to=TensorProto.FLOAT),
            helper.make_node("Gather", [f"{table_name}_row_scale", ids], [f"{base}_s"], name=f"{base}_scale", axis=0),
            helper.make_node("Unsqueeze", [f"{base}_s", axes_name], [f"{base}_s1"], name=f"{base}_unsq")
            if opset >= 13 else
            helper.make_node("Unsqueeze", [f"{base}_s"], [f"{base}_s1"], name=f"{base}_unsq", axes=[-1]),
            helper.make_node("Mul", [f"{base}_qf", f"{base}_s1"], [out], name=f"{base}_dequant"),
        ])
    if need_axes and opset >= 13:
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes_name))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    from edgekit.graph.qdq import prune_initializers

    prune_initializers(model)
    return records
