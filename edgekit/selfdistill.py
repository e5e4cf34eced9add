"""Self-distillation QAT with no labels: fine-tune the fake-quantized model with its own FP32 version as the
teacher (soft-target KL only), on the unlabelled calibration samples, then export the Q/DQ graph.

Why: a user who only has calibration images cannot run supervised QAT, but needs no labels to ask the int8
model to behave like the FP32 one, which is what agreement measures anyway. This is the quant-aware
distillation of `edgekit qat` (torchao PT2E, edgekit.qat) with the teacher set to the FP32 model itself and
the label term switched off (alpha = 1), so its behaviour stays that of edgekit.qat.
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


@dataclass
class SelfDistillResult:
    model: Any  # the converted PT2E graph (Q/DQ ops, int8 weights)
    onnx: Any  # OnnxModel of the Q/DQ graph (edgekit.quantization = qat)
    metrics: dict[str, Any] = field(default_factory=dict)


def self_distill(model, x: np.ndarray, *, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR, seed: int = 0,
                 temperature: float = 1.0, out_dir: Path | str, log: Callable[[str], None] | None = None,
                 progress: bool = False) -> SelfDistillResult:
    """QAT of a copy of `model` against `model` itself on the unlabelled samples `x` (N x C x H x W)."""
    import torch

    from edgekit import qat
    from edgekit.distill.losses import DistillConfig
    from edgekit.distill.trainer import Data, TrainConfig

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
                         batch_size=min(64, len(x)))
    loss = DistillConfig(alpha=1.0, temperature=temperature, standardize_logits=False)
    result = qat.qat(teacher, student, data, data, config=qat.QATConfig(), train_config=config, loss=loss, log=log)
    path = export_qdq_onnx(result.model, torch.from_numpy(x[:2]), out_dir / "selfdistill_qat.onnx")
    from edgekit.models import load_model
    from edgekit.onnx_export import export_to_onnx

    onnx_model = export_to_onnx(load_model(path), out_dir / "selfdistill_qat.verified.onnx", real_inputs=x[:32])
    metrics = {"epochs": epochs, "lr": lr, "temperature": temperature, "samples": len(x), "labels": "none",
               "loss": "soft-target KL to the FP32 model (alpha 1)", "onnx": str(onnx_model.path)}
    return SelfDistillResult(result.model, onnx_model, metrics)


def export_qdq_onnx(converted, example, path: Path) -> Path:
    """The converted PT2E graph as Q/DQ ONNX, tagged as QAT, with no initializer shared between nodes.

    Why not qat.save_onnx: torch's exporter shares one zero-point initializer between several
    DequantizeLinear nodes, and ONNX Runtime 1.32 with `session.x64quantprecision=1` (which edgekit's
    sessions set) then fails to load the graph ("AddInitializedOrtValue Attempt to replace the existing
    tensor"); giving each node its own copy changes no numerics.
    """
    import contextlib
    import io
    import warnings

    import onnx
    import torch

    from edgekit.onnx_export import QUANTIZATION_METADATA_KEY, _quiet

    with _quiet(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        dims = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        try:
            torch.onnx.export(converted, (example,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=dims)
        except Exception:
            torch.onnx.export(converted, (example[:1],), str(path), dynamo=True, external_data=False)
    model = onnx.load(str(path))
    from edgekit.onnx_export import unshare_initializers

    unshare_initializers(model)
    meta = {p.key: p for p in model.metadata_props}
    if QUANTIZATION_METADATA_KEY in meta:
        meta[QUANTIZATION_METADATA_KEY].value = "qat (self-distillation, no labels)"
    else:
        model.metadata_props.add(key=QUANTIZATION_METADATA_KEY, value="qat (self-distillation, no labels)")
    onnx.save(model, str(path))
    return path
