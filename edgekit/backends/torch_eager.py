"""PyTorch eager FP32 as a backend: the baseline every exported artifact is benchmarked against.

Making the baseline an artifact like the others (a folder with manifest.json, sha256-checked files, an
Exporter and a Runner) means the benchmark harness measures it with exactly the same code, in its own
process, with the same cold-start, memory and accuracy accounting, and no `if backend == "torch"` branch.

The artifact holds a `torch.export` program (`model.pt2`, dynamic batch where the model allows it). The
runner loads it and calls `ExportedProgram.module()`, which executes the captured ATen graph op by op on
torch's eager kernels: what the user's `model(x)` costs, minus Python-level module overhead of their code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.backends.base import Exporter, ExportRequest, ExportResult, Runner
from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.models.source import SourceModel

MODEL_FILE = "model.pt2"


def _find_source(request: ExportRequest, options: dict[str, Any]) -> SourceModel | None:
    """The torch model behind the request: `request.source` (set by ExportPipeline), else the exporter option
    `source` (a SourceModel, nn.Module or model spec, for library callers)."""
    from edgekit.models.source import SourceModel, load_model

    if request.source is not None:
        return request.source
    source = options.get("source")
    if source is None:
        return None
    shape = tuple(int(d) for d in request.onnx.inputs[0].shape[1:]) if request.onnx.inputs else None
    input_shape = (1, *shape) if shape and all(d > 0 for d in shape) else None
    return source if isinstance(source, SourceModel) else load_model(source, input_shape)


class TorchEagerExporter(Exporter):
    """Saves the source model as a torch.export program; fp32 only (it is the reference, not a candidate)."""

    backend = "torch-eager"
    passthrough_options = ("source",)

    def export(self, request: ExportRequest) -> ExportResult:
        import torch

        if request.precision != "fp32":
            raise EdgekitError(f"backend torch-eager runs the FP32 model only (asked for '{request.precision}')")
        src = _find_source(request, self.options)
        if src is None:
            raise EdgekitError("backend torch-eager needs the torch model: export through ExportPipeline, or "
                               "pass exporter option source=MODEL")
        if src.kind == "onnx":
            raise EdgekitError(f"backend torch-eager needs a torch model; '{src.spec}' is an ONNX file "
                               "(benchmark it with the onnxruntime fp32 artifact as the baseline instead)")
        out = request.out_dir / MODEL_FILE
        how = self._save(src, out)
        details = {"program": how, "torch": torch.__version__, "source": src.spec}
        return ExportResult(MODEL_FILE, list(request.onnx.inputs), list(request.onnx.outputs), details)

    @staticmethod
    def _save(src: SourceModel, out: Path) -> str:
        """Dynamic batch first (so it can be benchmarked at several batch sizes), else the static shape."""
        import torch

        if src.kind == "exported-program":
            torch.export.save(src.exported, str(out))
            return "the given torch.export program"
        errors = []
        for label, dynamic in (("dynamic batch", True), ("static shape", False)):
            example = torch.randn(2 if dynamic else src.input_shape[0], *src.input_shape[1:])
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
            try:
                program = torch.export.export(src.module.eval(), (example,), dynamic_shapes=shapes)
                torch.export.save(program, str(out))
                return f"torch.export ({label})"
            except Exception as exc:  # try the static form, report both if neither works
                errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise EdgekitError(f"torch.export failed for model '{src.spec}': {'; '.join(errors)}")


class TorchEagerRunner(Runner):
    """Runs model.pt2 with torch's eager kernels under inference_mode; threads = torch.set_num_threads."""

    def load(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
            with contextlib.suppress(RuntimeError):  # settable once per process, before any inter-op work
                torch.set_num_interop_threads(1)
        path = self.artifact_dir / self.manifest["model_file"]
        from edgekit.models.checkpoint import load_exported_program

        program = load_exported_program(path)  # an artifact is data: a pickle that could run code is refused
        self.module = program.module()

    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        feed = self.as_feed(inputs)
        args = [torch.from_numpy(np.ascontiguousarray(feed[name], dtype=np.float32)) for name in self.input_names()]
        with torch.inference_mode():
            out = self.module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        elif isinstance(out, dict):
            out = tuple(out.values())
        return [o.detach().float().numpy() for o in out]

    def close(self) -> None:
        self.module = None

    @property
    def runtime_version(self) -> str:
        import torch

        return torch.__version__
