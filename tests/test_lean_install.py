"""torch is an optional extra: a .onnx model exports to ONNX Runtime (and is benchmarked) without it, and
what needs it says so in one line naming the extra, not in a ModuleNotFoundError traceback.

Each check runs in a fresh interpreter where `import torch` fails (torch blocked in sys.modules), which is
what a lean install without the extra looks like to edgekit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)})


def cli_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_without_torch(f"from edgekit.cli import main; sys.exit(main({args!r}))", cwd)


def tiny_onnx(path: Path) -> None:
    """y = relu(x W + b), built with onnx.helper: a model made with no torch at all."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnx_exports_without_torch_and_torch_models_say_which_extra(tmp_path) -> None:
    tiny_onnx(tmp_path / "tiny.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32))
    r = run_without_torch(
        "import numpy as np, edgekit\n"
        "art = edgekit.export('tiny.onnx', 'x86-server-cpu', 'int8', calib=np.load('calib.npy'), out='art')\n"
        "print(art.manifest['precision'], art.manifest['verification']['samples'])\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["int8", "32", "False"]

    for args in (["export", "zoo:digits-student", "-t", "x86-server-cpu", "--out", "z"],
                 ["distill", "--out", "d"]):
        r = cli_without_torch(args, tmp_path)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "needs PyTorch" in r.stderr and "pip install 'edgekit[torch]'" in r.stderr
    assert not (tmp_path / "z").exists() and not (tmp_path / "d").exists()

    r = cli_without_torch(["targets"], tmp_path)
    assert r.returncode == 0 and "edgekit[torch]" in r.stdout and "edgekit[core]" not in r.stdout
