"""The activation a quantizer folds into a layer's output range (edgekit.graph.qdq.following_activation),
read one way by learned rounding and by diagnose: ONNX's Clip without a min is unbounded below, not 0."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.graph.qdq import constants, consumers_of, following_activation


def _graph(act: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    inits = [w]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="act"))
    elif act == "clip-max-only":  # Clip(x, "", 6): min left out
        inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
        nodes.append(helper.make_node("Clip", ["c", "", "six"], ["y"], name="act"))
    elif act == "relu6-constant-nodes":  # bounds from Constant nodes, as QAT exports write them
        nodes += [helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
                  helper.make_node("Constant", [], ["six"], value=numpy_helper.from_array(np.array(6.0, np.float32))),
                  helper.make_node("Clip", ["c", "zero", "six"], ["y"], name="act")]
    elif act == "shared":  # the conv output also feeds an Add: nothing is folded
        nodes += [helper.make_node("Relu", ["c"], ["r"], name="act"), helper.make_node("Add", ["c", "r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def _read(act: str):
    model = _graph(act)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return following_activation(conv, consumers_of(model), constants(model))


def test_following_activation_reads_bounds_as_onnx_defines_them():
    assert _read("relu") == ("y", "Relu", (0.0, math.inf))
    assert _read("clip-max-only") == ("y", "Clip", (-math.inf, 6.0))
    assert _read("relu6-constant-nodes") == ("y", "Clip", (0.0, 6.0))
    assert _read("shared") == ("c", None, None)


def test_diagnose_and_learned_rounding_agree_on_the_folded_activation():
    from edgekit.quant.adaround import plan_layers
    from edgekit.quant.diagnose import layer_tensors

    model = _graph("clip-max-only")
    act = layer_tensors(model)["conv"]["activation"]
    assert (act["lo"], act["hi"]) == (-math.inf, 6.0)
    assert plan_layers(model)[0].clip == (-math.inf, 6.0)
