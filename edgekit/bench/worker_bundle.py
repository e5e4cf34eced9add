"""The worker as one file a remote device can run: a zip of edgekit's Python sources.

`PYTHONPATH=edgekit-worker.zip python -m edgekit.bench.worker` works on any Python >= 3.11 with numpy and the
artifact's runtime package, without installing edgekit there: the worker and what it imports (artifact
checks, the backend runners) import nothing else at module level (torch, onnx, tqdm are imported lazily
by code the worker never calls). So a board needs `pip install numpy onnxruntime`, nothing more.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

NAME = "edgekit-worker.zip"
#: the oldest Python the shipped sources run on (pyproject's requires-python)
MIN_PYTHON = (3, 11)


def build(dest_dir: Path) -> Path:
    """Write the bundle into dest_dir and return its path (about 150 KB compressed)."""
    root = Path(__file__).resolve().parents[1]  # the edgekit package folder
    dest = Path(dest_dir) / NAME
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            bundle.write(path, ("edgekit" / path.relative_to(root)).as_posix())
    return dest
