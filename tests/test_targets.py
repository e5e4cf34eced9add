from __future__ import annotations

import importlib.util
import json

import pytest

from edgekit.errors import EdgekitError
from edgekit.targets import list_targets, load_target, load_target_file, target_names


@pytest.mark.parametrize("name", target_names())
def test_every_builtin_target_is_valid(name):
    t = load_target(name)
    assert t.name == name and t.default_precision in t.precisions
    assert t.opset_min <= t.opset_max


def test_foundation_targets_exist():
    assert {"x86-server-cpu", "raspberry-pi-5", "android-ort-mobile"} <= set(target_names())


VALID = """
name = "my-board"
description = "a board"
device = "board"
backend = "onnxruntime"
device_class = "edge-cpu"
cpu_arch = "aarch64"
precisions = ["fp32", "int8"]
default_precision = "int8"
memory_budget_mb = 512
opset = [17, 21]
"""


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('device_class = "edge-cpu"', 'device_class = "tpu"'),
     "field 'device_class' is 'tpu'; allowed: one of gpu, cpu, npu, edge-cpu, mcu"),
    (lambda s: s.replace('backend = "onnxruntime"', 'backend = "openvino"'),
     "field 'backend' is 'openvino'; allowed: one of ascend"),
    (lambda s: s.replace('default_precision = "int8"', 'default_precision = "fp16"'), "field 'default_precision'"),
    (lambda s: s.replace('memory_budget_mb = 512\n', ''), "missing required field 'memory_budget_mb'"),
    (lambda s: s.replace('opset = [17, 21]', 'opset = [21, 17]'),
     "field 'opset' is [21, 17]; allowed: [min, max] with min <= max"),
    (lambda s: s.replace('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "int3"]'),
     "field 'precisions' has 'int3'"),
    (lambda s: s + "colour = 'red'\n", "unknown field(s): 'colour'; known: alternatives, backend"),
    (lambda s: s.replace('memory_budget_mb = 512', 'memory_budget_mb = "lots"'),
     "field 'memory_budget_mb' is 'lots'; allowed: an integer from 1"),
])
def test_validation_errors_name_file_and_field(tmp_path, edit, message):
    path = tmp_path / "my-board.toml"
    path.write_text(edit(VALID))
    with pytest.raises(EdgekitError) as err:
        load_target_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_user_folder_adds_targets(tmp_path, monkeypatch, cli):
    (tmp_path / "my-board.toml").write_text(VALID)
    monkeypatch.setenv("EDGEKIT_TARGET_PATH", str(tmp_path))
    assert "my-board" in {t.name for t in list_targets()}
    assert load_target(str(tmp_path / "my-board.toml")).cpu_arch == "aarch64"
    r = cli("targets", "--json")
    rows = {row["name"]: row for row in json.loads(r.out)}
    assert rows["my-board"]["installed"] is True


def test_targets_command_lists_backend_precisions_and_runtime(cli):
    r = cli("targets")
    assert r.rc == 0
    header, *rows = r.out.strip().splitlines()
    assert "backend" in header and "export here" in header and "run/compile here" in header
    x86 = next(row for row in rows if row.startswith("x86-server-cpu"))
    assert "onnxruntime" in x86 and "int8*" in x86 and x86.split()[-2:] == ["yes", "yes"]


def test_targets_separates_export_here_from_run_here(cli):
    """TensorRT and Ascend artifacts export everywhere but run only where TensorRT + a GPU / atc exist."""
    import shutil

    rows = {row["name"]: row for row in json.loads(cli("targets", "--json").out)}
    for name in ("jetson-orin-nano", "nvidia-t4-server", "ascend-310p"):
        assert rows[name]["export_here"] is True
    if importlib.util.find_spec("tensorrt") is None:
        assert rows["jetson-orin-nano"]["run_here"] is False
        assert "tensorrt package is not installed" in rows["jetson-orin-nano"]["run_here_reason"]
        assert "stand-in" in rows["jetson-orin-nano"]["run_here_reason"]
    if shutil.which("atc") is None:
        assert rows["ascend-310p"]["run_here"] is False and "atc" in rows["ascend-310p"]["run_here_reason"]
    text = cli("targets").out
    jetson = next(line for line in text.splitlines() if line.startswith("jetson-orin-nano"))
    assert (" no: " in jetson) is (not rows["jetson-orin-nano"]["run_here"])


def test_alternative_backend_is_picked_with_backend_flag(tmp_path, monkeypatch, cli):
    (tmp_path / "my-board.toml").write_text(VALID + '\n[alternatives.ort-mobile]\nprecisions = ["fp32"]\n'
                                            'default_precision = "fp32"\n[alternatives.ort-mobile.backend_options]\n'
                                            'target_platform = "arm"\n')
    monkeypatch.setenv("EDGEKIT_TARGET_PATH", str(tmp_path))
    t = load_target("my-board")
    assert t.backends == ("onnxruntime", "ort-mobile")
    alt = t.with_backend("ort-mobile")
    assert alt.backend == "ort-mobile" and alt.precisions == ("fp32",) and alt.memory_budget_mb == 512
    with pytest.raises(EdgekitError, match="has no backend 'tflite'; available: onnxruntime \\(default\\), ort-mobile"):
        t.with_backend("tflite")
    r = cli("export", "zoo:digits-student", "-t", "my-board", "--backend", "ort-mobile", "--out", tmp_path / "a")
    assert r.rc == 0, r.err
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["backend"] == "ort-mobile"
    r = cli("export", "zoo:digits-student", "-t", "my-board", "-b", "ort-mobile", "-p", "int8", "--out", tmp_path / "b")
    assert r.rc == 2 and "supported: fp32" in r.err and not (tmp_path / "b").exists()
