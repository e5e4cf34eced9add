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

from edgekit.common import schema
from edgekit.errors import EdgekitError
from edgekit.common.resources import load_toml
from edgekit.common.schema import OptionSpec

_TARGET = OptionSpec("target", "str", "the target profile this device is")
_WORKDIR = OptionSpec("workdir", "str", "where a temporary working folder is made")
#: each kind's fields, their types and ranges (devices files are checked against these at load)
SPECS: dict[str, tuple[OptionSpec, ...]] = {
    "ssh": (
        OptionSpec("host", "str", "the board's address"),
        OptionSpec("user", "str", "login name"),
        OptionSpec("port", "int", "ssh port", lo=1, hi=65535),
        OptionSpec("key", "str", "private key file"),
        OptionSpec("python", "str", "the device's Python"),
        _TARGET, _WORKDIR,
        OptionSpec("known_hosts", "str", "known_hosts file"),
        OptionSpec("connect_timeout", "int", "seconds", lo=1, hi=3600),
        OptionSpec("retries", "int", "connection attempts after the first", lo=0, hi=100),
        OptionSpec("ssh_options", "names", "extra -o options, e.g. ProxyJump=bastion"),
        OptionSpec("strict_host_key_checking", "choice", "ssh's StrictHostKeyChecking", "accept-new",
                   ("yes", "accept-new", "no", "ask", "off")),
    ),
    "adb": (
        OptionSpec("serial", "str", "the phone's serial (`adb devices`)"),
        OptionSpec("benchmark_model", "str", "TFLite's benchmark_model binary for the phone"),
        OptionSpec("perf_test", "str", "ONNX Runtime's onnxruntime_perf_test binary for the phone"),
        _TARGET, _WORKDIR,
        OptionSpec("adb", "str", "the adb binary"),
        OptionSpec("timeout", "float", "seconds one adb command may take", lo=1, hi=86400),
    ),
}
FIELDS = {kind: tuple(o.name for o in specs) for kind, specs in SPECS.items()}
SSH_FIELDS, ADB_FIELDS = FIELDS["ssh"], FIELDS["adb"]


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
    """One [devices.NAME] table, checked at construction against its kind's SPECS; `source` is the file."""

    name: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = "devices file"

    def __post_init__(self) -> None:
        where = f"{self.source}: [devices.{self.name}]"
        schema.string(where, "kind", self.kind, tuple(SPECS))
        table = schema.table(where, "fields", self.fields)
        declared = {o.name: o for o in SPECS[self.kind]}
        schema.refuse_unknown(where, table, declared, what=f"field(s) for kind '{self.kind}'")
        required = "host" if self.kind == "ssh" else "serial"
        if required not in table:
            raise EdgekitError(f"{where}: device '{self.name}' ({self.kind}) needs '{required}'")
        object.__setattr__(self, "fields", {k: declared[k].check(v, where) for k, v in table.items()})

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the kind's Device class."""
        return dict(self.fields)


def _entry(name: str, table: Any, path: Path) -> DeviceEntry:
    if not isinstance(table, dict):
        raise EdgekitError(f"{path}: [devices.{name}] must be a table of fields (got {schema.shown(table)})")
    table = dict(table)
    kind = table.pop("kind", "adb" if "serial" in table and "host" not in table else "ssh")
    return DeviceEntry(name, kind, table, str(path))


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
        found = ", ".join(schema.shown(k) for k in extra) or f"devices = {schema.shown(devices)}"
        raise EdgekitError(f"{path}: expected only [devices.NAME] tables (found {found})")
    return {name: _entry(name, table, path) for name, table in devices.items()}


def names() -> list[str]:
    try:
        return sorted(load())
    except EdgekitError:
        return []


def lookup(name: str) -> DeviceEntry | None:
    return load().get(name)
