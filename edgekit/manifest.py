"""manifest.json parsed into a typed, validated structure: an artifact may come from someone else.

Every field edgekit reads is checked for type and range when the manifest is read, so a damaged or crafted
manifest fails here with one line naming the manifest and the field, instead of deep inside a runner (or,
worse, not at all). File entries must be plain relative names inside the artifact folder: no absolute
paths, no `..`, no backslashes or drive letters, no symlink whose target leaves the folder; `model_file`
must be one of the hashed `files`; `verify_files` checks each file's size and sha256. Unknown top-level
keys are kept and tolerated (a newer edgekit may add fields), but a known key of the wrong type is refused.

Standard library only: the benchmark worker runs this on a device that has numpy and a runtime, nothing
more.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # an exported manifest is a few KB; anything this large is not one
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:-]{0,127}")
_LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,200}")  # a target name is a file stem: any printable text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # incl. what str.splitlines() breaks at
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_BYTES = 1 << 50  # a petabyte: no real model file is larger
_FRACTIONS = ("agreement", "accuracy", "reference_accuracy")
_OBJECTS = ("model", "verification", "calibration", "tool_versions", "target_profile", "backend_details",
            "onnx_export")
_STRINGS = ("edgekit_version", "created")
_FIX = "the artifact is damaged or was edited; export it again"


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int | str, ...]  # an int per fixed dimension, a name ("batch") per dynamic one
    dtype: str
    layout: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    source: str | None = None
    kind: str | None = None
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Manifest:
    """The validated manifest. `raw` is the parsed JSON (unknown keys included) that runners read."""

    target: str
    backend: str
    precision: str
    model_file: str
    files: Mapping[str, FileEntry]
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    model: ModelInfo | None
    verification: Mapping[str, Any] | None
    raw: Mapping[str, Any]


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text.replace("\n", "\\n").replace("\r", "\\r")


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str, value: Any = None, show: bool = True) -> EdgekitError:
        got = f" (got {_show(value)})" if show else ""
        field = _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], field)  # a key may hold a newline: one line
        return EdgekitError(f"{self.where}: field '{field}' {problem}{got}; {_FIX}")

    def string(self, value: Any, field: str, pattern: re.Pattern[str] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field, "must be a non-empty string", value)
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(field, "is not a valid name" + (" (letters, digits, . _ + : -)" if pattern is _NAME
                                                             else " (printable text, at most 200 characters)"), value)
        return value

    def integer(self, value: Any, field: str, low: int, high: int = _MAX_BYTES) -> int:
        if type(value) is not int or not low <= value <= high:
            raise self.fail(field, f"must be an integer from {low} to {high}", value)
        return value

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, "must be a JSON object", value)
        return value

    def file_name(self, name: Any, field: str) -> str:
        """A plain relative name inside the folder ('model.onnx', 'sub/weights.bin')."""
        if not isinstance(name, str) or not name:
            raise self.fail(field, "must name a file as a non-empty string", name)
        bad = ("\\" in name or _CONTROL.search(name) or name.startswith("/") or re.match(r"[A-Za-z]:", name)
               or any(part in ("", ".", "..") for part in name.split("/")))
        if bad:
            raise self.fail(field, "must be a plain relative file name inside the artifact folder (no absolute "
                                   "path, '..', backslash, control character or empty part)", name)
        if name == MANIFEST:
            raise self.fail(field, f"cannot list {MANIFEST} itself", name)
        return name

    def tensors(self, value: Any, field: str) -> tuple[TensorEntry, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(field, "must be a non-empty list of {name, shape, dtype}", value)
        out = []
        for i, spec in enumerate(value):
            f = f"{field}[{i}]"
            spec = self.obj(spec, f)
            if not isinstance(spec.get("shape"), list):
                raise self.fail(f"{f}.shape", "must be a list of dimensions", spec.get("shape"))
            dims: list[int | str] = []
            for k, d in enumerate(spec["shape"]):
                if isinstance(d, str) and d:
                    dims.append(d)
                else:
                    dims.append(self.integer(d, f"{f}.shape[{k}]", 0, 1 << 40))
            layout = spec.get("layout")
            if layout is not None and not isinstance(layout, str):
                raise self.fail(f"{f}.layout", "must be a string or null", layout)
            out.append(TensorEntry(self.string(spec.get("name"), f"{f}.name"), tuple(dims),
                                   self.string(spec.get("dtype"), f"{f}.dtype"), layout))
        return tuple(out)

    def finite(self, value: Any, field: str, depth: int = 0) -> None:
        """Every number in verification is finite (NaN or inf there means the check itself failed)."""
        if depth > 8:
            raise self.fail(field, "is nested too deeply", show=False)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(field, "must be a finite number", value)
        if isinstance(value, dict):
            for k, v in value.items():
                self.finite(v, f"{field}.{k}", depth + 1)
        elif isinstance(value, list):
            for k, v in enumerate(value):
                self.finite(v, f"{field}[{k}]", depth + 1)


def parse_manifest(data: Any, where: str) -> Manifest:
    """Validate parsed JSON as a manifest; `where` (the manifest's path) starts every error message."""
    c = _Checker(where)
    if not isinstance(data, dict):
        raise EdgekitError(f"{where}: must be a JSON object, not {type(data).__name__}; {_FIX}")
    missing = [k for k in ("target", "backend", "precision", "model_file", "files", "inputs", "outputs")
               if k not in data]
    if missing:
        raise EdgekitError(f"{where} lacks field(s): {', '.join(missing)}; {_FIX}")
    if "manifest_version" in data:
        c.integer(data["manifest_version"], "manifest_version", 1, 1 << 20)
    for key in _STRINGS:
        if key in data and not isinstance(data[key], str):
            raise c.fail(key, "must be a string", data[key])
    for key in _OBJECTS:
        if key in data and data[key] is not None:
            c.obj(data[key], key)
    files_raw = c.obj(data["files"], "files")
    if not files_raw:
        raise c.fail("files", "must list at least the model file", files_raw)
    files: dict[str, FileEntry] = {}
    for name, meta in files_raw.items():
        c.file_name(name, f"files[{_show(name)}]")
        meta = c.obj(meta, f"files.{name}")
        digest = meta.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise c.fail(f"files.{name}.sha256", "must be 64 lowercase hex digits", digest)
        files[name] = FileEntry(name, digest, c.integer(meta.get("bytes"), f"files.{name}.bytes", 0))
    model_file = c.file_name(data["model_file"], "model_file")
    if model_file not in files:
        raise c.fail("model_file", "must be one of the hashed files "
                                   f"({', '.join(sorted(files))[:120]})", model_file)
    model = None
    if data.get("model") is not None:
        m = data["model"]
        source, kind, shape = m.get("source"), m.get("kind"), m.get("input_shape")
        if source is not None and not isinstance(source, str):
            raise c.fail("model.source", "must be a string", source)
        if kind is not None and not isinstance(kind, str):
            raise c.fail("model.kind", "must be a string", kind)
        if shape is not None:
            if not isinstance(shape, list) or not shape:
                raise c.fail("model.input_shape", "must be a non-empty list of positive integers", shape)
            shape = tuple(c.integer(d, f"model.input_shape[{k}]", 1, 1 << 40) for k, d in enumerate(shape))
        model = ModelInfo(source, kind, shape)
    verification = data.get("verification")
    if verification is not None:
        c.finite(verification, "verification")
        for key in _FRACTIONS:
            v = verification.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1):
                raise c.fail(f"verification.{key}", "must be a fraction from 0 to 1 or null", v)
        if verification.get("samples") is not None:
            c.integer(verification["samples"], "verification.samples", 0)
    return Manifest(
        target=c.string(data["target"], "target", _LABEL), backend=c.string(data["backend"], "backend", _NAME),
        precision=c.string(data["precision"], "precision", _NAME), model_file=model_file, files=files,
        inputs=c.tensors(data["inputs"], "inputs"), outputs=c.tensors(data["outputs"], "outputs"),
        model=model, verification=verification, raw=data,
    )


def read_manifest(folder: Path | str) -> Manifest:
    """Read and validate FOLDER/manifest.json (files not yet checked: see verify_files)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgekitError(f"artifact not found: {folder} is not a folder")
    if not path.is_file():
        raise EdgekitError(f"{folder} is not an edgekit artifact: it has no {MANIFEST}")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise EdgekitError(f"{path} is {size} bytes, too large for a manifest (at most "
                               f"{MAX_MANIFEST_BYTES >> 20} MB); {_FIX}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise EdgekitError(f"{path} is not UTF-8 text (a binary file?); {_FIX}") from None
    except OSError as exc:
        raise EdgekitError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                           f"{_FIX}") from None
    except RecursionError:
        raise EdgekitError(f"{path} is nested too deeply to be a manifest; {_FIX}") from None
    return parse_manifest(data, str(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_file(folder: Path, name: str) -> Path:
    """FOLDER/name, refused when it (or a symlink on the way) leads outside the folder or is not a file."""
    root = folder.resolve()
    path = folder / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise EdgekitError(f"artifact {folder}: file '{name}' listed in the manifest is missing") from None
    if not real.is_relative_to(root):
        raise EdgekitError(f"artifact {folder}: file '{name}' is a link to {real}, outside the artifact folder; "
                           f"refused ({_FIX})")
    if not real.is_file():
        raise EdgekitError(f"artifact {folder}: '{name}' listed in the manifest is not a regular file")
    return path


def verify_files(folder: Path | str, manifest: Manifest) -> None:
    """Every hashed file is inside the folder with its size and sha256."""
    folder = Path(folder)
    for name, entry in manifest.files.items():
        path = resolve_file(folder, name)
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise EdgekitError(f"artifact {folder}: file '{name}' does not match its sha256 in the manifest")
