"""Export: a model -> a verified artifact for a named target (`edgekit.export(...)`, `edgekit export`).

`pipeline` holds ExportPipeline (model -> verified ONNX -> ranges, once -> backend files -> accuracy check ->
manifest, written atomically), `api` the functions of the Python API, `summary` what the command prints
after an export (the next command on the device, and what the export's own check does not prove).
"""

from __future__ import annotations

from edgekit.common.facade import make_callable
from edgekit.export.api import diagnose, export, export_model
from edgekit.export.pipeline import ExportPipeline

__all__ = ["ExportPipeline", "diagnose", "export", "export_model"]

make_callable(__name__, "export")
