"""Property-based fuzzing of every loader that reads a user's file: target TOML, calibration recipe TOML,
device config TOML, bench results JSON and .npz/.npy data.

Each generated file must either load or be refused with one `EdgekitError` whose message is one line; any
other exception (TypeError, RecursionError, MemoryError, a numpy warning turned error...) fails the test.
Generation is derandomized so CI sees the same cases every run, and bounded so the file runs in seconds.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import tomllib
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError

FUZZ = settings(derandomize=True, deadline=None, max_examples=200, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = settings(FUZZ, max_examples=60)
DEEP = 50_000  # nesting depth that overflows a recursive parser


def outcome(fn: Callable[[], Any]) -> str | None:
    """None when `fn` succeeds or raises a one-line EdgekitError; else what went wrong (for the assertion)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a numpy RuntimeWarning printed at the user is not a clean refusal
            fn()
    except EdgekitError as exc:
        msg = str(exc)
        return None if msg and "\n" not in msg else f"EdgekitError not one line: {msg!r}"
    except BaseException as exc:  # anything else is the finding
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


# --- TOML writing (inline tables keep any nesting valid) ---------------------------------------------------
def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_text(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "fp32", "int8", "uint8", "all", "NCHW", "x" * 300, "../../etc/passwd"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(min_size=1, max_size=6), inner, max_size=3), max_leaves=8)


def mutate(base: dict[str, Any], data: st.DataObject, extra_keys: list[str]) -> dict[str, Any]:
    """Replace, delete or add a few fields of a valid document."""
    doc = json.loads(json.dumps(base))
    keys = sorted(doc) + extra_keys
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        action = data.draw(st.sampled_from(["replace", "replace", "delete"]))
        if action == "delete":
            doc.pop(key, None)
        else:
            doc[key] = data.draw(values)
    return doc


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, errors="surrogatepass")
    return path


def deep_toml() -> str:
    return "a = " + "[" * DEEP + "]" * DEEP + "\n"


def deep_json() -> str:
    return "[" * DEEP + "]" * DEEP


# --- targets -------------------------------------------------------------------------------------------------
def _base_target() -> dict[str, Any]:
    from edgekit.common.resources import builtin_dir

    return tomllib.loads((builtin_dir("targets") / "raspberry-pi-5.toml").read_text())


OPTION_KEYS = ["activation_type", "weight_type", "activation_symmetric", "per_channel", "reduce_range",
               "graph_optimization_level", "intra_op_threads", "session_config", "nonsense_option"]


def _load_target_text(text: str) -> None:
    from edgekit.targets import load_target_file

    with tempfile.TemporaryDirectory() as tmp:
        target = load_target_file(write(Path(tmp), "raspberry-pi-5.toml", text))
    check_target_types(target)


def check_target_types(target) -> None:
    """What a loaded target promises its users: typed fields, and options the backend can take as they are."""
    assert type(target.opset_min) is int and type(target.opset_max) is int, (target.opset_min, target.opset_max)
    assert 1 <= target.opset_min <= target.opset_max <= 100, (target.opset_min, target.opset_max)
    assert type(target.memory_budget_mb) is int
    for t in (target, *target.alternatives.values()):
        t.check_precision(None)
        if t.backend == "onnxruntime":
            from edgekit.backends.onnxruntime import _qtype, session_config

            _qtype(t.backend_options, "activation_type", "uint8")
            _qtype(t.backend_options, "weight_type", "int8")
            session_config(t.backend_options)
            for key in ("activation_symmetric", "per_channel", "reduce_range"):
                assert type(t.backend_options.get(key, False)) is bool, (key, t.backend_options[key])


@FUZZ
@given(st.data())
def test_fuzz_target_toml(data):
    doc = mutate(_base_target(), data, ["nonsense", "opset", "alternatives"])
    if isinstance(doc.get("backend_options"), dict) and data.draw(st.booleans()):
        opts = doc["backend_options"]
        for key in data.draw(st.lists(st.sampled_from(OPTION_KEYS), min_size=1, max_size=2, unique=True)):
            opts[key] = data.draw(values)
    assert outcome(lambda: _load_target_text(toml_text(doc))) is None


@SMALL
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_target_raw_bytes(blob):
    text = blob if isinstance(blob, str) else None
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "t.toml", blob if text is None else text)
        from edgekit.targets import load_target_file

        assert outcome(lambda: load_target_file(path)) is None


# --- calibration recipes -------------------------------------------------------------------------------------
def _recipe(text: str, overrides: dict[str, Any] | None = None) -> None:
    from edgekit.quant.calibrate import resolve_method

    with tempfile.TemporaryDirectory() as tmp:
        resolve_method(str(write(Path(tmp), "r.toml", text)), overrides)


@FUZZ
@given(st.data())
def test_fuzz_recipe_toml(data):
    base = {"method": data.draw(st.sampled_from(["minmax", "entropy", "percentile"])),
            "options": {"num_bins": 2048, "percentile": 99.99}}
    doc = mutate(base, data, ["symmetric", "num_quantized_bins", "extra"])
    if isinstance(doc.get("options"), dict):
        for key in data.draw(st.lists(st.sampled_from(["num_bins", "percentile", "num_quantized_bins",
                                                       "symmetric"]), max_size=2, unique=True)):
            doc["options"][key] = data.draw(values)
    overrides = data.draw(st.none() | st.dictionaries(st.sampled_from(["percentile", "num_bins", "symmetric"]),
                                                      scalars, max_size=2))
    assert outcome(lambda: _recipe(toml_text(doc), overrides)) is None


# --- device config -------------------------------------------------------------------------------------------
def _devices(text: str) -> None:
    from edgekit.bench import device_config

    with tempfile.TemporaryDirectory() as tmp:
        for entry in device_config.load(write(Path(tmp), "devices.toml", text)).values():
            entry.options()


SSH = {"host": "pi5.lab", "user": "pi", "port": 22, "python": "python3", "target": "raspberry-pi-5",
       "connect_timeout": 10, "ssh_options": ["ProxyJump=bastion"]}
ADB = {"kind": "adb", "serial": "R58", "benchmark_model": "/tmp/bm", "target": "pixel-8", "timeout": 60}


@FUZZ
@given(st.data())
def test_fuzz_device_config(data):
    base = data.draw(st.sampled_from([SSH, ADB]))
    entry = mutate(base, data, ["kind", "retries", "workdir", "strict_host_key_checking", "bogus"])
    name = data.draw(st.sampled_from(["lab", "a b", ""]))
    doc = data.draw(st.sampled_from(["table", "flat", "junk"]))
    if doc == "table":
        text = f"[devices.{json.dumps(name)}]\n" + toml_text(entry)
    elif doc == "flat":
        text = "devices = " + toml_value(data.draw(values)) + "\n"
    else:
        text = toml_text({"devices": {name: entry}, **data.draw(st.dictionaries(st.text(min_size=1, max_size=4),
                                                                                   scalars, max_size=1))})
    assert outcome(lambda: _devices(text)) is None


# --- bench results -------------------------------------------------------------------------------------------
RECORD = {"schema": "edgekit.bench/1", "status": "ok", "artifact": "a-int8", "target": "x86-server-cpu",
          "precision": "int8", "runtime": "onnxruntime", "batch": 1, "threads": 1,
          "latency_ms": {"p50": 1.0, "mean": 1.0}, "agreement": 0.99, "accuracy": 0.9, "model_bytes": 1000}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)


def _results(text: str) -> None:
    from edgekit.recommend import judge, load_results
    from edgekit.targets import load_target

    with tempfile.TemporaryDirectory() as tmp:
        records = load_results(write(Path(tmp), "r.json", text))
        judge(records, load_target("x86-server-cpu"))


@FUZZ
@given(st.data())
def test_fuzz_results_json(data):
    fp32 = dict(RECORD, artifact="a-fp32", precision="fp32", latency_ms={"p50": 2.0}, agreement=1.0, accuracy=0.91)
    records = [mutate(r, data, ["error", "recall", "backend", "device"]) for r in (fp32, RECORD)]
    shape = data.draw(st.sampled_from(["list", "object", "any"]))
    doc: Any = records if shape == "list" else {"records": records} if shape == "object" else data.draw(json_values)
    assert outcome(lambda: _results(json.dumps(doc, allow_nan=True))) is None


# --- .npz / .npy data ----------------------------------------------------------------------------------------
DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int64", "bool", "complex64", "U3", "datetime64[s]",
          "object", "V4", [("a", "f4"), ("b", "i4")]]


def _array(data: st.DataObject) -> np.ndarray:
    dtype = np.dtype(data.draw(st.sampled_from(DTYPES)))
    shape = tuple(data.draw(st.lists(st.integers(0, 4), max_size=4)))
    arr = np.zeros(shape, dtype=dtype)
    if dtype.kind == "f" and arr.size and data.draw(st.booleans()):
        arr.flat[0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
    if dtype.kind in "fiu" and arr.size and data.draw(st.booleans()):
        arr[...] = np.arange(arr.size).reshape(shape) % 7
    return arr


def huge_header_npy(shape: tuple[int, ...]) -> bytes:
    """A .npy whose header declares `shape` but which holds 16 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def _data_file(data: st.DataObject, tmp: Path) -> Path:
    kind = data.draw(st.sampled_from(["npz", "npz", "npy", "pickle", "huge", "huge-npz", "garbage"]))
    if kind == "npz":
        arrays = {}
        if data.draw(st.integers(0, 4)):  # usually an x
            arrays["x"] = _array(data)
        if data.draw(st.booleans()):
            arrays["y"] = _array(data)
        if data.draw(st.booleans()):
            arrays["other"] = _array(data)
        path = tmp / "d.npz"
        np.savez(path, **arrays)
    elif kind == "npy":
        path = tmp / "d.npy"
        np.save(path, _array(data), allow_pickle=True)
    elif kind == "pickle":
        path = tmp / "d.npy"
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind in ("huge", "huge-npz"):
        shape = tuple(data.draw(st.lists(st.sampled_from([1, 10, 10**6, 10**9, 2**40]), min_size=1, max_size=4)))
        blob = huge_header_npy(shape)
        if kind == "huge":
            path = write(tmp, "d.npy", blob)
        else:
            path = tmp / "d.npz"
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("x.npy", blob)
    else:
        path = write(tmp, data.draw(st.sampled_from(["d.npz", "d.npy"])), data.draw(st.binary(max_size=64)))
    return path


def _load_and_check(path: Path) -> None:
    from edgekit.data.calibration import check_matches, load_data

    cset = load_data(str(path))
    check_matches(cset, (1, *cset.x.shape[1:]))
    cset.provenance()


@FUZZ
@given(st.data())
def test_fuzz_data_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _data_file(data, Path(tmp))
        assert outcome(lambda: _load_and_check(path)) is None


# --- deeply nested documents ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", ["target", "recipe", "devices", "results"])
def test_deeply_nested_documents_are_one_line_errors(loader):
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if loader == "results":
            from edgekit.recommend import load_results

            path = write(tmp_path, "r.json", deep_json())
            assert outcome(lambda: load_results(path)) is None
            return
        path = write(tmp_path, "raspberry-pi-5.toml", deep_toml())
        if loader == "target":
            from edgekit.targets import load_target_file

            assert outcome(lambda: load_target_file(path)) is None
        elif loader == "recipe":
            assert outcome(lambda: _recipe(deep_toml())) is None
        else:
            assert outcome(lambda: _devices(deep_toml())) is None
