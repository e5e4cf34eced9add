"""Target profiles: a named device and what it runs, read from TOML files (data, not code).

Everything that differs between devices (backend, precisions, quantization format, layout, opsets) lives in
these files, so the exporters and the decision tree read fields and never compare target names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.facade import make_callable
from edgekit.resources import builtin_dir, load_toml

DEVICE_CLASSES = ("gpu", "cpu", "npu", "edge-cpu", "mcu")
LAYOUTS = ("NCHW", "NHWC")
PRECISIONS = ("fp32", "fp16", "int8", "dynamic-int8", "mixed", "int4-weight")
TARGET_PATH_ENV = "EDGEKIT_TARGET_PATH"


@dataclass(frozen=True)
class Target:
    """One deployment target. `backend_options` is passed to the backend's exporter and runner as is."""

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


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise EdgekitError(f"{where}: missing required field '{key}'")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise EdgekitError(f"{where}: field '{key}' must be a {names} (got {value!r})")
    return value


def _choice(data: dict[str, Any], key: str, choices: tuple[str, ...], where: str, default: str | None = None):
    value = data.get(key, default) if default is not None else _require(data, key, str, where)
    if value not in choices:
        raise EdgekitError(f"{where}: field '{key}' must be one of {', '.join(choices)} (got {value!r})")
    return value


_KNOWN_FIELDS = {
    "name", "description", "device", "backend", "device_class", "precisions", "default_precision",
    "cpu_arch", "memory_budget_mb", "opset", "input_layout", "backend_options", "alternatives",
}
# what an [alternatives.BACKEND] table may set; everything else is the device's and stays the same
_ALTERNATIVE_FIELDS = {"description", "precisions", "default_precision", "opset", "input_layout", "backend_options"}


def parse_target(data: dict[str, Any], source: str) -> Target:
    """Validate one profile's fields; every error names the file and the field."""
    from edgekit.backends import registry

    unknown = sorted(set(data) - _KNOWN_FIELDS)
    if unknown:
        known = ", ".join(sorted(_KNOWN_FIELDS))
        raise EdgekitError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {known}")
    name = _require(data, "name", str, source)
    backend = _require(data, "backend", str, source)
    if backend not in registry.backend_names():
        raise EdgekitError(
            f"{source}: field 'backend' names unknown backend '{backend}'; known: {', '.join(registry.backend_names())}"
        )
    precisions = _require(data, "precisions", list, source)
    if not precisions:
        raise EdgekitError(f"{source}: field 'precisions' must list at least one precision")
    supported = registry.backend_precisions(backend)
    for p in precisions:
        if p not in supported:
            raise EdgekitError(
                f"{source}: field 'precisions' has '{p}', which backend '{backend}' does not offer; "
                f"it offers {', '.join(supported)}"
            )
    default = _require(data, "default_precision", str, source)
    if default not in precisions:
        raise EdgekitError(f"{source}: field 'default_precision' '{default}' is not in 'precisions' {precisions}")
    opset = _require(data, "opset", list, source)
    if len(opset) != 2 or not all(isinstance(v, int) for v in opset) or opset[0] > opset[1]:
        raise EdgekitError(f"{source}: field 'opset' must be [min, max] integers with min <= max (got {opset!r})")
    budget = _require(data, "memory_budget_mb", int, source)
    if budget <= 0:
        raise EdgekitError(f"{source}: field 'memory_budget_mb' must be positive (got {budget})")
    options = data.get("backend_options", {})
    if not isinstance(options, dict):
        raise EdgekitError(f"{source}: field 'backend_options' must be a table")
    alternatives: dict[str, Target] = {}
    raw_alts = data.get("alternatives", {})
    if not isinstance(raw_alts, dict):
        raise EdgekitError(f"{source}: field 'alternatives' must be a table of [alternatives.BACKEND] tables")
    for alt_backend, alt in raw_alts.items():
        where = f"{source} [alternatives.{alt_backend}]"
        if not isinstance(alt, dict):
            raise EdgekitError(f"{where}: must be a table")
        extra = sorted(set(alt) - _ALTERNATIVE_FIELDS)
        if extra:
            raise EdgekitError(f"{where}: field(s) {', '.join(extra)} cannot differ between backends; "
                               f"allowed: {', '.join(sorted(_ALTERNATIVE_FIELDS))}")
        if alt_backend == backend:
            raise EdgekitError(f"{where}: '{alt_backend}' is already the default backend")
        merged = {k: v for k, v in data.items() if k not in ("alternatives", "backend_options")}
        merged.update(alt)
        merged["backend"] = alt_backend
        alternatives[alt_backend] = parse_target(merged, where)
    return Target(
        name=name,
        description=_require(data, "description", str, source),
        device=_require(data, "device", str, source),
        backend=backend,
        device_class=_choice(data, "device_class", DEVICE_CLASSES, source),
        precisions=tuple(precisions),
        default_precision=default,
        cpu_arch=_require(data, "cpu_arch", str, source),
        memory_budget_mb=budget,
        opset_min=opset[0],
        opset_max=opset[1],
        input_layout=_choice(data, "input_layout", LAYOUTS, source, default="NCHW"),
        backend_options=dict(options),
        source=source,
        alternatives=alternatives,
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


def list_targets() -> list[Target]:
    seen: dict[str, Target] = {}
    for folder in search_dirs():
        for path in sorted(folder.glob("*.toml")):
            if path.stem not in seen:
                seen[path.stem] = load_target_file(path)
    return sorted(seen.values(), key=lambda t: t.name)


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
