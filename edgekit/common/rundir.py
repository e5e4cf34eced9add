"""One temporary folder per edgekit run, removed on every exit the process controls; leftovers of killed runs
removed by the next one.

Everything a run writes to the temp dir (export scratch, calibration arrays, onnx2tf's working copies, the
benchmark workers' files) lands under one root, `edgekit-run-PID-xxxx` in the system temp dir: `run_scope`
points `tempfile.tempdir` and `TMPDIR` (inherited by subprocesses: workers, converters) at it and removes it
when the run ends, by return, exception, Ctrl-C or SIGTERM (its handler raises `Terminated`, so the same
cleanup runs; the CLI then exits 143 like a process killed by SIGTERM). SIGKILL cannot be caught: a killed
run leaves its root, and an artifact export its staging folder `.NAME.partial-PID` beside the destination.
The next run removes both when their PID is no longer alive, and says so in one stderr line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

PREFIX = "edgekit-run-"
_ROOT = re.compile(rf"{re.escape(PREFIX)}(\d+)-")
#: artifact.py's staging (`.NAME.partial-PID`) and the old copy it swaps out (`.NAME.old-PID`)
_STAGING = re.compile(r"\..+\.(?:partial|old)-(\d+)")


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException so no `except Exception` swallows it on the way out."""


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists, owned by someone else: not ours to judge
        return True
    return True


def _stale(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        m = pattern.fullmatch(entry.name) if pattern is _STAGING else pattern.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not pid_alive(int(m.group(1))):
            out.append(entry)
    return sorted(out)


def sweep(temp_base: Path | None, out_dirs: Iterable[str | Path] = (),
          log: Callable[[str], None] | None = None) -> list[Path]:
    """Remove run roots in `temp_base` (None: none) and staging folders beside each of `out_dirs` whose PID
    is dead; one log line names what was removed."""
    found = _stale(Path(temp_base), _ROOT) if temp_base is not None else []
    for out in out_dirs:
        found += _stale(Path(out).absolute().parent, _STAGING)
    removed = []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    if removed and log is not None:
        log(f"edgekit: removed {len(removed)} leftover(s) of killed runs: {', '.join(map(str, removed))}")
    return removed


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def run_scope(out_dirs: Iterable[str | Path] = (), log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """The run's temp root; stale leftovers swept first. Nested scopes (a run inside a run) reuse the root."""
    if tempfile.gettempdir().rstrip("/").split("/")[-1].startswith(f"{PREFIX}{os.getpid()}-"):
        yield Path(tempfile.gettempdir())
        return
    log = log or (lambda m: print(m, file=sys.stderr))
    base = Path(tempfile.gettempdir())
    sweep(base, out_dirs, log)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    main = threading.current_thread() is threading.main_thread()
    saved_handler = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        if main:  # a second SIGTERM must not cut the cleanup short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(root, ignore_errors=True)
        if main:
            signal.signal(signal.SIGTERM, saved_handler)
