"""Every bad input of the foundation issue: one line on stderr, exit code 2, and no output folder."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import no_partial_left


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "factories.py").write_text(
        "import torch\n"
        "def not_a_module():\n    return 42\n"
        "def tiny():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))\n"
    )
    (tmp_path / "corrupt.onnx").write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    np.savez(tmp_path / "wrong_shape.npz", x=np.zeros((20, 3, 8, 8), np.float32))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 16, 16), np.float32))
    (tmp_path / "exists").mkdir()
    (tmp_path / "binary.toml").write_bytes(b"PK\x03\x04\xdf\xff binary, not TOML")
    (tmp_path / "recipe.toml").write_text("method = [unclosed\n")
    return tmp_path


CASES = {
    "missing model file": (["export", "missing.onnx", "-t", "x86-server-cpu"], "model file not found: missing.onnx"),
    "corrupt onnx": (["export", "corrupt.onnx", "-t", "x86-server-cpu"], "is not a valid ONNX model"),
    "unknown target": (["export", "zoo:digits-student", "-t", "jetsun-nano"],
                       "unknown target 'jetsun-nano'; known targets: android-ort-mobile"),
    "unsupported precision": (["export", "zoo:digits-student", "-t", "android-ort-mobile", "-p", "dynamic-int8"],
                              "not supported by target 'android-ort-mobile'; supported: fp32, int8"),
    "calib shape mismatch": (["export", "zoo:digits-student", "-t", "x86-server-cpu", "--calib", "wrong_shape.npz"],
                             "has samples of shape (3, 8, 8), but the model input is 1x1x16x16"),
    "empty calib set": (["export", "zoo:digits-student", "-t", "x86-server-cpu", "--calib", "empty.npz"],
                        "is empty: it has no samples"),
    "malformed input shape": (["export", "factories:tiny", "-t", "x86-server-cpu", "--input-shape", "1x3xbig"],
                              "malformed input shape '1x3xbig'"),
    "factory not importable": (["export", "nosuchpkg.mod:make", "-t", "x86-server-cpu", "--input-shape", "1x16"],
                               "cannot import module 'nosuchpkg.mod'"),
    "factory returns non-module": (["export", "factories:not_a_module", "-t", "x86-server-cpu",
                                    "--input-shape", "1x16"], "returned int, not a torch.nn.Module"),
    "output folder exists": (["export", "zoo:digits-student", "-t", "x86-server-cpu", "--out", "exists"],
                             "output folder exists exists; choose another out= (--out) or pass force=True (--force)"),
    "int8 without calibration data": (["export", "factories:tiny", "-t", "x86-server-cpu", "-p", "int8",
                                       "--input-shape", "1x16"], "needs calibration data: give calib="),
    "unknown calibration method": (["export", "zoo:digits-student", "-t", "x86-server-cpu", "--calib-method",
                                    "magic"], "unknown calibration method 'magic'"),
    "target file not text": (["export", "zoo:digits-student", "-t", "./binary.toml"], "binary.toml: not valid TOML"),
    "calibration recipe not TOML": (["export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "int8",
                                     "--calib-method", "recipe.toml"], "recipe.toml: not valid TOML"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, workdir, case):
    args, message = CASES[case]
    before = {p.name for p in workdir.iterdir()}
    r = cli(*args, "--out", "result", cwd=workdir) if "--out" not in args else cli(*args, cwd=workdir)
    assert r.rc == 2, (r.rc, r.err)
    assert message in r.err, r.err
    assert r.err.count("\n") == 1 and r.err.startswith("edgekit"), r.err
    assert r.out == ""
    after = {p.name for p in workdir.iterdir()}
    assert after == before, after - before
    assert no_partial_left(workdir)


def test_argparse_errors_are_one_line_exit_2(cli):
    r = cli("export", "zoo:digits-student")  # --target missing
    assert r.rc == 2 and r.err.count("\n") == 1 and "--target" in r.err


def test_failed_export_after_staging_leaves_nothing(cli, workdir, monkeypatch):
    """A failure inside the backend (after the staging folder exists) still leaves no artifact behind."""
    from edgekit.backends import onnxruntime as ort_backend

    def boom(self, request):
        (request.out_dir / "half-written.onnx").write_bytes(b"partial")
        raise ort_backend.EdgekitError("simulated converter failure")

    monkeypatch.setattr(ort_backend.OrtExporter, "export", boom)
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "--out", "result", cwd=workdir)
    assert r.rc == 2 and "simulated converter failure" in r.err
    assert not (workdir / "result").exists() and no_partial_left(workdir)


def test_force_replaces_an_existing_folder(cli, workdir):
    (workdir / "exists" / "stale.txt").write_text("old")
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "fp32", "--out", "exists", "--force",
            cwd=workdir)
    assert r.rc == 0, r.err
    assert not (workdir / "exists" / "stale.txt").exists() and (workdir / "exists" / "manifest.json").is_file()
