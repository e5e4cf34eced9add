"""Read a .tflite flatbuffer back: its input/output tensors (type, shape, quantization) and its ops.

The exporter does not trust the converter's settings alone: TFLite's converter silently keeps an op in float
when it has no int8 kernel, even when asked for int8 builtins only. So the written file is read back and
every op that still computes in float is named. The flatbuffer schema comes with ai-edge-litert (the runtime
the artifact targets), so this needs neither TensorFlow nor an interpreter, and it never allocates tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ops that only move data across a float island's border; they are listed via the ops they surround
BORDER_OPS = ("QUANTIZE", "DEQUANTIZE")
_NUMPY_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "INT8": "int8", "UINT8": "uint8",
                "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    #: the shape with -1 where a dimension is dynamic (TFLite's shape_signature)
    signature: tuple[int, ...]
    scale: float | None = None  # per-tensor quantization; None when not quantized (or per-axis)
    zero_point: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "shape_signature": list(self.signature), "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class OpInfo:
    name: str  # builtin op name (CONV_2D), CUSTOM:<code> for custom ops
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class TfliteSummary:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: list[OpInfo]
    tensors: dict[int, TensorInfo] = field(repr=False, default_factory=dict)

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op.name for op in self.ops).items()))

    def float_ops(self) -> list[dict[str, Any]]:
        """Ops (other than QUANTIZE/DEQUANTIZE) with a float input or output: what did not become integer."""
        found = []
        for op in self.ops:
            if op.name in BORDER_OPS:
                continue
            touched = [self.tensors[i] for i in (*op.inputs, *op.outputs) if i >= 0]
            if any(t.dtype in FLOAT_TYPES for t in touched):
                out = self.tensors[op.outputs[0]].name if op.outputs else ""
                found.append({"op": op.name, "output": out})
        return found


def _type_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: _NUMPY_TYPES.get(k, k.lower()) for k, v in vars(schema.TensorType).items() if k.isupper()}


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}


def read_tflite(model: Path | str | bytes) -> TfliteSummary:
    """Summarise the main subgraph of a .tflite file (path) or buffer (bytes)."""
    from ai_edge_litert import schema_py_generated as schema

    buf = model if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
    root = schema.Model.GetRootAs(buf, 0)
    if root.SubgraphsLength() < 1:
        raise ValueError("the .tflite file has no subgraph")
    graph = root.Subgraphs(0)
    types, op_names = _type_names(), _op_names()

    def tensor(i: int) -> TensorInfo:
        t = graph.Tensors(i)
        q = t.Quantization()
        scale = zero = None
        if q is not None and q.ScaleLength() == 1:
            scale = float(q.ScaleAsNumpy()[0])
            zero = int(q.ZeroPointAsNumpy()[0]) if q.ZeroPointLength() == 1 else 0
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        sig = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else shape
        name = t.Name().decode() if t.Name() is not None else f"tensor{i}"
        return TensorInfo(i, name, types.get(t.Type(), str(t.Type())), shape, sig, scale, zero)

    tensors = {i: tensor(i) for i in range(graph.TensorsLength())}
    codes = []
    for k in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(k)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'?').decode()}"
        codes.append(name)
    ops = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        ins = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
        outs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        ops.append(OpInfo(codes[op.OpcodeIndex()], ins, outs))
    inputs = [tensors[int(i)] for i in np.atleast_1d(graph.InputsAsNumpy())] if graph.InputsLength() else []
    outputs = [tensors[int(i)] for i in np.atleast_1d(graph.OutputsAsNumpy())] if graph.OutputsLength() else []
    return TfliteSummary(inputs, outputs, ops, tensors)


#: TFLite ops whose second input is a constant weight tensor quantized per output channel
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


@dataclass(frozen=True)
class Int8Weight:
    """One weighted op's int8 weight as stored: the integers, their scales and the axis the scales run along."""

    op: str
    tensor: str
    values: np.ndarray
    scales: np.ndarray
    axis: int


def int8_weights(model: Path | str | bytes) -> list[Int8Weight]:
    """The int8 weights of the weighted ops of the main subgraph, read from the flatbuffer's buffers.

    Why: whether a weight chosen on another quantizer's grid (learned rounding) survives TFLite's converter is
    a question about these integers and scales, so they are read as written, not recomputed."""
    from ai_edge_litert import schema_py_generated as schema

    buf = model if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
    root = schema.Model.GetRootAs(buf, 0)
    graph = root.Subgraphs(0)
    summary = read_tflite(buf)
    found = []
    for op in summary.ops:
        if op.name not in WEIGHTED_OPS or len(op.inputs) < 2:
            continue
        index = op.inputs[2] if op.name == "TRANSPOSE_CONV" else op.inputs[1]
        t = graph.Tensors(index)
        q = t.Quantization()
        data = root.Buffers(t.Buffer()).DataAsNumpy() if t.Buffer() > 0 else 0
        if summary.tensors[index].dtype != "int8" or q is None or isinstance(data, int) or not q.ScaleLength():
            continue
        values = np.frombuffer(data.tobytes(), np.int8).reshape(summary.tensors[index].shape)
        found.append(Int8Weight(op.name, summary.tensors[index].name, values, q.ScaleAsNumpy().astype(np.float64),
                                int(q.QuantizedDimension())))
    return found
