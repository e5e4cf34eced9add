"""One exit path: 0 success, 2 the user's error (their input or their own code, SystemExit included), 1 a bug
in edgekit, each as one line on stderr; the traceback only with `--debug` or EDGEKIT_DEBUG=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FACTORIES = {
    "exit_at_call.py": "import sys\ndef make():\n    sys.exit(0)\n",
    "exit_at_import.py": "import sys\nsys.exit(0)\ndef make():\n    pass\n",
    "raise_at_call.py": "def make():\n    raise ValueError('no such\\nsize')\n",
    "exit3_at_call.py": "def make():\n    raise SystemExit(3)\n",
    "import_error.py": "import not_a_real_package_xyz\ndef make():\n    pass\n",
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, text in FACTORIES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _command(cmd: str, model: str) -> list[str]:
    if cmd == "export":
        return ["export", model, "-t", "x86-server-cpu", "--input-shape", "1x16", "--out", "out"]
    if cmd == "diagnose":
        return ["diagnose", model, "-t", "x86-server-cpu", "--input-shape", "1x16"]
    return ["distill", "--teacher", model, "--student", "zoo:digits-student", "--out", "out"]


@pytest.mark.parametrize("cmd", ["export", "diagnose", "distill"])
@pytest.mark.parametrize("model, message", [
    ("exit_at_call:make", "loading model 'exit_at_call:make': SystemExit(0) raised by the factory"),
    ("exit_at_import:make", "loading model 'exit_at_import:make': cannot import module 'exit_at_import': "
                            "SystemExit(0) raised by its import"),
    ("exit3_at_call:make", "SystemExit(3) raised by the factory"),
    ("raise_at_call:make", "ValueError('no such\\nsize') raised by the factory"),
    ("import_error:make", "cannot import module 'import_error': ModuleNotFoundError"),
])
def test_user_code_failure_is_one_line_exit_2(cli, workdir, cmd, model, message):
    before = sorted(p.name for p in workdir.iterdir())
    r = cli(*_command(cmd, model), cwd=workdir)
    assert r.rc == 2, (r.rc, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith(f"edgekit {cmd}: error: ") and message in r.err, r.err
    assert r.out == ""
    assert sorted(p.name for p in workdir.iterdir() if p.name != "__pycache__") == before


def test_real_process_exit_code_for_a_factory_calling_sys_exit(workdir):
    """In a real process too (where a stray SystemExit(0) used to end edgekit with exit 0 and no output)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("EDGEKIT_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "edgekit", *_command("export", "exit_at_call:make")], cwd=workdir,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "edgekit export: error: loading model 'exit_at_call:make': SystemExit(0) raised by the " \
                          "factory\n"


def _break_targets(monkeypatch, exc: BaseException) -> None:
    """A bug inside edgekit: the target listing raises what no edgekit code should."""
    from edgekit import targets

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(targets, "list_targets", broken)


@pytest.mark.parametrize("exc, shown", [
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    (SystemExit(0), "SystemExit: 0"),
    (KeyError("k"), "KeyError: 'k'"),
])
def test_internal_error_is_one_line_exit_1_without_traceback(cli, monkeypatch, exc, shown):
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    _break_targets(monkeypatch, exc)
    r = cli("targets")
    assert r.rc == 1, (r.rc, r.err)
    assert r.err == (f"edgekit targets: internal error while running `edgekit targets`: {shown} "
                     "(please report; rerun with --debug for the traceback)\n")


def test_internal_error_names_the_innermost_stage(cli, monkeypatch):
    from edgekit.data import zoo

    def broken(**kwargs):
        raise RuntimeError("weights cache\ncorrupt")

    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    monkeypatch.setitem(zoo.ZOO_MODELS, "digits-student", broken)
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "--out", "never")
    assert r.rc == 1 and r.err.count("\n") == 1, r.err
    assert r.err.startswith("edgekit export: internal error while loading model 'zoo:digits-student': RuntimeError: "
                            "weights cache corrupt (please report"), r.err


def test_internal_error_names_the_last_progress_step(cli, monkeypatch, tmp_path):
    """Without a named stage, the step the user last saw is where it happened."""
    from edgekit.export import pipeline

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    monkeypatch.setattr(pipeline, "compute_ranges", broken)
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "int8", "--out", tmp_path / "a")
    assert r.rc == 1
    assert r.err.splitlines()[-1] == (
        "edgekit export: internal error while calibrating: minmax ranges from 300 samples of zoo:digits:train: "
        "IndexError: list index out of range (please report; rerun with --debug for the traceback)")
    assert "Traceback" not in r.err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(cli, monkeypatch, workdir, how):
    _break_targets(monkeypatch, ZeroDivisionError("division by zero"))
    if how == "env":
        monkeypatch.setenv("EDGEKIT_DEBUG", "1")
        r = cli("targets")
    else:
        monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
        r = cli("--debug", "targets")
    assert r.rc == 1
    assert "Traceback (most recent call last)" in r.err and "in broken" in r.err
    assert r.err.splitlines()[-1].startswith("edgekit targets: internal error while running `edgekit targets`")
    # a user-code error keeps its cause: --debug shows the user's own frame
    monkeypatch.setenv("EDGEKIT_DEBUG", "1")
    r = cli(*_command("export", "raise_at_call:make"), cwd=workdir)
    assert r.rc == 2 and "raise_at_call.py" in r.err and "Traceback" in r.err


def test_success_is_exit_0(cli):
    r = cli("targets", "--json")
    assert r.rc == 0 and r.err == ""
