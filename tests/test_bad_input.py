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


# --- hardening: every bad input below is one line, exit 2, nothing written --------------------------------------
def _arrays(folder) -> None:
    """Calibration sets that cannot calibrate, each a real 1x16x16 digits-shaped array."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 16, 16)).astype(np.float32)
    nan = x.copy()
    nan[3, 0, 0, 0], nan[5, 0, 1, 1], nan[5, 0, 2, 2] = np.nan, np.inf, -np.inf
    np.savez(folder / "nan.npz", x=nan)
    np.savez(folder / "one.npz", x=x[:1])
    np.savez(folder / "nine.npz", x=x[:9])
    np.savez(folder / "zeros.npz", x=np.zeros_like(x))
    np.savez(folder / "constant.npz", x=np.full_like(x, 0.5))
    np.savez(folder / "repeated.npz", x=np.repeat(x[:1], 40, axis=0))
    np.savez(folder / "complex.npz", x=x.astype(np.complex64))
    np.save(folder / "complex.npy", x.astype(np.complex128))


HARDENING = {
    "calib option not a number": (["--calib-method", "percentile", "--calib-option", "percentile=abc"],
                                  "--calib-option: field 'percentile' is 'abc'; allowed: a finite number from 90"),
    "calib option unknown": (["--calib-option", "bins=3"],
                             "unknown option(s) of calibration method 'minmax': 'bins'; known: symmetric"),
    "out under a regular file": (["--out", "afile/sub/out"], "cannot write --out afile/sub/out: "),
    "calibration with NaN/Inf": (["--calib", "nan.npz"],
                                 "calib= (nan.npz) holds 3 NaN or infinite value(s) in 2 of 40 sample(s)"),
    "one calibration sample": (["--calib", "one.npz"], "calibration set 'one.npz' has 1 sample(s); calibration "
                                                       "needs at least 10"),
    "nine calibration samples": (["--calib", "nine.npz"], "has 9 sample(s); calibration needs at least 10"),
    "calib-samples below the minimum": (["--calib-samples", "5"], "has 5 sample(s)"),
    "all-zero calibration set": (["--calib", "zeros.npz"], "calibration set 'zeros.npz' is all zeros (40 samples)"),
    "constant calibration set": (["--calib", "constant.npz"], "is constant (every value is 0.5)"),
    "one sample repeated": (["--calib", "repeated.npz"], "is one sample repeated 40 times"),
    "complex npz": (["--calib", "complex.npz"], "complex.npz: array 'x' is complex (complex64)"),
    "complex npy": (["--calib", "complex.npy"], "complex.npy: array 'x' is complex (complex128)"),
}


@pytest.mark.parametrize("case", list(HARDENING))
def test_hardening_bad_input_is_one_line_exit_2_and_writes_nothing(cli, workdir, case):
    _arrays(workdir)
    (workdir / "afile").write_text("a regular file")
    args, message = HARDENING[case]
    before = sorted(p.name for p in workdir.iterdir())
    if "--out" not in args:
        args = [*args, "--out", "result"]
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "int8", *args, cwd=workdir)
    assert r.rc == 2, (r.rc, r.err)
    last = r.err.splitlines()[-1]
    assert message in last and last.startswith("edgekit export: error: "), r.err
    assert all(line.startswith("edgekit: ") for line in r.err.splitlines()[:-1]), r.err  # progress lines only
    assert "warning" not in r.err and "Traceback" not in r.err
    assert sorted(p.name for p in workdir.iterdir()) == before and no_partial_left(workdir)


def test_out_inside_a_read_only_folder_fails_before_any_work(cli, workdir):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root, whom permission bits do not stop (the path-under-a-file case covers it)")
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "--out", "ro/out", cwd=workdir)
    finally:
        ro.chmod(0o755)
    assert r.rc == 2 and r.err.count("\n") == 1 and "is not writable" in r.err, r.err
    assert list(ro.iterdir()) == []


def test_unwritable_out_is_refused_before_the_model_loads(cli, workdir):
    """The check comes first: a model that would fail to load is never reached."""
    (workdir / "afile").write_text("a regular file")
    r = cli("export", "missing.onnx", "-t", "x86-server-cpu", "--out", "afile/out", cwd=workdir)
    assert r.rc == 2 and "cannot write --out afile/out: " in r.err and "afile is a file, not a folder" in r.err


def test_diagnose_with_nan_calibration_data(cli, workdir):
    _arrays(workdir)
    r = cli("diagnose", "zoo:digits-student", "-t", "x86-server-cpu", "--calib", "nan.npz", cwd=workdir)
    assert r.rc == 2 and r.out == "", (r.rc, r.out)
    assert r.err.splitlines()[-1] == ("edgekit diagnose: error: calib= (nan.npz) holds 3 NaN or infinite value(s) "
                                      "in 2 of 40 sample(s); models and calibration need finite numbers: drop or "
                                      "fix those samples")
    assert "dB" not in r.err


@pytest.mark.parametrize("members", [
    {"archive/data.pkl": b"\x00garbage" * 50, "archive/version": b"junk"},
    {"archive/version": b"junk", "archive/models/model.json": b"{not json" * 20, "archive/data/0": b"\x01" * 64},
])
def test_garbage_pt2_is_one_line_without_torch_logs(workdir, members):
    """In a real process: torch logs its deserialisation traceback to the process's stderr (a logging handler
    that in-process capture would not see)."""
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    with zipfile.ZipFile(workdir / "garbage.pt2", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("EDGEKIT_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "edgekit", "export", "garbage.pt2", "-t", "x86-server-cpu",
                           "--out", "result"], cwd=workdir, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("edgekit export: error: ") and "garbage.pt2" in proc.stderr, proc.stderr
    assert not (workdir / "result").exists() and no_partial_left(workdir)


@pytest.mark.parametrize("kind", ["duplicates", "outlier"])
def test_suspicious_calibration_sets_warn_but_export(cli, workdir, kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 16, 16)).astype(np.float32)
    if kind == "duplicates":
        x[:30] = x[0]  # 29 of 40 samples repeat the first
        message = "calibration set 'data.npz': 29 of 40 samples duplicate others (11 distinct)"
    else:
        x[7, 0, 2, 2] = 1e4
        message = "calibration set 'data.npz': 1 value(s) in 1 sample(s) lie far outside the range of the other data"
    np.savez(workdir / "data.npz", x=x)
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "int8", "--calib", "data.npz",
            "--out", "result", cwd=workdir)
    assert r.rc == 0, r.err
    warnings = [line for line in r.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and message in warnings[0], r.err


def test_a_clean_calibration_set_draws_no_warning(cli, workdir):
    from edgekit.data import zoo

    np.savez(workdir / "data.npz", x=zoo.digits_split("train").x[:60])
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "int8", "--calib", "data.npz",
            "--out", "result", cwd=workdir)
    assert r.rc == 0 and "warning" not in r.err, r.err
