"""ONNX Runtime Mobile backend: the `.ort` flatbuffer a mobile build loads, plus `required_operators.config`
for building a reduced ONNX Runtime with only the operators this model uses.

The graph is the same fp32 or int8 QDQ ONNX the onnxruntime backend makes (same ranges, same format), then
converted with ONNX Runtime's own tool for the target's platform.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgekit.backends.base import Exporter, ExportRequest, ExportResult, phone_step
from edgekit.backends.onnxruntime import OrtExporter, OrtRunner
from edgekit.backends.options import names as option_names
from edgekit.errors import EdgekitError


def next_step(manifest: dict[str, Any]) -> str | None:
    return phone_step(manifest, "onnxruntime_perf_test", "-e cpu -m times -r 100 -x 1 {model}",
                      "or edgekit bench ART --device adb://SERIAL --perf-test PATH")


class OrtMobileExporter(Exporter):
    backend = "ort-mobile"
    needs_calibration = ("int8",)
    uses_ranges = ("int8",)
    calibrates_token_models = True

    def export(self, request: ExportRequest) -> ExportResult:
        options = {**request.target.backend_options, **self.options}
        platform = options.get("target_platform", "arm")
        style = options.get("optimization_style", "auto")
        if style == "auto":
            # QDQ graphs keep their Q/DQ nodes in Runtime style, so NNAPI/XNNPACK can claim the quantized ops
            # and the CPU provider fuses them at load with the session's own settings (ONNX Runtime's advice
            # for QDQ models); a Fixed-style int8 model bakes in u8s8 kernels that saturate on x86 hosts
            # without VNNI, which would make the host-side accuracy check wrong.
            style = "Runtime" if request.precision == "int8" else "Fixed"
        if style not in ("Fixed", "Runtime"):
            raise EdgekitError(f"backend option 'optimization_style' must be auto, Fixed or Runtime (got {style!r})")
        with tempfile.TemporaryDirectory(prefix="edgekit-ortm-") as tmp:
            onnx_dir = Path(tmp) / "onnx"
            onnx_dir.mkdir()
            staged = dataclasses.replace(request, out_dir=onnx_dir)
            ort_names = option_names("onnxruntime")
            onnx_result = OrtExporter(**{k: v for k, v in self.options.items() if k in ort_names}).export(staged)
            cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                   str(onnx_dir / onnx_result.model_file), "--output_dir", str(request.out_dir),
                   "--optimization_style", style, "--target_platform", platform]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise EdgekitError(f"ONNX Runtime's .ort conversion failed: {tail[0]}")
        ort_file = request.out_dir / "model.ort"
        config = request.out_dir / "required_operators.config"
        infix = ".with_runtime_opt" if style == "Runtime" else ""
        for written, final in ((f"model{infix}.ort", ort_file), (f"model.required_operators{infix}.config", config)):
            if (request.out_dir / written).is_file():
                (request.out_dir / written).rename(final)
        if not ort_file.is_file() or not config.is_file():
            raise EdgekitError(f".ort conversion wrote no model.ort/required_operators.config in {request.out_dir}")
        details = dict(onnx_result.details)
        details.update({"target_platform": platform, "optimization_style": style,
                        "required_operators": config.name,
                        "conversion_command": "python -m onnxruntime.tools.convert_onnx_models_to_ort model.onnx "
                                              f"--optimization_style {style} --target_platform {platform}"})
        return ExportResult(ort_file.name, onnx_result.inputs, onnx_result.outputs, details)


class OrtMobileRunner(OrtRunner):
    """ONNX Runtime's InferenceSession loads .ort files directly, so the desktop runtime checks them here."""
