"""Target profiles: a named device and what it runs, read from TOML files (data, not code).

Everything that differs between devices (backend, precisions, quantization format, layout, opsets) lives in
these files, so the exporters and the decision tree read fields and never compare target names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.common import schema
from edgekit.errors import EdgekitError
from edgekit.common.facade import make_callable
from edgekit.common.resources import builtin_dir, load_toml

DEVICE_CLASSES = ("gpu", "cpu", "npu", "edge-cpu", "mcu")
LAYOUTS = ("NCHW", "NHWC")
PRECISIONS = ("fp32", "fp16", "int8", "dynamic-int8", "mixed", "int4-weight")
TARGET_PATH_ENV = "EDGEKIT_TARGET_PATH"


NAME_CHARS = "letters, digits, '.', '_' and '-'"
OPSET_RANGE = (7, 30)  # ONNX opsets edgekit's exporters can be asked for; 30 leaves room for new releases
MEMORY_RANGE_MB = (1, 1 << 24)  # 16 TiB


@dataclass(frozen=True)
class Target:
    """One deployment target. `backend_options` holds the values the backend declares (checked against
    edgekit.backends.options); the exporter and runner read them as they are.

    Validated at construction, whoever builds it (a TOML file or Python), so a Target that exists is right:
    every error names `source` (the file), the field, the value given and what is allowed.
    """

    name: str
    description: str
    device: str
    backend: str
    device_class: str
    precisions: tuple[str, ...]
    default_precision: str
    cpu_arch: str
    memory_budget_mb: int
    opset_min: int
    opset_max: int
    input_layout: str = "NCHW"
    backend_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: other backends this device also runs: backend name -> the fields that differ from the default
    alternatives: dict[str, Target] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from edgekit.backends import options as backend_options
        from edgekit.backends import registry

        where = self.source or f"target '{self.name}'"
        schema.string(where, "name", self.name)
        if not all(c.isalnum() or c in "._-" for c in self.name):
            raise schema.bad(where, "name", self.name, NAME_CHARS)
        for key in ("description", "device", "cpu_arch"):
            schema.string(where, key, getattr(self, key))
        schema.string(where, "backend", self.backend)
        schema.string(where, "device_class", self.device_class, DEVICE_CLASSES)
        schema.string(where, "input_layout", self.input_layout, LAYOUTS)
        precisions = schema.string_list(where, "precisions", self.precisions, PRECISIONS, nonempty=True)
        if len(set(precisions)) != len(precisions):
            raise schema.bad(where, "precisions", list(precisions), "each precision once")
        schema.string(where, "default_precision", self.default_precision, precisions)
        schema.integer(where, "memory_budget_mb", self.memory_budget_mb, *MEMORY_RANGE_MB)
        schema.integer(where, "opset", self.opset_min, *OPSET_RANGE)
        schema.integer(where, "opset", self.opset_max, self.opset_min, OPSET_RANGE[1])
        opts = schema.table(where, "backend_options", self.backend_options)
        checked = backend_options.validate(self.backend, opts, f"{where} [backend_options]") \
            if self.backend in registry.backend_names() else dict(opts)  # a hypothetical device's (recommend)
        schema.table(where, "alternatives", self.alternatives)
        object.__setattr__(self, "precisions", precisions)
        object.__setattr__(self, "backend_options", checked)

    @property
    def backends(self) -> tuple[str, ...]:
        return (self.backend, *self.alternatives)

    def with_backend(self, backend: str) -> Target:
        """This device as run by another of its backends (`edgekit export --backend NAME`)."""
        if backend == self.backend:
            return self
        if backend not in self.alternatives:
            raise EdgekitError(
                f"target '{self.name}' has no backend '{backend}'; available: {self.backend} (default)"
                + "".join(f", {b}" for b in self.alternatives)
            )
        return self.alternatives[backend]

    def check_precision(self, precision: str | None) -> str:
        """Return the precision to use, or raise naming the ones this target supports."""
        if precision is None:
            return self.default_precision
        if precision not in self.precisions:
            raise EdgekitError(
                f"precision '{precision}' is not supported by target '{self.name}'; "
                f"supported: {', '.join(self.precisions)}"
            )
        return precision


_REQUIRED = ("name", "description", "device", "backend", "device_class", "precisions", "default_precision",
             "cpu_arch", "memory_budget_mb", "opset")
_KNOWN_FIELDS = {*_REQUIRED, "input_layout", "backend_options", "alternatives"}
# what an [alternatives.BACKEND] table may set; everything else is the device's and stays the same
_ALTERNATIVE_FIELDS = {"description", "precisions", "default_precision", "opset", "input_layout", "backend_options"}


def parse_target(data: dict[str, Any], source: str) -> Target:
    """One profile's TOML table as a Target; every error names the file and the field."""
    from edgekit.backends import registry

    schema.refuse_unknown(source, data, _KNOWN_FIELDS)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise EdgekitError(f"{source}: missing required field '{missing[0]}'")
    opset = schema.integer_list(source, "opset", data["opset"], 2)
    if opset[0] > opset[1]:
        raise schema.bad(source, "opset", list(opset), "[min, max] with min <= max")
    alternatives: dict[str, Target] = {}
    raw_alts = data.get("alternatives", {})
    if not isinstance(raw_alts, dict):
        raise schema.bad(source, "alternatives", raw_alts, "[alternatives.BACKEND] tables")
    for alt_backend, alt in raw_alts.items():
        where = f"{source} [alternatives.{alt_backend}]"
        if not isinstance(alt, dict):
            raise schema.bad(source, f"alternatives.{alt_backend}", alt, "a table")
        extra = sorted(set(alt) - _ALTERNATIVE_FIELDS)
        if extra:
            raise EdgekitError(f"{where}: field(s) {', '.join(extra)} cannot differ between backends; "
                               f"allowed: {', '.join(sorted(_ALTERNATIVE_FIELDS))}")
        if alt_backend == data["backend"]:
            raise EdgekitError(f"{where}: '{alt_backend}' is already the default backend")
        merged = {k: v for k, v in data.items() if k not in ("alternatives", "backend_options")}
        merged.update(alt)
        merged["backend"] = alt_backend
        alternatives[alt_backend] = parse_target(merged, where)
    schema.string(source, "backend", data["backend"], registry.backend_names())
    precisions = data["precisions"]
    if isinstance(precisions, list) and isinstance(data["backend"], str) \
            and data["backend"] in registry.backend_names():
        # a file describes a real device: only what its backend can export (Python callers may reason about
        # hypothetical ones, e.g. int4-weight in the decision tree)
        supported = registry.backend_precisions(data["backend"])
        for p in precisions:
            if p not in supported:
                raise EdgekitError(f"{source}: field 'precisions' has {schema.shown(p)}, which backend "
                                   f"'{data['backend']}' does not offer; it offers {', '.join(supported)}")
    return Target(
        name=data["name"], description=data["description"], device=data["device"], backend=data["backend"],
        device_class=data["device_class"],
        precisions=tuple(precisions) if isinstance(precisions, list) else precisions,
        default_precision=data["default_precision"], cpu_arch=data["cpu_arch"],
        memory_budget_mb=data["memory_budget_mb"], opset_min=opset[0], opset_max=opset[1],
        input_layout=data.get("input_layout", "NCHW"), backend_options=data.get("backend_options", {}),
        source=source, alternatives=alternatives,
    )


def load_target_file(path: Path) -> Target:
    data = load_toml(path, "target file")
    target = parse_target(data, str(path))
    if path.stem != target.name:
        raise EdgekitError(f"{path}: field 'name' is '{target.name}' but the file is named '{path.name}'")
    return target


def search_dirs() -> list[Path]:
    """User folders from $EDGEKIT_TARGET_PATH first (they may shadow built-ins), then the built-in one."""
    extra = [Path(p) for p in os.environ.get(TARGET_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, builtin_dir("targets")]


def list_targets(on_skip: Callable[[Path, EdgekitError], None] | None = None) -> list[Target]:
    """Every target, a user's file shadowing a built-in of the same name. With `on_skip`, a file that does not
    load is reported through it and left out, so one broken file does not hide every other target; without
    it, the first broken file is the error."""
    seen: dict[str, Target | None] = {}
    for folder in search_dirs():
        for path in sorted(folder.glob("*.toml")):
            if path.stem in seen:
                continue
            try:
                seen[path.stem] = load_target_file(path)
            except EdgekitError as exc:
                if on_skip is None:
                    raise
                on_skip(path, exc)
                seen[path.stem] = None
    return sorted((t for t in seen.values() if t is not None), key=lambda t: t.name)


def target_names() -> list[str]:
    names = {p.stem for folder in search_dirs() for p in folder.glob("*.toml")}
    return sorted(names)


def load_target(name_or_path: str | Path | Target) -> Target:
    """A target by name (searched in $EDGEKIT_TARGET_PATH, then built-ins) or by the path of a .toml file."""
    if isinstance(name_or_path, Target):
        return name_or_path
    name_or_path = str(name_or_path)
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise EdgekitError(f"target file not found: {path}")
        return load_target_file(path)
    for folder in search_dirs():
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return load_target_file(path)
    raise EdgekitError(f"unknown target '{name_or_path}'; known targets: {', '.join(target_names())}")


def targets() -> list[Target]:
    """Every target profile edgekit can find ($EDGEKIT_TARGET_PATH first, then the built-ins), by name."""
    return list_targets()


make_callable(__name__, "targets")
