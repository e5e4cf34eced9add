"""`--device ssh://USER@HOST[:PORT]`: measure on a board (Raspberry Pi, Jetson, any Linux) over ssh.

The same worker the local device runs (worker.py) runs on the board, under the board's Python, from a zip
of edgekit's sources pushed into a temporary working folder (worker_bundle.py): the board needs only
Python >= 3.11, numpy and the runtime package. Records therefore carry the board's own environment (CPU,
cores, OS, runtime versions), read on the board by the worker's `hello`.

Why the system `ssh` and not paramiko/asyncssh: no extra dependency, and it is the ssh the user already
uses: it honours ~/.ssh/config (aliases, ProxyJump, per-host keys), the agent, known_hosts and
hardware keys. It runs with BatchMode=yes (never prompts: a missing key fails at once), ConnectTimeout and
ServerAlive* (a vanished board is noticed), and connection failures are retried a few times.

Files go through `ssh` into a small stdlib-only receiver on the board (ssh_receiver.py) instead of scp:
OpenSSH >= 9 scp speaks SFTP, which reports a full disk as a bare "Failure"; the receiver reports the
real error (ENOSPC), checks free space first, and hashes what it wrote in the same round trip, so a
transfer is verified by sha256 on arrival without a second connection. Only the files an artifact's
manifest lists (and the manifest) are sent. The working folder is removed in `close`, which the harness
always reaches (also after failures); a connection error during setup removes it before raising.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from edgekit.bench import worker_bundle
from edgekit.bench.devices import Device, PipeWorker, WorkerChannel, WorkerError
from edgekit.bench.ssh_receiver import RECEIVER
from edgekit.errors import EdgekitError

DEFAULT_PYTHON = "python3"
DEFAULT_WORKDIR = "/tmp"
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_RETRIES = 3
_COMMAND_TIMEOUT_S = 120.0
_MIN_RATE_BPS = 1_000_000  # transfers get 120 s plus one second per MB
_URL_OPTIONS = ("key", "python", "workdir", "known_hosts", "target", "connect_timeout", "retries")

# ssh's own failures (exit status 255), by what they mean for the user
_AUTH = re.compile(r"Permission denied|Too many authentication failures|no mutual signature|"
                   r"Load key .*: (?:invalid format|bad permissions|No such file)", re.I)
_HOSTKEY = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", re.I)
_RESOLVE = re.compile(r"Could not resolve hostname|Name or service not known", re.I)
_CONNECTION = re.compile(r"Connection refused|Connection timed out|timed out|No route to host|Network is "
                         r"unreachable|Connection reset|Connection closed|closed by remote host|Broken pipe|"
                         r"kex_exchange_identification|Connection to .* closed|lost connection", re.I)
_NO_SPACE = re.compile(r"No space left on device|Errno 28|ENOSPC|Disk quota exceeded", re.I)
_MISSING_PACKAGE = re.compile(r"needs the Python package '([^']+)'")

def _sha256(path: Path) -> str:
    from edgekit.artifact import sha256_file

    return sha256_file(path)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_address(address: str) -> dict[str, Any]:
    """'//user@host:port?key=...' (what follows 'ssh:' in --device) -> user, host, port and URL options."""
    text = address if address.startswith("//") else "//" + address
    try:
        url = urllib.parse.urlsplit("ssh:" + text)
        port = url.port
    except ValueError as exc:
        raise EdgekitError(f"malformed ssh device 'ssh:{address}': {exc}; expected ssh://USER@HOST[:PORT]") from None
    if not url.hostname or url.path not in ("", "/") or url.fragment:
        raise EdgekitError(f"malformed ssh device 'ssh:{address}'; expected ssh://USER@HOST[:PORT]"
                           f"[?{'=...&'.join(_URL_OPTIONS)}=...]")
    options: dict[str, Any] = {}
    for key, values in urllib.parse.parse_qs(url.query, keep_blank_values=True).items():
        if key not in _URL_OPTIONS:
            raise EdgekitError(f"ssh device option '{key}' is unknown; known: {', '.join(_URL_OPTIONS)}")
        options[key] = values[-1]
    return {"user": urllib.parse.unquote(url.username) if url.username else None, "host": url.hostname,
            "port": port, **options}


class SshDevice(Device):
    """A board reached with the system ssh. Nothing is contacted until the device is entered (`with`)."""

    kind = "ssh"
    #: test seam: called with (device, file name, bytes) for every file sent; what it returns is sent instead
    transfer_filter: ClassVar[Callable[[SshDevice, str, bytes], bytes] | None] = None
    #: test seam: called with (device, remote working folder) right after the folder is made
    after_workdir: ClassVar[Callable[[SshDevice, str], None] | None] = None

    def __init__(self, address: str = "", *, host: str | None = None, user: str | None = None,
                 port: int | str | None = None, key: str | None = None, python: str | None = None,
                 target: str | None = None, workdir: str | None = None, known_hosts: str | None = None,
                 connect_timeout: int | str | None = None, retries: int | str | None = None,
                 ssh_options: list[str] | None = None, strict_host_key_checking: str = "accept-new",
                 name: str | None = None) -> None:
        super().__init__(address)
        parsed = parse_address(address) if address else {}
        given = {"host": host, "user": user, "port": port, "key": key, "python": python, "target": target,
                 "workdir": workdir, "known_hosts": known_hosts, "connect_timeout": connect_timeout,
                 "retries": retries}
        opts = {**parsed, **{k: v for k, v in given.items() if v is not None}}
        if not opts.get("host"):
            raise EdgekitError("an ssh device needs a host: --device ssh://USER@HOST[:PORT], or host = ... in "
                               "the devices file")
        self.host: str = str(opts["host"])
        if self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise EdgekitError(f"ssh host '{self.host}' is not a host name")
        self.user: str | None = opts.get("user")
        self.port = self._int(opts.get("port"), "port", None)
        self.key = str(Path(opts["key"]).expanduser()) if opts.get("key") else None
        self.python = str(opts.get("python") or DEFAULT_PYTHON)
        self.target = opts.get("target")
        self.workdir = str(opts.get("workdir") or DEFAULT_WORKDIR).rstrip("/") or "/"
        self.known_hosts = str(Path(opts["known_hosts"]).expanduser()) if opts.get("known_hosts") else None
        self.connect_timeout = self._int(opts.get("connect_timeout"), "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        self.retries = max(1, self._int(opts.get("retries"), "retries", DEFAULT_RETRIES) or 1)
        self.ssh_options = list(ssh_options or [])
        self.strict = strict_host_key_checking
        self._name = name
        self.remote_dir: str | None = None
        self._local: tempfile.TemporaryDirectory[str] | None = None
        self._staged: dict[str, str] = {}
        self._counter = 0

    @staticmethod
    def _int(value: Any, what: str, default: int | None) -> int | None:
        if value in (None, ""):
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise EdgekitError(f"ssh device {what} must be an integer (got {value!r})") from None

    # -- names and commands ---------------------------------------------------------------------------
    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def name(self) -> str:
        if self._name:
            return self._name
        return f"ssh://{self.destination}" + (f":{self.port}" if self.port else "")

    def ssh_argv(self) -> list[str]:
        exe = shutil.which("ssh")
        if exe is None:
            raise EdgekitError("the ssh client is not installed here; install OpenSSH's client "
                               "(Debian/Ubuntu: apt install openssh-client)")
        argv = [exe, "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                "-o", f"StrictHostKeyChecking={self.strict}"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        for opt in self.ssh_options:
            argv += ["-o", opt]
        return [*argv, self.destination]

    def _python_words(self) -> str:
        return " ".join(shlex.quote(w) for w in shlex.split(self.python))

    def hint(self) -> str:
        """The command a user can type to see the problem for themselves."""
        port = f"-p {self.port} " if self.port else ""
        key = f"-i {self.key} " if self.key else ""
        return f"ssh {port}{key}{self.destination} true"

    def explain(self, rc: int, stderr: str, doing: str) -> str:
        """One line saying what failed on this device, why, and what to try."""
        text = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip())
        if rc == 255 and _AUTH.search(stderr):
            return (f"cannot log in to {self.name} ({_last_line(stderr)}): check the key "
                    f"({self.key or 'your ssh config / agent'}) and that its public half is in the device's "
                    f"~/.ssh/authorized_keys; try: {self.hint()}")
        if rc == 255 and _HOSTKEY.search(stderr):
            return (f"the host key of {self.name} is not trusted ({_last_line(stderr)}); check "
                    f"{self.known_hosts or '~/.ssh/known_hosts'} and try: {self.hint()}")
        if rc == 255 and _RESOLVE.search(stderr):
            return f"cannot resolve the host of {self.name} ({_last_line(stderr)})"
        if rc == 255 and (_CONNECTION.search(stderr) or not stderr.strip()):
            return (f"cannot reach {self.name} ({_last_line(stderr) or 'connection lost'}, after "
                    f"{self.retries} attempt(s)): is the device on and sshd listening there? try: {self.hint()}")
        if _NO_SPACE.search(stderr):
            return f"{self.name} is out of disk space in {self.workdir} while {doing} ({_last_line(stderr)})"
        if rc == 127:
            return (f"{self.name} has no '{self.python}' ({_last_line(stderr)}); set python = PATH for this "
                    "device (devices file, or ?python= in the ssh:// address)")
        return f"{self.name}: {doing} failed (exit status {rc}): {text or 'no message'}"

    @staticmethod
    def _retryable(rc: int, stderr: str) -> bool:
        return rc == 255 and not (_AUTH.search(stderr) or _HOSTKEY.search(stderr) or _RESOLVE.search(stderr))

    def run(self, command: str, *, doing: str, stdin: bytes | None = None, timeout: float = _COMMAND_TIMEOUT_S,
            retry: bool = True) -> str:
        """Run a shell command on the device; return its stdout. Connection failures are retried
        (the commands used here are idempotent); any other failure raises EdgekitError."""
        attempts = self.retries if retry else 1
        for attempt in range(attempts):
            try:
                proc = subprocess.run([*self.ssh_argv(), command], input=stdin if stdin is not None else b"",
                                      capture_output=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise EdgekitError(f"{self.name}: {doing} did not finish within {timeout:.0f} s") from None
            err = proc.stderr.decode(errors="replace")
            if proc.returncode == 0:
                return proc.stdout.decode(errors="replace")
            if attempt + 1 < attempts and self._retryable(proc.returncode, err):
                time.sleep(min(4.0, 0.5 * 2 ** attempt))
                continue
            raise EdgekitError(self.explain(proc.returncode, err, doing))
        raise AssertionError("unreachable")

    # -- lifecycle ------------------------------------------------------------------------------------
    def prepare(self, artifacts: Sequence[str | Path]) -> None:
        """Connect first, so an unreachable device fails once, as a whole, in one line; but only when some
        artifact is worth sending (bad artifacts fail in the harness, without contacting the device)."""
        from edgekit.artifact import load_artifact

        loadable = 0
        for path in artifacts:
            with contextlib.suppress(EdgekitError):
                load_artifact(path)
                loadable += 1
        if loadable:
            self.connect()

    def connect(self) -> None:
        """Make the remote working folder and push the worker bundle; on failure leave nothing there."""
        if self.remote_dir is not None:
            return
        self._local = tempfile.TemporaryDirectory(prefix="edgekit-ssh-")
        wd = shlex.quote(self.workdir)
        try:
            out = self.run(f"mkdir -p {wd} && mktemp -d {wd}/edgekit-bench.XXXXXXXX",
                           doing=f"making a working folder in {self.workdir}")
            remote = _last_line(out)
            if not remote.startswith(self.workdir.rstrip("/") + "/edgekit-bench."):
                raise EdgekitError(f"{self.name}: unexpected answer to mktemp: {remote!r}")
            self.remote_dir = remote
            if SshDevice.after_workdir is not None:
                SshDevice.after_workdir(self, remote)
            bundle = worker_bundle.build(Path(self._local.name))
            reply = self._push([(worker_bundle.NAME, bundle, _sha256(bundle))], remote, ["numpy"],
                               what="the benchmark worker")
            version = tuple(reply.get("python") or ())
            if version and version < worker_bundle.MIN_PYTHON:
                raise EdgekitError(
                    f"{self.name}: its Python ({self.python}) is {'.'.join(map(str, version))}; the worker needs "
                    f"Python >= {'.'.join(map(str, worker_bundle.MIN_PYTHON))}: set python = PATH for this device")
            if reply.get("missing"):
                raise EdgekitError(self.missing_message(reply["missing"]))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the remote working folder (retried on connection loss); never raises."""
        if self.remote_dir is not None:
            remote, self.remote_dir = self.remote_dir, None
            try:
                self.run(f"rm -rf -- {shlex.quote(remote)}", doing="removing the working folder", timeout=60)
            except EdgekitError as exc:
                print(f"edgekit: warning: {exc}; remove {remote} on {self.name} by hand", file=sys.stderr)
        self._staged.clear()
        if self._local is not None:
            self._local.cleanup()
            self._local = None

    def _require_connected(self) -> str:
        if self.remote_dir is None:
            self.connect()
        assert self.remote_dir is not None
        return self.remote_dir

    # -- files ----------------------------------------------------------------------------------------
    def missing_message(self, modules: list[str], packages: list[str] | None = None) -> str:
        pkgs = " ".join(packages or modules)
        return (f"{self.name} lacks the Python package(s) {', '.join(packages or modules)} for {self.python}; "
                f"install them there with: ssh {'-p ' + str(self.port) + ' ' if self.port else ''}"
                f"{self.destination} {self.python} -m pip install {pkgs}")

    def _push(self, files: list[tuple[str, Path, str]], dest: str, modules: list[str], what: str) -> dict[str, Any]:
        """Send (name, local path, expected sha256) files into dest on the device; verify them there."""
        total = sum(p.stat().st_size for _, p, _ in files)
        header = {"dest": dest, "files": [{"name": n, "bytes": p.stat().st_size} for n, p, _ in files],
                  "modules": modules, "margin": 1 << 20}
        payload = bytearray((json.dumps(header) + "\n").encode())
        for name, path, _ in files:
            data = path.read_bytes()
            if SshDevice.transfer_filter is not None:
                data = SshDevice.transfer_filter(self, name, data)
            payload += data
        command = f"{self._python_words()} -c {shlex.quote(RECEIVER)}"
        out = self.run(command, doing=f"sending {what}", stdin=bytes(payload),
                       timeout=_COMMAND_TIMEOUT_S + total / _MIN_RATE_BPS)
        try:
            reply = json.loads(_last_line(out))
        except json.JSONDecodeError:
            raise EdgekitError(f"{self.name}: unexpected answer while sending {what}: {_last_line(out)!r}") from None
        if not reply.get("ok"):
            if reply.get("errno") == 28 or _NO_SPACE.search(str(reply.get("error"))):
                raise EdgekitError(f"{self.name} is out of disk space in {self.workdir} while sending {what}: "
                                   f"{reply.get('error')}; free space there or set workdir = ... for this device")
            raise EdgekitError(f"{self.name}: sending {what} failed on the device: {reply.get('error')}")
        for name, _path, expected in files:
            got = reply["hashes"].get(name)
            if got != expected:
                raise EdgekitError(f"{self.name}: '{name}' of {what} arrived with sha256 {str(got)[:12]}…, expected "
                                   f"{expected[:12]}… (the transfer corrupted it); it was not measured")
        return reply

    def stage(self, local: Path) -> str:
        """Push an artifact (its manifest and the files it lists, nothing else) or a single file."""
        local = Path(local).resolve()
        if str(local) in self._staged:
            return self._staged[str(local)]
        remote_dir = self._require_connected()
        self._counter += 1
        dest = f"{remote_dir}/{self._counter:02d}-{local.name}"
        manifest_path = local / "manifest.json"
        modules: list[str] = []
        if local.is_dir() and manifest_path.is_file():
            from edgekit.artifact import load_artifact

            # the same checks as a local load: typed manifest, plain names inside the folder, model_file hashed,
            # every file's size and sha256; only then does anything leave this machine
            info = load_artifact(local).info
            assert info is not None
            files = [("manifest.json", manifest_path, _sha256(manifest_path))]
            files += [(name, local / name, entry.sha256) for name, entry in info.files.items()]
            modules, packages = self._runtime_modules(info.backend)
            what = f"artifact {local.name}"
            reply = self._push(files, dest, modules, what)
            if reply.get("missing"):
                missing = reply["missing"]
                raise EdgekitError(self.missing_message(missing, [packages[modules.index(m)] for m in missing]))
            path = dest
        else:
            if not local.is_file():
                raise EdgekitError(f"cannot send {local} to {self.name}: not a file or an artifact folder")
            self._push([(local.name, local, _sha256(local))], dest, [], f"file {local.name}")
            path = f"{dest}/{local.name}"
        self._staged[str(local)] = path
        return path

    @staticmethod
    def _runtime_modules(backend: str | None) -> tuple[list[str], list[str]]:
        """Import names and pip names of what the backend's runner needs on the device."""
        if not backend:
            return [], []
        from edgekit.backends import registry

        try:
            reqs = registry.get_spec(backend).requires
        except EdgekitError:
            return [], []
        return [r.module for r in reqs], [r.package for r in reqs]

    def scratch(self, name: str) -> str:
        return f"{self._require_connected()}/{name}"

    def fetch(self, remote: str, local_dir: Path) -> Path:
        dest = Path(local_dir) / Path(remote).name
        out = self.run(f"{self._python_words()} -c {shlex.quote(_SEND)} {shlex.quote(remote)}",
                       doing=f"fetching {Path(remote).name}", timeout=_COMMAND_TIMEOUT_S * 5)
        head, _, _ = out.partition("\n")
        try:
            meta = json.loads(head)
        except json.JSONDecodeError:
            raise EdgekitError(f"{self.name}: unexpected answer while fetching {remote}: {head[:80]!r}") from None
        data = bytes.fromhex(meta["hex"])
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise EdgekitError(f"{self.name}: {remote} arrived corrupted (sha256 mismatch)")
        dest.write_bytes(data)
        return dest

    # -- workers --------------------------------------------------------------------------------------
    def worker_command(self) -> str:
        remote = self._require_connected()
        bundle = shlex.quote(f"{remote}/{worker_bundle.NAME}")
        return (f"cd {shlex.quote(remote)} && PYTHONPATH={bundle} exec {self._python_words()} "
                "-m edgekit.bench.worker")

    def open_worker(self) -> WorkerChannel:
        """Start the worker on the device and greet it; a lost connection is retried."""
        argv = [*self.ssh_argv(), self.worker_command()]
        for attempt in range(self.retries):
            pipe = PipeWorker(argv)
            try:
                pipe.request({"cmd": "hello"}, timeout=self.connect_timeout + 120)
                return SshWorkerChannel(pipe, self)
            except WorkerError as exc:
                tail = pipe.stderr_tail(5)
                with contextlib.suppress(Exception):
                    pipe.close()
                code = pipe.proc.returncode if pipe.proc.returncode is not None else 1
                if attempt + 1 < self.retries and self._retryable(code, tail or str(exc)):
                    time.sleep(min(4.0, 0.5 * 2 ** attempt))
                    continue
                if "No module named" in str(exc):
                    module = re.search(r"No module named '([^']+)'", str(exc))
                    raise EdgekitError(self.missing_message([module.group(1) if module else "numpy"])) from None
                why = self.explain(code, tail or str(exc), "starting the worker")
                raise EdgekitError(f"cannot start the benchmark worker: {why}") from None
        raise AssertionError("unreachable")

    def rewrite(self, message: str) -> str:
        """A worker's error, said for this device (install commands that work there, disk, connection)."""
        missing = _MISSING_PACKAGE.search(message)
        if missing:
            return self.missing_message([missing.group(1)])
        if _NO_SPACE.search(message):
            return f"{self.name} is out of disk space in {self.workdir}: {message}"
        if "exited with code 255" in message:
            return f"lost the ssh connection to {self.name}: {message}"
        return message


# Runs on the device: prints one JSON line with the file's bytes (hex) and sha256. Outputs are small (the
# evaluation outputs of a few hundred samples), so hex over the same channel keeps fetch one round trip.
_SEND = r'''
import hashlib, json, sys
data = open(sys.argv[1], "rb").read()
sys.stdout.write(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "hex": data.hex()}) + "\n")
'''


class SshWorkerChannel(WorkerChannel):
    """A PipeWorker over ssh whose errors name the device and say how to fix them there."""

    def __init__(self, pipe: PipeWorker, device: SshDevice) -> None:
        self.pipe = pipe
        self.device = device

    def request(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            return self.pipe.request(message, timeout)
        except WorkerError as exc:
            raise WorkerError(self.device.rewrite(str(exc)), exc.user_error, exc.details) from None

    def close(self) -> None:
        self.pipe.close()
