"""Where a transformer's attention is, found from the graph's structure (never from node names).

Every quantizer that treats attention apart (ONNX Runtime int8 and int4, TensorRT's Q/DQ) needs the same
answer: the attention score and context MatMuls are the MatMuls whose two inputs are both computed tensors;
the projections and feed-forward GEMMs are the MatMul/Gemm nodes with a constant 2-D weight. Any exporter's
naming then works.
"""

from __future__ import annotations

from typing import Any


def _constant_names(model) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return names


def attention_matmuls(model) -> list[Any]:
    """MatMul nodes whose inputs are both computed tensors: attention scores (Q K^T) and context (P V)."""
    consts = _constant_names(model)
    return [n for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def projection_nodes(model) -> list[Any]:
    """MatMul/Gemm nodes with a constant 2-D weight: the Q/K/V/output projections and the feed-forward."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits \
                and len(inits[n.input[1]].dims) == 2:
            out.append(n)
    return out


def down_projections(model) -> list[Any]:
    """Projections that narrow (weight rows > columns): a feed-forward block's second GEMM, whose input is the
    GELU output with the widest activation outliers of the layer, the first place 4-bit weights hurt."""
    inits = {t.name: t for t in model.graph.initializer}
    return [n for n in projection_nodes(model) if n.op_type == "MatMul"
            and inits[n.input[1]].dims[0] > inits[n.input[1]].dims[1]]


def transformer_split(model) -> dict[str, Any] | None:
    """For a graph with attention (Softmax, and MatMuls whose two inputs are both computed): which nodes
    TensorRT's int8 Q/DQ should cover and which stay out; None for a graph without attention (CNNs keep the
    generic rules unchanged).

    int8 goes on the projection and feed-forward GEMMs only (constant weights, where the time goes);
    the attention score and context MatMuls, Softmax, LayerNorm and the rest stay out of int8: `mixed` runs
    the attention MatMuls in fp16, the way TensorRT's fused attention kernels run them.
    """
    if not any(n.op_type == "Softmax" for n in model.graph.node):
        return None
    attention = [n.name for n in attention_matmuls(model)]
    if not attention:
        return None
    int8 = {n.name for n in projection_nodes(model)}
    return {"attention": attention, "int8_nodes": sorted(int8),
            "not_int8": [n.name for n in model.graph.node if n.name and n.name not in int8]}
