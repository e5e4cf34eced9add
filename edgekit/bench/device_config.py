"""Named devices: `edgekit bench ART --device lab-pi5` reads `lab-pi5` from a TOML file the user keeps.

Where: $EDGEKIT_DEVICES when set, else $XDG_CONFIG_HOME/edgekit/devices.toml (~/.config/edgekit/devices.toml).
One table per device under [devices]; `kind` is "ssh" (the default when `host` is given) or "adb":

    [devices.lab-pi5]               # ssh board
    host = "pi5.lab"                # required
    user = "pi"                     # default: your ssh config / login name
    port = 22
    key = "~/.ssh/id_ed25519"       # default: your ssh config / agent
    python = "python3"              # the device's Python (needs numpy and the runtime package)
    target = "raspberry-pi-5"       # the target profile this device is (a note when an artifact differs)
    workdir = "/tmp"                # where a temporary working folder is made (and removed afterwards)
    known_hosts = "~/.ssh/known_hosts"
    connect_timeout = 10            # seconds
    ssh_options = ["ProxyJump=bastion"]

    [devices.pixel-8]               # adb phone
    kind = "adb"
    serial = "R58M123"
    benchmark_model = "~/android/benchmark_model"   # TFLite's binary for the phone's ABI (.tflite artifacts)
    perf_test = "~/android/onnxruntime_perf_test"   # ONNX Runtime's binary for the phone (.ort artifacts)
    target = "pixel-8"

Unknown fields are errors (a typo would otherwise be silently ignored), with the fields that exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.resources import load_toml

SSH_FIELDS = ("host", "user", "port", "key", "python", "target", "workdir", "known_hosts", "connect_timeout",
              "retries", "ssh_options", "strict_host_key_checking")
ADB_FIELDS = ("serial", "benchmark_model", "perf_test", "target", "workdir", "adb", "timeout")
FIELDS = {"ssh": SSH_FIELDS, "adb": ADB_FIELDS}


def location() -> Path:
    env = os.environ.get("EDGEKIT_DEVICES")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgekit" / "devices.toml"


def describe_location() -> str:
    where = location()
    return f"{where}" + ("" if where.is_file() else " (not present)")


@dataclass(frozen=True)
class DeviceEntry:
    name: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the kind's Device class."""
        return dict(self.fields)


def _entry(name: str, table: Any, path: Path) -> DeviceEntry:
    if not isinstance(table, dict):
        raise EdgekitError(f"{path}: [devices.{name}] must be a table of fields")
    table = dict(table)
    kind = table.pop("kind", "adb" if "serial" in table and "host" not in table else "ssh")
    if kind not in FIELDS:
        raise EdgekitError(f"{path}: device '{name}' has kind '{kind}'; kinds a devices file can declare: "
                           f"{', '.join(FIELDS)}")
    unknown = sorted(set(table) - set(FIELDS[kind]))
    if unknown:
        raise EdgekitError(f"{path}: device '{name}' ({kind}) has unknown field(s) {', '.join(unknown)}; "
                           f"known: {', '.join(FIELDS[kind])}")
    required = "host" if kind == "ssh" else "serial"
    if not table.get(required):
        raise EdgekitError(f"{path}: device '{name}' ({kind}) needs '{required}'")
    return DeviceEntry(name, kind, table)


def load(path: Path | None = None) -> dict[str, DeviceEntry]:
    """All devices in the file (empty when there is no file)."""
    path = path or location()
    if not path.is_file():
        if os.environ.get("EDGEKIT_DEVICES"):
            raise EdgekitError(f"EDGEKIT_DEVICES points at {path}, which is not a file")
        return {}
    data = load_toml(path, "devices file")
    devices = data.get("devices", {})
    extra = sorted(set(data) - {"devices"})
    if extra or not isinstance(devices, dict):
        raise EdgekitError(f"{path}: expected only [devices.NAME] tables (found {', '.join(extra) or 'devices'})")
    return {name: _entry(name, table, path) for name, table in devices.items()}


def names() -> list[str]:
    try:
        return sorted(load())
    except EdgekitError:
        return []


def lookup(name: str) -> DeviceEntry | None:
    return load().get(name)
