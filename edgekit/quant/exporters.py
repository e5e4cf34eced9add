"""Exporters that write a budgeted plan: the backend's own exporter, changed only in how it writes int8 (with
the plan's layers kept in higher precision). Used by ExportPipeline when a budget or technique is given."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edgekit.quant.qgraph import QuantSetup, build
from edgekit.quant.search import FallbackPlan


def budgeted_exporter(backend: str, plan: FallbackPlan, setup: QuantSetup, options: dict[str, Any]):
    """The backend's exporter, changed only in how it writes int8: with the plan's layers kept (chosen by the
    backend's declared Q/DQ style)."""
    from edgekit.backends.registry import check_budget_backend

    style = check_budget_backend(backend).qdq_style
    return (_TensorRTBudgeted if style == "tensorrt" else _OrtBudgeted)(plan, setup, **options)


def _ort_base():
    from edgekit.backends.onnxruntime import OrtExporter

    return OrtExporter


def _trt_base():
    from edgekit.backends.tensorrt import TensorRTExporter

    return TensorRTExporter


class _OrtBudgeted(_ort_base()):  # type: ignore[misc]
    def __init__(self, plan: FallbackPlan, setup: QuantSetup, **options: Any) -> None:
        super().__init__(**options)
        self.plan, self.setup = plan, setup

    def export(self, request):
        if request.precision != "int8" or request.onnx.quantization is not None:
            return super().export(request)
        import onnx

        from edgekit.backends.base import ExportResult
        from edgekit.backends.onnxruntime import X64_POLICY, finish_int8, float_weights, session_config
        from edgekit.graph.onnx_export import describe

        out = request.out_dir / "model.onnx"
        setup = replace(self.setup, prepared=request.prepared, ranges=request.ranges)
        record = build(setup, self.plan.kept, out, self.plan.int16)
        record["nodes_kept_float"] = list(self.plan.kept)
        record.update(finish_int8(out, {**request.target.backend_options, **self.options}))
        config = session_config(request.target.backend_options)
        details: dict[str, Any] = {"precision": "int8", "session_config": config, "x64quantprecision": X64_POLICY,
                                   "quantization": record,
                                   "float_weight_nodes": float_weights(onnx.load(str(out)))}
        inputs, outputs, opset = describe(out)
        details["opset"] = opset
        return ExportResult("model.onnx", inputs, outputs, details)


class _TensorRTBudgeted(_trt_base()):  # type: ignore[misc]
    """TensorRT's `mixed` path with the plan's layers as keep_fp16, and their inputs read in float."""

    def __init__(self, plan: FallbackPlan, setup: QuantSetup, **options: Any) -> None:
        super().__init__(**options)
        self.plan, self.setup = plan, setup

    def export(self, request):
        if request.precision != "int8" or request.onnx.quantization is not None or not self.plan.kept:
            return super().export(request)
        self.options = {**self.options, "keep_fp16": list(self.plan.kept)}
        result = super().export(replace(request, precision="mixed"))
        result.details["precision"] = "int8 with budgeted fp16 fallback (TensorRT mixed)"
        return result

    def _int8(self, request, out, opts):
        setup = replace(self.setup, prepared=request.prepared, ranges=request.ranges)
        record = build(setup, self.plan.kept, out)
        from edgekit.backends.tensorrt import TRT_QUANT_FORMAT

        record.update({"source": f"edgekit ranges ({request.ranges.method}), the shared calibration set",
                       "format_rules": dict(TRT_QUANT_FORMAT),
                       "mixed": {"fp16_nodes": list(self.plan.kept), "fp32_nodes": [],
                                 "chosen_by": "budgeted fallback (see manifest fallback)"}})
        return record
