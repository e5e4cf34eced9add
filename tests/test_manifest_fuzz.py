"""Property-based fuzzing of the artifact loader: a manifest received from someone else is data.

A real manifest (the one `edgekit export zoo:digits-student --target x86-server-cpu --precision fp32` writes)
is mutated by hypothesis: wrong types, missing keys, huge / NaN / infinite numbers, nested junk, path tricks
in file names and `model_file`, very deep nesting, broken JSON. Whatever comes in, `load_artifact` either
returns an artifact whose manifest really is valid, or raises `EdgekitError` with a one-line message naming
the manifest; never any other exception. Seeded (derandomize) and bounded, so CI runs the same cases.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.artifact import load_artifact
from edgekit.errors import EdgekitError

MODEL_BYTES = b"not really onnx, the loader only hashes it" * 8
OUTSIDE_BYTES = b"a file next to the artifact, outside it\n"

TEMPLATE: dict[str, Any] = {
    "manifest_version": 1,
    "edgekit_version": "0.1.0",
    "created": "2026-12-03T06:54:31+00:00",
    "target": "x86-server-cpu",
    "backend": "onnxruntime",
    "precision": "fp32",
    "model_file": "model.onnx",
    "model": {"source": "zoo:digits-student", "kind": "torch", "input_shape": [1, 1, 16, 16]},
    "inputs": [{"name": "input", "shape": ["batch", 1, 16, 16], "dtype": "float32", "layout": "NCHW"}],
    "outputs": [{"name": "linear", "shape": ["batch", 10], "dtype": "float32", "layout": None}],
    "target_profile": {"device": "x86-64 server", "device_class": "cpu", "cpu_arch": "x86_64",
                       "input_layout": "NCHW"},
    "onnx_export": {"opset": 20, "atol": 0.0001, "rtol": 0.001, "max_abs_err": {"linear": 1.5e-06},
                    "reference": "torch fp32"},
    "backend_details": {"precision": "fp32", "session_config": {}, "graph_optimization_level": "all"},
    "calibration": {"method": "none", "reason": "fp32 needs no calibration"},
    "verification": {"samples": 450, "agreement": 1.0, "sqnr_db": 124.19, "max_abs_err": 9.5e-07,
                     "accuracy": 0.9867, "reference_accuracy": 0.9867, "accuracy_drop": 0.0,
                     "reference": "torch fp32", "data": "zoo:digits:test", "runtime": "1.32.0"},
    "tool_versions": {"edgekit": "0.1.0", "python": "3.11.7"},
    "files": {"model.onnx": {"sha256": hashlib.sha256(MODEL_BYTES).hexdigest(), "bytes": len(MODEL_BYTES)}},
}

# names that try to leave the folder, hide in it or confuse a path join
PATH_TRICKS = ["../outside.bin", "../../../../etc/passwd", "/etc/passwd", "..", ".", "", "a/../../outside.bin",
               "..\\outside.bin", "C:\\Windows\\win.ini", "model.onnx/", "./model.onnx", "model.onnx\x00.txt",
               "sub//model.onnx", "link-out", "manifest.json", "missing.onnx", "MODEL.ONNX", "~/model.onnx"]

_HEX = "0123456789abcdef"


def _leaf_paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaf_paths(v, (*prefix, i))


PATHS = [p for p in _leaf_paths(TEMPLATE) if p]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 1e30, 0.5, -1])
           | st.text(max_size=12) | st.sampled_from(PATH_TRICKS) | st.text(alphabet=_HEX, min_size=63, max_size=65))
junk = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)

mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), junk),
    st.tuples(st.just("delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("rename_file"), st.sampled_from(PATH_TRICKS), st.booleans()),
    st.tuples(st.just("model_file"), st.sampled_from(PATH_TRICKS)),
    st.tuples(st.just("deep"), st.sampled_from(PATHS), st.sampled_from([50, 5000, 200_000])),
    st.tuples(st.just("top"), junk),
    st.tuples(st.just("raw"), st.sampled_from(["truncate", "binary", "empty", "bom", "dup-keys"])),
)


def _set(obj: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return
    try:
        if delete:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


def _write(folder: Path, mutations: list[tuple]) -> None:
    """The artifact folder for these mutations: model.onnx, manifest.json, a symlink out of it."""
    manifest: Any = copy.deepcopy(TEMPLATE)
    deep: list[tuple[int]] = []
    raw: str | None = None
    for m in mutations:
        kind = m[0]
        if kind == "set":
            _set(manifest, m[1], m[2])
        elif kind == "delete":
            _set(manifest, m[1], None, delete=True)
        elif kind == "rename_file" and isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
            # the new name gets the real hash of what it points at when that exists: only the path is wrong
            target = (folder / m[1]) if m[1] else folder
            meta = {"sha256": "0" * 64, "bytes": 0}
            try:
                if target.is_file():
                    data = target.read_bytes()
                    meta = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            except (OSError, ValueError):
                pass
            manifest["files"][m[1]] = meta
            if m[2]:
                manifest["model_file"] = m[1]
        elif kind == "model_file" and isinstance(manifest, dict):
            manifest["model_file"] = m[1]
        elif kind == "deep":
            _set(manifest, m[1], f"__DEEP{len(deep)}__")
            deep.append((m[2],))
        elif kind == "top":
            manifest = m[1]
        elif kind == "raw":
            raw = m[1]
    text = json.dumps(manifest, indent=1)
    for i, (n,) in enumerate(deep):
        text = text.replace(f'"__DEEP{i}__"', "[" * n + "]" * n)
    data = text.encode()
    if raw == "truncate":
        data = data[: len(data) // 2]
    elif raw == "binary":
        data = b"\x80\x81\xfe\xff" + data
    elif raw == "empty":
        data = b""
    elif raw == "bom":
        data = b"\xef\xbb\xbf" + data
    elif raw == "dup-keys":
        data = data.replace(b'"target":', b'"target": 7, "target":', 1)
    (folder / "manifest.json").write_bytes(data)


def _valid(manifest: dict[str, Any], folder: Path) -> str | None:
    """Why an accepted manifest is not actually valid (None: it is). Independent of the loader's code."""
    for key in ("target", "backend", "precision"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            return f"{key} is {manifest.get(key)!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"files is {files!r}"
    root = folder.resolve()
    for name, meta in files.items():
        if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
            return f"file name {name!r}"
        if not (root / name).resolve().is_relative_to(root):
            return f"file {name!r} leaves the folder"
        if not isinstance(meta, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(meta.get("sha256"))):
            return f"file meta {meta!r}"
        if type(meta.get("bytes")) is not int or meta["bytes"] < 0:
            return f"file bytes {meta.get('bytes')!r}"
    if manifest.get("model_file") not in files:
        return f"model_file {manifest.get('model_file')!r} not hashed"
    for key in ("inputs", "outputs"):
        specs = manifest.get(key)
        if not isinstance(specs, list) or not specs:
            return f"{key} is {specs!r}"
        for spec in specs:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                    or not isinstance(spec.get("dtype"), str) or not isinstance(spec.get("shape"), list):
                return f"{key} entry {spec!r}"
            for d in spec["shape"]:
                if not ((type(d) is int and d >= 0) or (isinstance(d, str) and d)):
                    return f"{key} dim {d!r}"
    ver = manifest.get("verification")
    if ver is not None:
        if not isinstance(ver, dict):
            return f"verification is {ver!r}"
        for k, v in ver.items():
            if isinstance(v, float) and not math.isfinite(v):
                return f"verification.{k} is {v!r}"
    model = manifest.get("model")
    if model is not None:
        if not isinstance(model, dict):
            return f"model is {model!r}"
        shape = model.get("input_shape")
        if shape is not None and (not isinstance(shape, list) or not shape
                                  or not all(type(d) is int and d > 0 for d in shape)):
            return f"model.input_shape is {shape!r}"
    return None


def outcome(folder: Path, mutations: list[tuple]) -> str:
    """'ok', 'refused', or what went wrong: 'crash: Type', 'multi-line', 'accepted invalid: why'."""
    _write(folder, mutations)
    try:
        art = load_artifact(folder)
    except EdgekitError as exc:
        msg = str(exc)
        if len(msg.splitlines()) != 1 or not msg.strip():
            return "multi-line or empty message"
        return "refused"
    except BaseException as exc:  # what the property forbids
        return f"crash: {type(exc).__name__}"
    why = _valid(art.manifest, folder)
    return "ok" if why is None else f"accepted invalid: {why.split(' ')[0]}"


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))
    (root / "outside.bin").write_bytes(OUTSIDE_BYTES)
    folder = root / "art"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(MODEL_BYTES)
    (folder / "link-out").symlink_to(root / "outside.bin")
    yield folder
    shutil.rmtree(root, ignore_errors=True)


FUZZ = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def test_template_loads(scratch: Path) -> None:
    assert outcome(scratch, []) == "ok"


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=3))
def test_fuzzed_manifest_is_valid_or_one_line_error(scratch: Path, mutations: list[tuple]) -> None:
    result = outcome(scratch, mutations)
    assert result in ("ok", "refused"), f"{result} for {mutations!r}"
