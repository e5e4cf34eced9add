"""Label-free quantization-aware training of the weights of edgekit's own Q/DQ graph (the `qat` technique).

Why: on a depthwise-heavy CNN, learned rounding makes every layer's int8 weights nearly as good as float,
yet the output still differs from FP32, because what remains is the rounding of the *activations*, which no
per-layer weight choice can undo. Training the weights against the FP32 model's final outputs, with every
quantizer of the deployed graph in the loop, lets later layers learn to absorb what earlier ones lose.

How:
- the graph trained is the very Q/DQ graph the backend's exporter writes for this setup (same activation
  ranges, same Q/DQ placement); it is run in torch node by node: each activation QuantizeLinear ->
  DequantizeLinear pair becomes a fake quantization with that pair's fixed scale and zero point (gradients
  pass straight through inside the range), and each quantized weight is the float weight of the
  quantization-ready graph, fake-quantized per channel on the grid the exporter will compute from it
  (symmetric, max |w| / 127), so training sees exactly the rounding deployment applies;
- the loss is the soft-target KL to the FP32 graph's outputs on the calibration samples (no labels), with the
  FP32 outputs computed once by ONNX Runtime; weights and float biases are trained with Adam under a cosine
  schedule;
- where edgekit's ranges reach the artifact (ONNX Runtime, TensorRT), each activation quantizer's scale is
  trained too (LSQ-style: calibrated scale times exp(p), p <= 0, straight-through rounding); on EfficientNet-
  Lite1 after learned rounding this bought +0.2 dB output SQNR and an 11 % lower final loss, no change in
  top-1 agreement, so it is on (range_lr) but small;
- the trained weights are written back into a copy of the quantization-ready graph, and the learned scales
  become the ranges the exporter quantizes with (tensor names do not change), so the normal exporter builds
  the graph that was trained, with its usual fused int8 kernels and speed.

Only the operators of convolutional classifiers are run (ONNX_OPS); another graph gets an EdgekitError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

#: defaults measured on EfficientNet-Lite1 (see the benchmark cnn_qat); `steps` 0: `epochs` passes over the data;
#: `lr` is in int8 grid steps (Adam moves each weight by about lr of its channel's grid step per step)
#: `range_lr` is the rate of the activation ranges' log-scale (0: the ranges stay as calibrated)
DEFAULTS: dict[str, Any] = {"lr": 0.003, "batch_size": 8, "epochs": 8, "steps": 0, "temperature": 1.0,
                            "seed": 0, "range_lr": 0.05}
#: symmetric int8 weight grid of ONNX Runtime's quantizer
WEIGHT_QMAX = 127


@dataclass
class Weighted:
    """A trainable layer: its node in the quantized graph and the initializers in the ready graph."""

    node: str
    weight: str  # initializer name in the quantization-ready graph
    bias: str | None
    axis: int  # per-channel axis of the weight quantizer (None-like -1: per tensor)


def _qmin_qmax(zero_point: np.ndarray) -> tuple[int, int]:
    if zero_point.dtype == np.uint8:
        return 0, 255
    if zero_point.dtype == np.int8:
        return -128, 127
    if zero_point.dtype == np.uint16:
        return 0, 65535
    if zero_point.dtype == np.int16:
        return -32768, 32767
    raise EdgekitError(f"qat: activation quantizer with zero point type {zero_point.dtype} is not supported "
                       "(uint8/int8/uint16/int16 are)")


class GraphModule:
    """Runs a Q/DQ ONNX graph in torch with trainable float weights in place of its quantized ones."""

    def __init__(self, qmodel, prepared, ranges: dict[str, tuple[float, float]] | None = None) -> None:
        import torch
        from onnx import numpy_helper

        from edgekit.graph.qdq import constants

        self.qmodel = qmodel
        self.consts = {k: np.asarray(v) for k, v in constants(qmodel).items()}
        producers = {o: n for n in qmodel.graph.node for o in n.output}
        ready_inits = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
        ready_nodes = {n.name: n for n in prepared.graph.node}
        self.params: dict[str, torch.nn.Parameter] = {}
        self.units: dict[str, Any] = {}
        self.layers: list[Weighted] = []
        self.weight_of: dict[str, Weighted] = {}  # weight DequantizeLinear output -> layer
        self.bias_of: dict[str, str] = {}  # bias tensor name in the quantized graph -> ready bias initializer
        for n in qmodel.graph.node:
            if n.op_type not in ("Conv", "Gemm", "ConvTranspose") or n.name not in ready_nodes:
                continue
            dq = producers.get(n.input[1])
            ready = ready_nodes[n.name]
            if dq is None or dq.op_type != "DequantizeLinear" or ready.input[1] not in ready_inits:
                continue
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            scale = self.consts.get(dq.input[1])
            bias = ready.input[2] if len(ready.input) > 2 and ready.input[2] in ready_inits else None
            layer = Weighted(n.name, ready.input[1], bias, axis if scale is not None and scale.size > 1 else -1)
            self.layers.append(layer)
            self.weight_of[n.input[1]] = layer
            self._add(layer.weight, ready_inits[layer.weight], layer.axis)
            if bias is not None and len(n.input) > 2 and n.input[2]:
                self.bias_of[n.input[2]] = bias
                self._add(bias, ready_inits[bias], -1)
        # activation ranges learned (LSQ-style): each activation quantizer's scale is its calibrated scale times
        # exp(p), p trained with the weights and kept <= 0 (see shrink)
        self.range_of: dict[str, str] = {}  # QuantizeLinear node name -> tensor name in the ranges
        self.log_scales: dict[str, torch.nn.Parameter] = {}
        for n in qmodel.graph.node:
            if ranges and n.op_type == "QuantizeLinear" and n.input[0] in ranges and len(n.input) > 1 \
                    and np.size(self.consts.get(n.input[1], np.zeros(2))) == 1:
                self.range_of[n.name] = n.input[0]
                self.log_scales.setdefault(n.input[0], torch.nn.Parameter(torch.zeros(())))
        self.skip = {n.output[0] for n in qmodel.graph.node if n.output[0] in self.weight_of
                     or n.output[0] in self.bias_of}
        unknown = sorted({n.op_type for n in qmodel.graph.node} - set(ONNX_OPS))
        if unknown:
            raise EdgekitError(f"qat runs convolutional graphs only; this one has {', '.join(unknown)} (supported: "
                               f"{', '.join(sorted(ONNX_OPS))}): use adaround or the other techniques instead")
        if not self.layers:
            raise EdgekitError("qat found no quantized Conv/Gemm weights to train in this graph")

    def _add(self, name: str, value: np.ndarray, axis: int) -> None:
        """A trained tensor, stored in units of its initial int8 grid step (per channel along `axis`, else per
        tensor), so one learning rate means the same fraction of a grid step for every layer: weights of
        depthwise and pointwise layers differ by orders of magnitude, and a rate in absolute terms that
        moves one by a fraction of a step throws the other across many."""
        import torch

        w = torch.from_numpy(np.array(value, dtype=np.float32))
        if axis < 0 or w.dim() < 2:
            unit = (w.abs().max() / WEIGHT_QMAX).clamp_min(1e-8)
        else:
            dims = [d for d in range(w.dim()) if d != axis % w.dim()]
            unit = (w.abs().amax(dim=dims, keepdim=True) / WEIGHT_QMAX).clamp_min(1e-8)
        self.units[name] = unit
        self.params[name] = torch.nn.Parameter(w / unit)

    def value(self, name: str):
        """The float value of a trained tensor."""
        return self.params[name] * self.units[name]

    def weight(self, layer: Weighted):
        """The float weight fake-quantized on the exporter's symmetric grid (scale from its current values)."""
        import torch

        w = self.value(layer.weight)
        if layer.axis < 0:
            scale = (w.detach().abs().max() / WEIGHT_QMAX).clamp_min(1e-12)
            return torch.fake_quantize_per_tensor_affine(w, float(scale), 0, -WEIGHT_QMAX, WEIGHT_QMAX)
        dims = [d for d in range(w.dim()) if d != layer.axis % w.dim()]
        scale = (w.detach().abs().amax(dim=dims) / WEIGHT_QMAX).clamp_min(1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, layer.axis % w.dim(), -WEIGHT_QMAX,
                                                      WEIGHT_QMAX)

    def __call__(self, x):
        import torch

        env: dict[str, Any] = {self.qmodel.graph.input[0].name: x}
        for n in self.qmodel.graph.node:
            if n.output[0] in self.skip:
                continue
            args = []
            for i, name in enumerate(n.input):
                if not name:
                    args.append(None)
                elif name in self.weight_of:
                    args.append(self.weight(self.weight_of[name]))
                elif name in self.bias_of:
                    args.append(self.value(self.bias_of[name]))
                elif name in env:
                    args.append(env[name])
                elif name in self.consts:
                    value = self.consts[name]
                    keep = n.op_type in _ARRAY_ARGS.get(i, ()) or n.op_type in ("QuantizeLinear", "DequantizeLinear")
                    args.append(value if keep else torch.from_numpy(np.ascontiguousarray(value)))
                else:
                    raise EdgekitError(f"qat: tensor {name} of node {n.name} has no producer")
            if n.name in self.range_of:
                outs = _learned_q(n, args[0], args[1], args[2] if len(args) > 2 else None,
                                  self.log_scales[self.range_of[n.name]])
            else:
                outs = ONNX_OPS[n.op_type](n, *args)
            outs = outs if isinstance(outs, tuple) else (outs,)
            for name, value in zip(n.output, outs, strict=False):
                env[name] = value
        return env[self.qmodel.graph.output[0].name]

    def shrink(self) -> None:
        """Keep every learned range inside its calibrated one (p <= 0).

        Why: the quantizer of a convolution's output also stands for the ReLU6 that ONNX Runtime folded into
        it (the graph has no Clip left), so a range grown past 6 would drop the clip from the deployed model;
        and no calibration sample needed a wider range."""
        import torch

        with torch.no_grad():
            for p in self.log_scales.values():
                p.clamp_(max=0.0)

    def range_factors(self) -> dict[str, float]:
        """Each learned tensor's scale as a fraction of its calibrated one (exp(p), at most 1)."""
        return {name: float(np.exp(float(p.detach()))) for name, p in self.log_scales.items()}

    def learned_ranges(self, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        """`ranges` with each learned tensor's (min, max) scaled by its learned factor: the quantizer computes
        scale from max - min and the zero point from min / scale, so the graph built from these ranges has
        the trained scales and the calibrated zero points."""
        out = dict(ranges)
        for name, m in self.range_factors().items():
            lo, hi = ranges[name]
            out[name] = (lo * m, hi * m)
        return out

    def write(self, prepared, dest: Path) -> None:
        """The quantization-ready graph with the trained weights and biases (same tensor names)."""
        import onnx
        from onnx import numpy_helper

        for init in prepared.graph.initializer:
            if init.name in self.params:
                value = self.value(init.name).detach().numpy().astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(value, init.name))
        onnx.save(prepared, str(dest))


# -- operators ---------------------------------------------------------------------------------------------
def _attr(node, name: str, default: Any = None) -> Any:
    """Any attribute of an ONNX node as a Python value (`default` when absent)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _q(node, x, scale, zero=None):
    """QuantizeLinear followed (always, in these graphs) by its DequantizeLinear: returns the value on the
    grid, marked so the DequantizeLinear passes it on (fake quantization, straight-through gradient)."""
    import torch

    zero = np.zeros((), np.uint8) if zero is None else zero
    lo, hi = _qmin_qmax(zero)
    if np.size(scale) != 1:
        raise EdgekitError(f"qat: per-channel activation quantizer at {node.name} is not supported")
    return _OnGrid(torch.fake_quantize_per_tensor_affine(x, float(np.reshape(scale, -1)[0]),
                                                         int(np.reshape(zero, -1)[0]), lo, hi))


def _learned_q(node, x, scale, zero, log_scale):
    """QuantizeLinear with a trainable scale (calibrated scale times exp(log_scale)): rounding passes the
    gradient straight through, and the scale gets the LSQ gradient from both the rounding and the clamp."""
    import torch

    zero = np.zeros((), np.uint8) if zero is None else zero
    lo, hi = _qmin_qmax(zero)
    s = float(np.reshape(scale, -1)[0]) * torch.exp(log_scale)
    z = float(np.reshape(zero, -1)[0])
    v = x / s + z
    v = v + (torch.round(v) - v).detach()
    return _OnGrid((v.clamp(lo, hi) - z) * s)


class _OnGrid:
    """An activation already fake-quantized by its QuantizeLinear."""

    def __init__(self, value) -> None:
        self.value = value


def _dq(node, x, scale, zero=None):
    import torch

    if isinstance(x, _OnGrid):
        return x.value
    if isinstance(x, np.ndarray):  # a constant that stays quantized (e.g. an untrained weight)
        s = np.asarray(scale, np.float32)
        z = np.zeros_like(x) if zero is None else np.asarray(zero)
        axis = _attr(node, "axis", 1)
        if s.size > 1:
            shape = [1] * x.ndim
            shape[axis % x.ndim] = s.size
            s, z = s.reshape(shape), z.reshape(shape)
        return torch.from_numpy(((x.astype(np.float32) - z.astype(np.float32)) * s).astype(np.float32))
    raise EdgekitError(f"qat: DequantizeLinear {node.name} reads a tensor that no QuantizeLinear produced")


def _conv(node, x, w, b=None):
    import torch.nn.functional as F

    pads = _attr(node, "pads", [0, 0, 0, 0])
    if _attr(node, "auto_pad", "NOTSET") != "NOTSET":
        raise EdgekitError(f"qat: Conv {node.name} uses auto_pad; export with explicit pads")
    half = len(pads) // 2
    if list(pads[:half]) != list(pads[half:]):
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    return F.conv2d(x, w, b, stride=_attr(node, "strides", [1, 1]), padding=list(pads[:half]),
                    dilation=_attr(node, "dilations", [1, 1]), groups=_attr(node, "group", 1))


def _gemm(node, a, b, c=None):
    import torch

    a = a.t() if _attr(node, "transA", 0) else a
    b = b.t() if _attr(node, "transB", 0) else b
    y = _attr(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + _attr(node, "beta", 1.0) * torch.as_tensor(c)


def _clip(node, x, lo=None, hi=None):
    import torch

    lo = _attr(node, "min", None) if lo is None else float(lo)
    hi = _attr(node, "max", None) if hi is None else float(hi)
    return torch.clamp(x, lo, hi)


def _flatten(node, x):
    axis = _attr(node, "axis", 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _reshape(node, x, shape):
    shape = [int(s) for s in np.reshape(shape, -1)]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if -1 not in shape and int(np.prod(shape)) != x.numel():
        shape[0] = -1  # a graph exported at batch 1 fixes the batch in its shapes; training runs batches
    return x.reshape(shape)


def _pool(node, x):
    import torch.nn.functional as F

    kernel = _attr(node, "kernel_shape")
    pads = _attr(node, "pads", [0] * 2 * len(kernel))
    half = len(pads) // 2
    stride = _attr(node, "strides", [1] * len(kernel))
    if node.op_type == "MaxPool":
        return F.max_pool2d(x, kernel, stride, list(pads[:half]))
    return F.avg_pool2d(x, kernel, stride, list(pads[:half]), count_include_pad=bool(_attr(node,
                                                                                          "count_include_pad", 0)))


def _reduce_mean(node, x, axes=None):
    axes = _attr(node, "axes", None) if axes is None else [int(a) for a in np.reshape(axes, -1)]
    axes = tuple(range(x.dim())) if axes is None else tuple(axes)
    return x.mean(dim=axes, keepdim=bool(_attr(node, "keepdims", 1)))


def _squeeze(node, x, axes=None):
    axes = _attr(node, "axes", None) if axes is None else [int(a) for a in np.reshape(axes, -1)]
    for a in sorted((a % x.dim() for a in axes), reverse=True) if axes is not None else ():
        x = x.squeeze(a)
    return x if axes is not None else x.squeeze()


def _unsqueeze(node, x, axes=None):
    axes = _attr(node, "axes", None) if axes is None else [int(a) for a in np.reshape(axes, -1)]
    for a in sorted(axes):
        x = x.unsqueeze(a)
    return x


def _constant(node):
    import torch
    from onnx import numpy_helper

    return torch.from_numpy(numpy_helper.to_array(_attr(node, "value")).copy())


#: argument positions that must stay numpy arrays (shapes, axes)
_ARRAY_ARGS: dict[int, tuple[str, ...]] = {1: ("Reshape", "Clip", "ReduceMean", "Squeeze", "Unsqueeze"),
                                           2: ("Clip",)}

ONNX_OPS: dict[str, Callable[..., Any]] = {
    "QuantizeLinear": _q,
    "DequantizeLinear": _dq,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda n, a, b: a @ b,
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: a / b,
    "Relu": lambda n, x: x.clamp_min(0),
    "Clip": _clip,
    "Sigmoid": lambda n, x: x.sigmoid(),
    "HardSigmoid": lambda n, x: (x * _attr(n, "alpha", 0.2) + _attr(n, "beta", 0.5)).clamp(0, 1),
    "HardSwish": lambda n, x: x * (x / 6 + 0.5).clamp(0, 1),
    "GlobalAveragePool": lambda n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "AveragePool": _pool,
    "MaxPool": _pool,
    "ReduceMean": _reduce_mean,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda n, *xs: __import__("torch").cat(xs, dim=_attr(n, "axis", 0)),
    "Transpose": lambda n, x: x.permute(*_attr(n, "perm", list(reversed(range(x.dim()))))),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Identity": lambda n, x: x,
    "Constant": _constant,
}


# -- training ----------------------------------------------------------------------------------------------
def train(setup, cal, dest: Path, options: dict[str, Any] | None = None,
          log: Callable[[str], None] | None = None, learn_ranges: bool = True) -> tuple[Path, dict[str, Any], Any]:
    """QAT of the weights of `setup`'s Q/DQ graph against its FP32 outputs on the calibration samples; writes
    the quantization-ready graph with the trained weights to `dest` and returns (dest, what it did, the
    learned activation ranges or None).

    `learn_ranges` False (a backend whose converter computes its own ranges) or option range_lr 0 keeps the
    activation ranges as calibrated."""
    import onnx
    import torch

    from edgekit.quant.qgraph import build, run_session, session

    opts = {**DEFAULTS, **(options or {})}
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise EdgekitError(f"unknown qat option(s) {', '.join(unknown)}; available: {', '.join(DEFAULTS)}")
    if not opts["lr"] > 0 or opts["batch_size"] < 1 or opts["epochs"] < 1 or opts["steps"] < 0 \
            or opts["range_lr"] < 0:
        raise EdgekitError(f"qat needs lr > 0, batch_size >= 1, epochs >= 1, steps >= 0 and range_lr >= 0 (got "
                           f"{opts})")
    log = log or (lambda _m: None)
    x_all = np.ascontiguousarray(cal.x, dtype=np.float32)
    if len(x_all) < 2:
        raise EdgekitError(f"qat trains on the calibration samples and needs at least 2; got {len(x_all)}")
    t0 = time.time()
    start = setup.workdir / "qat-start.onnx"
    build(setup, [], start)
    teacher = torch.from_numpy(run_session(session(setup.prepared, setup.options), x_all)[0])
    qmodel = onnx.load(str(start))
    prepared = onnx.load(str(setup.prepared))
    learning = learn_ranges and opts["range_lr"] > 0
    net = GraphModule(qmodel, prepared, setup.ranges.tensors if learning else None)
    gen = torch.Generator().manual_seed(int(opts["seed"]))
    batch = min(int(opts["batch_size"]), len(x_all))
    per_epoch = math.ceil(len(x_all) / batch)
    steps = int(opts["steps"]) or int(opts["epochs"]) * per_epoch
    groups = [{"params": list(net.params.values()), "lr": float(opts["lr"])}]
    if net.log_scales:
        groups.append({"params": list(net.log_scales.values()), "lr": float(opts["range_lr"])})
    optim = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    temp = float(opts["temperature"])
    x_t = torch.from_numpy(x_all)
    losses: list[float] = []
    order = torch.randperm(len(x_all), generator=gen)
    for step in range(steps):
        k = step % per_epoch
        if k == 0 and step:
            order = torch.randperm(len(x_all), generator=gen)
        idx = order[k * batch : (k + 1) * batch]
        out = net(x_t[idx])
        loss = torch.nn.functional.kl_div(torch.log_softmax(out / temp, -1), torch.log_softmax(teacher[idx] / temp,
                                                                                               -1),
                                          reduction="batchmean", log_target=True) * temp * temp
        optim.zero_grad()
        loss.backward()
        optim.step()
        net.shrink()
        sched.step()
        losses.append(float(loss.detach()))
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"qat step {step + 1}/{steps}: KL {np.mean(losses[-per_epoch:]):.4f} ({time.time() - t0:.0f}s)")
    net.write(prepared, dest)
    ranges = None
    if net.log_scales:
        from dataclasses import replace

        ranges = replace(setup.ranges, method="qat-learned", tensors=net.learned_ranges(setup.ranges.tensors),
                         options={"from": setup.ranges.method, "range_lr": opts["range_lr"]})
        factors = np.array(list(net.range_factors().values()))
    first = float(np.mean(losses[: min(per_epoch, len(losses))]))
    last = float(np.mean(losses[-min(per_epoch, len(losses)):]))
    return dest, {"layers_trained": len(net.layers), "steps": steps, "batch_size": batch, "lr": opts["lr"],
                  "temperature": temp, "samples": len(x_all), "labels": "none",
                  "loss": "soft-target KL to the FP32 graph's outputs", "first_epoch_loss": round(first, 5),
                  "final_loss": round(last, 5), "seconds": round(time.time() - t0),
                  "activation_ranges": ({"learned": len(net.log_scales), "range_lr": opts["range_lr"],
                                         "narrowed_over_5_percent": int((factors < 0.95).sum()),
                                         "smallest_factor": round(float(factors.min()), 4)}
                                        if ranges is not None else "kept as calibrated")}, ranges
