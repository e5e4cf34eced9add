"""What each training stage is judged by: parameters and compression ratio, MACs, accuracy, retention
(student accuracy / teacher accuracy) and linear CKA between teacher and student penultimate features.

- MACs come from torch's own FLOP counter (`torch.utils.flop_counter`) on one sample: it sees the aten
  convolutions and matrix products whatever module they sit in (attention matmuls included), so a custom
  block is counted without a per-layer table. MACs = FLOPs / 2.
- The penultimate features are the input of the layer that produces the model's output (the classifier),
  found by watching which leaf module returns the output tensor. For a torch.fx graph (a torchao-converted
  QAT model has no modules left) it is the activation feeding the graph's last linear/matmul.
- Linear CKA (Kornfeld et al. 2019) compares representations of different widths and is invariant to
  rotations and isotropic scaling: 1 means the student's features are the teacher's up to such a map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.trainer import Data, accuracy_on, logits_of


def count_params(model: nn.Module) -> int:
    """Parameters of a float model. A converted (quantized) graph keeps its weights as constants, so count the
    float model it came from and pass that number on (`stage_metrics(student_params=...)`)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample of shape `sample_shape` (without the batch dimension)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros((1, *sample_shape), device=device)
    was = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was)
    return int(counter.get_total_flops() // 2)


def _fx_penultimate(model: Any, x: torch.Tensor) -> torch.Tensor | None:
    """For a torch.fx GraphModule: the value feeding the op that produces the output."""
    from torch.fx import GraphModule, Interpreter

    model = getattr(model, "fx_program", model)  # a .pt2 teacher wrapped by distill.inputs.FrozenProgram
    if not isinstance(model, GraphModule):
        return None
    output = next(n for n in model.graph.nodes if n.op == "output")
    node = output.args[0]
    while isinstance(node, tuple | list):
        node = node[0]
    if getattr(node, "op", None) != "call_function" or not node.args:
        return None
    # aten.linear(x, w, b) / aten.mm(x, w) take the features first; aten.addmm(b, x, w) second
    feat = node.args[1] if "addmm" in str(node.target) else node.args[0]
    captured: dict[str, torch.Tensor] = {}

    class _Capture(Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n is feat:
                captured["value"] = value
            return value

    _Capture(model).run(x)
    return captured.get("value")


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, D) features entering the output layer, flattened per sample."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval()
    try:
        probe = x[: min(len(x), 2)].to(device)
        fx = _fx_penultimate(model, probe)
        if fx is not None:
            parts = [_fx_penultimate(model, x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
            return torch.cat([p.reshape(len(p), -1).float().cpu() for p in parts])
        layer = output_layer(model, probe)
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))
        finally:
            handle.remove()
    finally:
        model.train(was)
    return torch.cat([c.reshape(len(c), -1).float().cpu() for c in captured])


def output_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The leaf module whose output the model returns (e.g. the classifier)."""
    outputs: list[tuple[nn.Module, Any]] = []
    handles = [m.register_forward_hook(lambda mod, _i, out: outputs.append((mod, out)))
               for m in model.modules() if not list(m.children())]
    try:
        final = logits_of(model(x))
    finally:
        for h in handles:
            h.remove()
    for module, out in reversed(outputs):
        if out is final:
            return module
    linears = [m for m, _ in outputs if isinstance(m, nn.Linear | nn.Conv2d)]
    if linears:
        return linears[-1]
    raise EdgekitError(f"cannot find the output layer of {type(model).__name__} to read penultimate features from")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between (N, Dx) and (N, Dy) representations of the same N samples."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples: {len(x)} vs {len(y)}")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if float(norm) > 0 else 0.0


def stage_metrics(teacher: nn.Module | None, student: nn.Module, data: Any, sample_shape: tuple[int, ...],
                  *, cka_samples: int = 512, teacher_accuracy: float | None = None,
                  student_params: int | None = None) -> dict[str, Any]:
    """The report every stage writes: params, compression, MACs, accuracies, retention, CKA.

    Accuracies are fractions in [0, 1] and None when the data has no labels.
    """
    data = Data.of(data, "evaluation data")
    out: dict[str, Any] = {"eval_data": data.source, "eval_samples": len(data)}
    s_params = student_params if student_params is not None else count_params(student)
    out["student_params"] = s_params
    out["student_macs"] = count_macs(student, sample_shape)
    out["student_accuracy"] = accuracy_on(student, data)
    if teacher is not None:
        out["teacher_params"] = count_params(teacher)
        out["teacher_macs"] = count_macs(teacher, sample_shape)
        out["teacher_accuracy"] = teacher_accuracy if teacher_accuracy is not None else accuracy_on(teacher, data)
        out["compression_ratio"] = out["teacher_params"] / max(s_params, 1)
        out["mac_reduction"] = out["teacher_macs"] / max(out["student_macs"], 1)
        t_acc, s_acc = out["teacher_accuracy"], out["student_accuracy"]
        out["retention"] = (s_acc / t_acc) if (t_acc and s_acc is not None) else None
        x = data.x[:cka_samples]
        out["cka"] = linear_cka(penultimate_features(teacher, x), penultimate_features(student, x))
        out["cka_samples"] = len(x)
    return out
