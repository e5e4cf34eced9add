"""`edgekit bench --device ssh://...` against a real OpenSSH server the fixture starts on loopback.

The "board" is this machine reached through sshd on a free high port, with a throwaway host key and client
key, its own known_hosts file and a working folder under the test's tmp_path; the device's Python is the
venv's (or a tiny venv without onnxruntime, for the missing-runtime case). Skipped with the reason when
sshd is not installed (`make test` installs Debian's openssh-server when it can) or does not start.

Two failure cases need a seam, said here so nobody mistakes them for more: a corrupted transfer flips a
byte of model.onnx on its way (SshDevice.transfer_filter) and the device's own sha256 check must catch it;
a full disk is simulated by making the worker bundle's destination on the device a symlink to /dev/full,
so the device-side write fails with the kernel's real ENOSPC (a tiny tmpfs would need mount rights).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgekit.bench.records import validate_record

FAST = ["--iters", "10", "--min-seconds", "0.05", "--warmup-seconds", "0.02", "--rounds", "1", "--no-progress",
        "--eval-samples", "64"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    port: int
    key: Path
    known_hosts: Path
    user: str
    root: Path

    def url(self, workdir: Path, python: str = sys.executable, key: Path | None = None, port: int | None = None,
            **extra: str) -> str:
        from urllib.parse import urlencode

        query = {"key": str(key or self.key), "known_hosts": str(self.known_hosts), "python": python,
                 "workdir": str(workdir), **extra}
        return f"ssh://{self.user}@127.0.0.1:{port or self.port}?{urlencode(query)}"


def _find_sshd() -> str | None:
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:<free port>, public-key only, everything in a temporary folder."""
    exe = _find_sshd()
    if exe is None:
        pytest.skip("OpenSSH server not installed (/usr/sbin/sshd missing; Debian: apt install openssh-server)")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"OpenSSH client tool '{tool}' not installed")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = _free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PidFile {root / 'sshd.pid'}\nLogLevel ERROR\nMaxStartups 50\n")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation folder, as root
    log = open(root / "sshd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([exe, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    sshd = Sshd(port, root / "client_key", root / "known_hosts", getpass.getuser(), root)
    probe = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR",
             "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "ConnectTimeout=5", "-i", str(sshd.key),
             "-p", str(port), f"{sshd.user}@127.0.0.1", "true"]
    deadline, ok = time.monotonic() + 15, False
    while time.monotonic() < deadline and proc.poll() is None:
        if subprocess.run(probe, capture_output=True, timeout=20).returncode == 0:
            ok = True
            break
        time.sleep(0.3)
    if not ok:
        proc.kill()
        proc.wait()
        log.close()
        reason = (root / "sshd.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no log"]
        pytest.skip(f"sshd did not start or refused the test key: {reason[0]}")
    yield sshd
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="session")
def ort_artifact(tmp_path_factory) -> Path:
    """The digits student exported for ONNX Runtime fp32 (one small artifact, ~10 s)."""
    from edgekit.export import ExportPipeline

    root = tmp_path_factory.mktemp("ssh-art")
    with ExportPipeline("zoo:digits-student") as pipeline:
        return pipeline.export("x86-server-cpu", "fp32", out=root / "ort-fp32").path


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    return lines[-1] if lines else ""


def test_ssh_bench_returns_a_full_record_and_removes_the_workdir(cli, sshd, ort_artifact, tmp_path):
    workdir = tmp_path / "device-workdir"
    workdir.mkdir()
    out = tmp_path / "ssh.json"
    r = cli("bench", ort_artifact, "--device", sshd.url(workdir), "--json", out, *FAST)
    assert r.rc == 0, r.err
    (rec,) = json.loads(out.read_text())
    assert validate_record(rec) == [], validate_record(rec)
    assert rec["status"] == "ok" and rec["device"]["kind"] == "ssh"
    assert rec["device"]["name"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    assert rec["runtime"] == "onnxruntime" and rec["runtime_versions"]["onnxruntime"]
    # the environment was read by the worker on the device (here: the same machine, so it must agree)
    from edgekit.bench.environment import describe

    assert rec["device"]["cpu_model"] == describe()["cpu_model"] and rec["device"]["cores"] == os.cpu_count()
    assert rec["agreement"] == 1.0 and rec["eval"]["samples"] == 64
    assert list(workdir.iterdir()) == [], "the remote working folder was not removed"


def test_local_and_ssh_give_one_table_with_both_rows(cli, sshd, ort_artifact, tmp_path, monkeypatch):
    """The ssh device here is a named one from a devices file, so that path is covered too."""
    workdir = tmp_path / "wd"
    workdir.mkdir()
    config = tmp_path / "devices.toml"
    config.write_text(f'[devices.loopback-board]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
                      f'key = "{sshd.key}"\nknown_hosts = "{sshd.known_hosts}"\npython = "{sys.executable}"\n'
                      f'workdir = "{workdir}"\ntarget = "x86-server-cpu"\n')
    monkeypatch.setenv("EDGEKIT_DEVICES", str(config))
    out = tmp_path / "both.json"
    r = cli("bench", ort_artifact, "--device", "local", "--device", "loopback-board", "--json", out, *FAST)
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    header = next(line for line in lines if line.startswith("artifact"))
    assert header.split()[:2] == ["artifact", "device"]
    rows = [line for line in lines if line.startswith(ort_artifact.name + " ")]
    assert len(rows) == 2 and rows[0].split()[1] == "local" and rows[1].split()[1] == "loopback-board"
    assert all("ERROR" not in row for row in rows)
    local, remote = json.loads(out.read_text())
    assert set(local) == set(remote) and set(local["device"]) == set(remote["device"])
    assert set(local["latency_ms"]) == set(remote["latency_ms"])
    assert remote["device"]["kind"] == "ssh" and local["device"]["kind"] == "local"
    assert list(workdir.iterdir()) == []


def test_unreachable_host_is_one_line_exit_2(cli, sshd, ort_artifact, tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = cli("bench", ort_artifact, "--device", sshd.url(workdir, port=_free_port(), retries="2"), *FAST)
    assert r.rc == 2
    assert r.err.strip().count("\n") == 0, r.err
    assert "cannot reach" in r.err and "Connection refused" in r.err and "after 2 attempt(s)" in r.err


def test_unreachable_device_beside_a_good_one_still_reports_the_good_one(cli, sshd, ort_artifact, tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    dead = sshd.url(workdir, port=_free_port(), retries="1")
    r = cli("bench", ort_artifact, "--device", "local", "--device", dead, *FAST)
    assert r.rc == 0, r.err  # exit 2 only when every device failed
    assert sum("error: cannot reach" in line for line in r.err.splitlines()) == 1
    rows = [line for line in r.out.splitlines() if line.startswith(ort_artifact.name + " ")]
    assert len(rows) == 2 and "ERROR" not in rows[0] and "ERROR: cannot reach" in rows[1]
    r = cli("bench", ort_artifact, "--device", dead, "--device", sshd.url(workdir, port=_free_port(), retries="1"),
            *FAST)
    assert r.rc == 2 and "all 2 devices failed" in r.err


def test_bad_key_is_refused_with_a_hint(cli, sshd, ort_artifact, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = cli("bench", ort_artifact, "--device", sshd.url(workdir, key=other), *FAST)
    assert r.rc == 2 and r.err.strip().count("\n") == 0, r.err
    assert "cannot log in" in r.err and "Permission denied" in r.err and "authorized_keys" in r.err
    assert list(workdir.iterdir()) == []


@pytest.fixture(scope="session")
def python_without_onnxruntime(tmp_path_factory) -> Path:
    """A tiny venv (no pip) that has numpy, linked from ours, and no onnxruntime: a board that lacks the runtime."""
    import numpy

    root = tmp_path_factory.mktemp("venv-no-ort")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    ours = Path(numpy.__file__).resolve().parents[1]
    for entry in ours.iterdir():
        if entry.name == "numpy" or entry.name.startswith(("numpy.libs", "numpy-")):
            (site / entry.name).symlink_to(entry)
    python = root / "venv" / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import numpy, importlib.util as u; "
                            "assert u.find_spec('onnxruntime') is None"], capture_output=True)
    assert check.returncode == 0, check.stderr
    return python


def test_missing_runtime_on_the_device_says_how_to_install_it(cli, sshd, ort_artifact, tmp_path,
                                                              python_without_onnxruntime):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = cli("bench", ort_artifact, "--device", sshd.url(workdir, python=str(python_without_onnxruntime)), *FAST)
    assert r.rc == 2
    line = next(line for line in r.err.splitlines() if "lacks" in line)
    assert "onnxruntime" in line and f"{python_without_onnxruntime} -m pip install onnxruntime" in line
    assert list(workdir.iterdir()) == []


def test_corrupted_transfer_is_caught_by_the_hash_check_on_arrival(cli, sshd, ort_artifact, tmp_path, monkeypatch):
    from edgekit.bench import ssh

    def flip(device, name, data):
        if name != "model.onnx":
            return data
        broken = bytearray(data)
        broken[len(broken) // 2] ^= 0xFF
        return bytes(broken)

    monkeypatch.setattr(ssh.SshDevice, "transfer_filter", staticmethod(flip))
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = cli("bench", ort_artifact, "--device", sshd.url(workdir), *FAST)
    assert r.rc == 2
    line = next(line for line in r.err.splitlines() if "arrived with sha256" in line)
    assert "'model.onnx'" in line and "the transfer corrupted it" in line
    assert list(workdir.iterdir()) == []


def test_device_out_of_disk_is_reported_as_such(cli, sshd, ort_artifact, tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is not available to simulate a full disk")
    from edgekit.bench import ssh, worker_bundle

    def fill(device, remote_dir):  # the device is this machine: its folder is ours to prepare
        os.symlink("/dev/full", os.path.join(remote_dir, worker_bundle.NAME))

    monkeypatch.setattr(ssh.SshDevice, "after_workdir", staticmethod(fill))
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = cli("bench", ort_artifact, "--device", sshd.url(workdir), *FAST)
    assert r.rc == 2 and r.err.strip().count("\n") == 0, r.err
    assert "out of disk space" in r.err and "No space left on device" in r.err
    assert list(workdir.iterdir()) == []


# -- no server needed ---------------------------------------------------------------------------------
def test_ssh_addresses_and_named_devices(tmp_path, monkeypatch):
    from edgekit.bench import devices, ssh
    from edgekit.errors import EdgekitError

    d = devices.make_device("ssh://pi@raspberrypi.local:2222?python=python3.11&workdir=/var/tmp")
    assert isinstance(d, ssh.SshDevice) and (d.user, d.host, d.port) == ("pi", "raspberrypi.local", 2222)
    assert d.python == "python3.11" and d.workdir == "/var/tmp" and d.name == "ssh://pi@raspberrypi.local:2222"
    argv = d.ssh_argv()
    assert "BatchMode=yes" in argv and "-p" in argv and argv[-1] == "pi@raspberrypi.local"
    assert devices.make_device("ssh:pi@board").host == "board"
    for bad, message in [("ssh://", "malformed ssh device"), ("ssh://h?colour=red", "option 'colour' is unknown"),
                         ("ssh://h:notaport", "malformed ssh device")]:
        with pytest.raises(EdgekitError, match=message):
            devices.make_device(bad)
    config = tmp_path / "devices.toml"
    config.write_text('[devices.lab-pi5]\nhost = "pi5.lab"\nuser = "pi"\ntarget = "raspberry-pi-5"\n'
                      '[devices.phone]\nkind = "adb"\nserial = "R58M"\nbenchmark_model = "/x/benchmark_model"\n')
    monkeypatch.setenv("EDGEKIT_DEVICES", str(config))
    pi = devices.make_device("lab-pi5")
    assert pi.name == "lab-pi5" and pi.host == "pi5.lab" and pi.target == "raspberry-pi-5"
    with pytest.raises(EdgekitError, match=r"unknown device 'gpu0'.*named devices in .*lab-pi5, phone"):
        devices.make_device("gpu0")
    config.write_text('[devices.x]\nhost = "h"\nhots = "typo"\n')
    with pytest.raises(EdgekitError, match=r"unknown field\(s\) for kind 'ssh': 'hots'; known: .*host, key"):
        devices.make_device("x")


def test_crafted_artifacts_are_refused_before_sending_and_on_the_device(cli, sshd, ort_artifact, tmp_path,
                                                                          monkeypatch):
    """Escaping file entries, an unlisted model file and a symlink out of the folder are refused on this
    side, and nothing of them is sent; a sender that skipped the checks is stopped by the device's own."""
    import dataclasses

    from test_trust import crafted_artifacts

    from edgekit import manifest as manifest_mod
    from edgekit.bench import ssh

    arts = crafted_artifacts(ort_artifact, tmp_path / "crafted")
    sent: list[str] = []
    monkeypatch.setattr(ssh.SshDevice, "transfer_filter", staticmethod(lambda d, n, data: sent.append(n) or data))
    workdir = tmp_path / "wd"
    workdir.mkdir()
    r = cli("bench", ort_artifact, *arts.values(), "--device", sshd.url(workdir), *FAST)
    assert r.rc == 2 and "4 of 5 artifact(s) could not be measured" in r.err, r.err
    # only the good artifact went over: one manifest, nothing from outside the folders, no unlisted file
    assert sent.count("manifest.json") == 1 and "other.onnx" not in sent, sent
    assert not any("secret" in n or n.startswith("/") or ".." in n for n in sent), sent
    assert list(workdir.iterdir()) == []

    # a lax sender (its model_file check switched off) sends the unlisted-model artifact: the device refuses it
    real_parse = manifest_mod.parse_manifest

    def lax(data, where):
        first = next(iter(data["files"]))
        return dataclasses.replace(real_parse({**data, "model_file": first}, where), model_file=data["model_file"],
                                   raw=data)

    monkeypatch.setattr(manifest_mod, "parse_manifest", lax)
    sent.clear()
    r = cli("bench", arts["unlisted-model"], "--device", sshd.url(workdir), *FAST)
    assert "manifest.json" in sent, r.err  # it did go over
    assert r.rc == 2 and "must be one of the hashed files" in r.err, r.err
    assert list(workdir.iterdir()) == []
