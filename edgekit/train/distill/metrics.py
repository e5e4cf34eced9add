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
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.layer_map import LayerMap
from edgekit.train.distill.predict import accuracy_on, logits_of
from edgekit.train.distill.trainer import Data


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


# -- text students ------------------------------------------------------------------------------------
def retrieval_agreement(a: torch.Tensor, b: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Nearest neighbour (cosine, itself excluded) of each sentence under `a` vs under `b`: top-1 agreement
    and the overlap of the top-k sets."""
    def neighbours(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e.float(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-2)
        return sim.topk(min(k, len(e) - 1), dim=1).indices

    na, nb = neighbours(a), neighbours(b)
    top1 = float((na[:, 0] == nb[:, 0]).float().mean())
    overlap = float(sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(na, nb, strict=True))
                    / (na.shape[0] * na.shape[1]))
    return {"nn_top1_agreement": top1, f"nn_top{na.shape[1]}_overlap": overlap}


@torch.no_grad()
def layer_cka(teacher: nn.Module, student: nn.Module, ids: list[list[int]], vocab_map: torch.Tensor,
              lmap: LayerMap, pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Linear CKA between mean-pooled states of each mapped pair, on the same (teacher) token positions."""
    from edgekit.train.distill.text import pad
    from edgekit.train.distill.text_losses import mean_pool

    t_parts: dict[int, list[torch.Tensor]] = {t: [] for _, t in lmap.pairs}
    s_parts: dict[int, list[torch.Tensor]] = {s: [] for s, _ in lmap.pairs}
    teacher.eval()
    student.eval()
    for start in range(0, len(ids), batch_size):
        x, m = pad(ids[start : start + batch_size], pad_id)
        t_out = teacher(input_ids=x, attention_mask=m, output_hidden_states=True, return_dict=True)
        _, s_hidden, _ = student(vocab_map[x], m, states=True)
        for s, t in lmap.pairs:
            t_parts[t].append(mean_pool(t_out.hidden_states[t], m).cpu())
            s_parts[s].append(mean_pool(s_hidden[s], m).cpu())
    return {f"{s}={t}": linear_cka(torch.cat(s_parts[s]), torch.cat(t_parts[t])) for s, t in lmap.pairs}
