"""Where benchmark workers run. A Device starts fresh worker processes and moves files to and from them; the
harness only ever talks to a `WorkerChannel` (requests and replies of the worker protocol, see worker.py)
and to the four file methods below, so a new kind of device is one class and one `register_device_kind`.

Kinds (`--device`):

- `local`: this machine (LocalDevice, below).
- `ssh://USER@HOST[:PORT]` (edgekit.bench.ssh): the same worker runs on the board under its own Python, fed
  through the system `ssh`; files travel over ssh too and are checked by sha256 on arrival.
- `adb://SERIAL` (edgekit.bench.adb): a phone; TFLite's native `benchmark_model` measures there and its
  output is parsed into the same record. It overrides `Device.bench` instead of speaking the protocol.
- a NAME declared in the devices file (edgekit.bench.device_config), e.g. `lab-pi5`.

Kind modules are imported only when a device of that kind is asked for, so `edgekit --help` stays light.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from edgekit.errors import EdgekitError


class WorkerError(Exception):
    """A worker failed a request (or died). `user_error`: the artifact's fault, not edgekit's."""

    def __init__(self, message: str, user_error: bool = False, details: str = "") -> None:
        super().__init__(message)
        self.user_error = user_error
        self.details = details


class WorkerChannel(abc.ABC):
    """A connection to one worker process: one request in flight at a time, one reply per request."""

    @abc.abstractmethod
    def request(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request; return the reply, or raise WorkerError with the worker's message."""

    @abc.abstractmethod
    def close(self) -> None: ...


class PipeWorker(WorkerChannel):
    """A worker started as a command whose stdin/stdout carry the protocol: local Python, `ssh HOST ...`.

    Its stderr (runtime logs) goes to a temporary file, so a chatty runtime can neither block the pipe nor
    clutter the terminal; the last lines are quoted when the worker dies.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.argv = argv
        self._log = tempfile.TemporaryFile(prefix="edgekit-worker-", suffix=".log")  # noqa: SIM115 - closed in close()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                         env=env, cwd=cwd, bufsize=0)
        except OSError as exc:
            self._log.close()
            raise EdgekitError(f"cannot start benchmark worker '{argv[0]}': {exc.strerror}") from None
        self._buf = b""

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            self._log.seek(0)
            text = self._log.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def _readline(self, timeout: float | None) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                raise WorkerError(f"worker gave no answer within {timeout:.0f} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                code = self.proc.wait()
                tail = self.stderr_tail()
                raise WorkerError(f"worker exited with code {code}" + (f": {tail}" if tail else ""))
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def request(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self.proc.wait()
            tail = self.stderr_tail()
            raise WorkerError(f"worker exited with code {code}" + (f": {tail}" if tail else "")) from None
        reply = json.loads(self._readline(timeout))
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "unknown worker error"), bool(reply.get("user_error")),
                              reply.get("traceback", ""))
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(WorkerError, ValueError):
                self.request({"cmd": "exit"}, timeout=30)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


class Device(abc.ABC):
    """Runs workers and moves files. Paths on the device are strings: they need not exist on this host."""

    kind: ClassVar[str]
    #: how the harness measures here: "worker" (edgekit's worker process, through `open_worker`), or
    #: "runtime-tools" (the runtime's own benchmark binaries on the device, through `run_tools`)
    measuring: ClassVar[str] = "worker"

    def __init__(self, address: str = "") -> None:
        self.address = address

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.address}" if self.address else self.kind

    @abc.abstractmethod
    def open_worker(self) -> WorkerChannel:
        """Start a fresh worker process on the device."""

    @abc.abstractmethod
    def stage(self, local: Path) -> str:
        """Make a local file or folder (an artifact, evaluation inputs) available there; return its path."""

    @abc.abstractmethod
    def scratch(self, name: str) -> str:
        """A path on the device where a worker may write a file named `name`."""

    @abc.abstractmethod
    def fetch(self, remote: str, local_dir: Path) -> Path:
        """Bring a file a worker wrote back to this host; return the local path."""

    def close(self) -> None:  # noqa: B027 - optional hook: remove staged files, end a connection
        pass

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, artifacts: Sequence[str | Path]) -> None:  # noqa: B027 - optional hook
        """Called once before any worker starts, with the artifacts about to be measured: a remote device
        connects here (and may decline to when none of them is worth sending)."""


class LocalDevice(Device):
    """This machine: workers are `python -m edgekit.bench.worker` subprocesses of the same interpreter."""

    kind = "local"

    def __init__(self, address: str = "") -> None:
        if address:
            raise EdgekitError(f"device 'local' takes no address (got 'local:{address}')")
        super().__init__()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def open_worker(self) -> WorkerChannel:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # so a source checkout works uninstalled
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        return PipeWorker([sys.executable, "-m", "edgekit.bench.worker"], env=env)

    def stage(self, local: Path) -> str:
        return str(Path(local).resolve())

    def scratch(self, name: str) -> str:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="edgekit-bench-")
        return str(Path(self._scratch.name) / name)

    def fetch(self, remote: str, local_dir: Path) -> Path:
        return Path(remote)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


DeviceFactory = Callable[..., Device]


def _lazy(target: str) -> DeviceFactory:
    """A factory that imports its module on first use ("module:Class")."""

    def factory(address: str, **options: Any) -> Device:
        import importlib

        module, _, cls = target.partition(":")
        return getattr(importlib.import_module(module), cls)(address, **options)

    return factory


_DEVICE_KINDS: dict[str, DeviceFactory] = {
    "local": LocalDevice,
    "ssh": _lazy("edgekit.bench.ssh:SshDevice"),
    "adb": _lazy("edgekit.bench.adb:AdbDevice"),
}
#: options a kind accepts from the command line (others are not passed to it)
_KIND_OPTIONS = {"adb": ("benchmark_model", "perf_test")}


def register_device_kind(kind: str, factory: DeviceFactory) -> None:
    """Add a device kind: `factory(address)` is called with what follows 'KIND:' in --device."""
    if kind in _DEVICE_KINDS:
        raise ValueError(f"device kind '{kind}' is registered twice")
    _DEVICE_KINDS[kind] = factory


def device_kinds() -> list[str]:
    return sorted(_DEVICE_KINDS)


def make_device(spec: str | Device, **options: Any) -> Device:
    """'local', KIND://ADDRESS or KIND:ADDRESS for a registered kind (ssh://USER@HOST[:PORT], adb://SERIAL), or
    the NAME of a device in the devices file. `options` (e.g. benchmark_model=PATH) go to the kinds that take
    them and override the devices file. Nothing is contacted here: a device connects when it is entered."""
    if isinstance(spec, Device):
        return spec
    text = str(spec).strip()
    kind, sep, address = text.partition(":")
    factory = _DEVICE_KINDS.get(kind) if sep or kind == "local" else None
    if factory is not None:
        given = {k: v for k, v in options.items() if v is not None and k in _KIND_OPTIONS.get(kind, ())}
        return factory(address, **given) if given else factory(address)
    from edgekit.bench import device_config

    entry = device_config.lookup(text)
    if entry is not None:
        kind = entry.kind
        given = {k: v for k, v in options.items() if v is not None and k in _KIND_OPTIONS.get(kind, ())}
        return _DEVICE_KINDS[kind]("", **{**entry.options(), **given, "name": entry.name})
    known = device_config.names()
    named = f"; named devices in {device_config.describe_location()}: {', '.join(known) if known else '(none)'}"
    raise EdgekitError(f"unknown device '{spec}'; available kinds: {', '.join(device_kinds())} (e.g. local, "
                       f"ssh://USER@HOST[:PORT], adb://SERIAL){named}")
