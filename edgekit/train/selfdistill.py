"""Self-distillation QAT with no labels: fine-tune the fake-quantized model with its own FP32 version as the
teacher (soft-target KL only), on the unlabelled calibration samples, then export the Q/DQ graph.

Why: a user who only has calibration images cannot run supervised QAT, but needs no labels to ask the int8
model to behave like the FP32 one, which is what agreement measures anyway. This is the quant-aware
distillation of `edgekit qat` (torchao PT2E, edgekit.train.qat) with the teacher set to the FP32 model itself and
the label term switched off (alpha = 1), so its behaviour stays that of edgekit.train.qat.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

#: what worked on testmodels.sensitive_dwsep (see selfdistill's test and the module report): QAT repairs a
#: quantization-damaged model, so it needs a larger rate than edgekit qat's polishing default of 1e-5
DEFAULT_EPOCHS = 3
DEFAULT_LR = 1e-4
ONNX_FILE = "selfdistill_qat.verified.onnx"
LABEL = "qat (self-distillation, no labels)"  # edgekit.quantization of the exported graph


@dataclass
class SelfDistillResult:
    model: Any  # the converted PT2E graph (Q/DQ ops, int8 weights)
    onnx: Any  # OnnxModel of the Q/DQ graph (edgekit.quantization = qat)
    metrics: dict[str, Any] = field(default_factory=dict)


def self_distill(model, x: np.ndarray, *, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR, seed: int = 0,
                 temperature: float = 1.0, out_dir: Path | str, log: Callable[[str], None] | None = None,
                 progress: bool = False, batch_size: int = 64) -> SelfDistillResult:
    """QAT of a copy of `model` against `model` itself on the unlabelled samples `x` (N x C x H x W).

    `batch_size` bounds memory: a 240x240 CNN trained at 64 per batch needs several GB.
    """
    import torch

    from edgekit.train import qat
    from edgekit.train.distill.losses import DistillConfig
    from edgekit.train.distill.trainer import Data, TrainConfig

    if not isinstance(model, torch.nn.Module):
        raise EdgekitError(f"self-distillation fine-tunes a torch model; got {type(model).__name__} (an .onnx "
                           "file cannot be trained: pass the nn.Module or a .pt2 program)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < 8:
        raise EdgekitError(f"self-distillation needs at least 8 unlabelled samples; got {len(x)}")
    if epochs < 1 or lr <= 0:
        raise EdgekitError(f"self-distillation needs epochs >= 1 and lr > 0 (got epochs {epochs}, lr {lr})")
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model).eval()
    data = Data(torch.from_numpy(x), None, "unlabelled calibration samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress, desc="self-distill qat",
                         batch_size=min(batch_size, len(x)))
    loss = DistillConfig(alpha=1.0, temperature=temperature, standardize_logits=False)
    result = qat.qat(teacher, student, data, data, config=qat.QATConfig(), train_config=config, loss=loss, log=log)
    # one verified Q/DQ export (the shared path unshares the zero points ONNX Runtime would refuse), labelled so
    # the manifest of its int8 export says how the ranges were made
    qat.tag_quantization(result.model, LABEL)
    onnx_model = qat.save_onnx(result.model, (1, *x.shape[1:]), out_dir / ONNX_FILE, real_inputs=x[:32])
    metrics = {"epochs": epochs, "lr": lr, "temperature": temperature, "samples": len(x), "labels": "none",
               "loss": "soft-target KL to the FP32 model (alpha 1)", "onnx": str(onnx_model.path)}
    return SelfDistillResult(result.model, onnx_model, metrics)

