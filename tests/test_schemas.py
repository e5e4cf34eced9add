"""Typed, validated schemas: target TOML, backend options (TOML and --backend-option against one declaration),
calibration recipes, device configs and bench results. Each wrong value is one line naming the file, the
field, what was given and what is allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.targets import load_target, load_target_file
from tests.test_targets import VALID

ORT_OPTIONS = '\n[backend_options]\nactivation_type = "uint8"\n'


def _target(tmp_path: Path, text: str, name: str = "my-board") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, field, allowed", [
    (lambda s: s.replace("opset = [17, 21]", "opset = [true, 21]"), "opset", "a list of 2 integers"),
    (lambda s: s.replace("opset = [17, 21]", "opset = [17.0, 21]"), "opset", "a list of 2 integers"),
    (lambda s: s.replace("opset = [17, 21]", "opset = [3, 21]"), "opset", "an integer from 7 to 30"),
    (lambda s: s.replace("memory_budget_mb = 512", "memory_budget_mb = 1e308"), "memory_budget_mb", "an integer"),
    (lambda s: s.replace("memory_budget_mb = 512", "memory_budget_mb = true"), "memory_budget_mb", "an integer"),
    (lambda s: s.replace('name = "my-board"', 'name = 7'), "name", "a non-empty string"),
    (lambda s: s.replace('precisions = ["fp32", "int8"]', 'precisions = "fp32"'), "precisions", "a list of"),
    (lambda s: s.replace('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "fp32", "int8"]'), "precisions",
     "each precision once"),
    (lambda s: s + 'input_layout = "nhwc"\n', "input_layout", "one of NCHW, NHWC"),
    (lambda s: s + ORT_OPTIONS.replace('"uint8"', "[1, 2]"), "activation_type", "one of int8, uint8"),
    (lambda s: s + ORT_OPTIONS.replace('activation_type = "uint8"', "weight_type = ['fp32']"), "weight_type",
     "one of int8, uint8"),
    (lambda s: s + ORT_OPTIONS.replace('activation_type = "uint8"', "graph_optimization_level = 1e308"),
     "graph_optimization_level", "one of disable, basic, extended, all"),
    (lambda s: s + ORT_OPTIONS.replace('activation_type = "uint8"', "activation_symmetric = 0"),
     "activation_symmetric", "true or false"),
    (lambda s: s + ORT_OPTIONS.replace('activation_type = "uint8"', "intra_op_threads = 0"), "intra_op_threads",
     "an integer from 1 to 1024"),
    (lambda s: s + ORT_OPTIONS.replace('activation_type = "uint8"', "session_config = {a = [1]}"),
     "session_config.a", "a string or number"),
])
def test_target_fields_are_typed_and_ranged(tmp_path, edit, field, allowed):
    path = _target(tmp_path, edit(VALID))
    with pytest.raises(EdgekitError) as err:
        load_target_file(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and f"field '{field}' is " in msg and f"allowed: {allowed}" in msg, msg
    assert "\n" not in msg


def test_unknown_backend_option_is_refused_with_the_declared_ones(tmp_path):
    path = _target(tmp_path, VALID + ORT_OPTIONS + "colour = 1\n")
    with pytest.raises(EdgekitError, match=r"\[backend_options\]: unknown option\(s\) of backend 'onnxruntime': "
                                           r"'colour'; known: activation_symmetric, activation_type"):
        load_target_file(path)


def test_every_builtin_target_option_is_declared():
    from edgekit.backends.options import BACKEND_OPTIONS
    from edgekit.targets import target_names

    for name in target_names():
        t = load_target(name)
        for alt in (t, *t.alternatives.values()):
            assert set(alt.backend_options) <= {o.name for o in BACKEND_OPTIONS[alt.backend]}, alt.name


def test_option_declaration_imports_no_runtime():
    code = ("import sys, edgekit.backends.options as o, edgekit.targets as t; t.load_target('raspberry-pi-5'); "
            "print(sorted(m for m in ('onnxruntime', 'tensorflow', 'torch', 'onnx') if m in sys.modules)); "
            "print(o.help_text('onnxruntime'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, *help_lines = out.splitlines()
    assert first == "[]"
    assert any(line.startswith("activation_type: one of int8, uint8 (default 'uint8')") for line in help_lines)


def test_option_spec_validates_itself():
    from edgekit.common.schema import OptionSpec

    with pytest.raises(ValueError, match="kind 'colour'"):
        OptionSpec("x", "colour", "help")
    with pytest.raises(ValueError, match="choices go with kind 'choice'"):
        OptionSpec("x", "str", "help", choices=("a",))
    with pytest.raises(EdgekitError, match="field 'x' is 5"):
        OptionSpec("x", "bool", "help", default=5)


@pytest.mark.parametrize("option, message", [
    ("activation_type=[1,2]", "--backend-option: field 'activation_type' is [1, 2]; allowed: one of int8, uint8"),
    ("weight_type=['fp32']", "--backend-option: field 'weight_type' is \"['fp32']\"; allowed: one of int8, uint8"),
    ("per_channel=0", "--backend-option: field 'per_channel' is 0; allowed: true or false"),
    ("colour=red", "unknown option(s) of backend 'onnxruntime': 'colour'; known: activation_symmetric"),
])
def test_backend_option_flag_uses_the_same_declaration(cli, tmp_path, option, message):
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "--backend-option", option,
            "--out", tmp_path / "a")
    assert r.rc == 2 and message in r.err and r.err.count("\n") == 1, r.err
    assert list(tmp_path.iterdir()) == []


def test_targets_command_skips_a_misnamed_file_with_one_line(cli, tmp_path, monkeypatch):
    _target(tmp_path, VALID, name="other-name")  # name = "my-board" in other-name.toml
    _target(tmp_path, VALID.replace("my-board", "good-board"), name="good-board")
    monkeypatch.setenv("EDGEKIT_TARGET_PATH", str(tmp_path))
    r = cli("targets")
    assert r.rc == 0
    assert r.err.count("\n") == 1 and "other-name.toml" in r.err and "field 'name' is 'my-board'" in r.err, r.err
    names = [line.split()[0] for line in r.out.splitlines()[1:]]
    assert "good-board" in names and "x86-server-cpu" in names and "my-board" not in names
    r = cli("export", "zoo:digits-student", "-t", "other-name")  # asked for by name, it is still an error
    assert r.rc == 2 and "other-name.toml: field 'name' is 'my-board'" in r.err


def test_intra_op_threads_is_used_and_recorded(cli, tmp_path):
    """raspberry-pi-5 asks for 4 intra-op threads: the runner uses them when no count is asked, an explicit
    count wins, and what was used is what the runner reports (the bench record's `threads`)."""
    from edgekit.artifact import load_artifact

    r = cli("export", "zoo:digits-student", "-t", "raspberry-pi-5", "-p", "fp32", "--out", tmp_path / "pi")
    assert r.rc == 0, r.err
    art = load_artifact(tmp_path / "pi")
    assert art.manifest["backend_details"]["intra_op_threads"] == 4
    with art.runner(None) as runner:
        assert runner.threads_used == 4
        assert runner.session.get_session_options().intra_op_num_threads == 4
    with art.runner(2) as runner:
        assert runner.threads_used == 2 and runner.session.get_session_options().intra_op_num_threads == 2
    r = cli("bench", tmp_path / "pi", "--threads", "0", "--iters", "3", "--warmup", "1", "--min-seconds", "0",
            "--rounds", "1", "--json", tmp_path / "r.json")
    assert r.rc == 0, r.err
    records = json.loads((tmp_path / "r.json").read_text())
    assert [rec["threads"] for rec in records] == [4]
    r = cli("export", "zoo:digits-student", "-t", "x86-server-cpu", "-p", "fp32", "--out", tmp_path / "x86")
    with load_artifact(tmp_path / "x86").runner(None) as runner:  # no target setting: ONNX Runtime's default
        assert runner.threads_used == 0


# --- calibration recipes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ('method = "percentile"\ncolour = 1\n', "unknown field(s): 'colour'; known: method, options"),
    ("method = 3\n", "field 'method' is 3; allowed: one of minmax, entropy, percentile"),
    ('method = "entropy"\noptions = [1]\n', "field 'options' is [1]; allowed: a table"),
    ('method = "percentile"\n[options]\npercentile = "99"\n', "field 'percentile' is '99'; allowed: a finite number"),
    ('method = "entropy"\n[options]\nnum_bins = 64\nnum_quantized_bins = 128\n',
     "field 'num_quantized_bins' is 128; allowed: at most num_bins (64)"),
    ('method = "minmax"\n[options]\nsymmetric = "yes"\n', "field 'symmetric' is 'yes'; allowed: true or false"),
    ('[options]\nnum_bins = 10\n', "missing required field 'method'"),
])
def test_recipe_fields_are_typed(tmp_path, text, message):
    from edgekit.quant.calibrate import resolve_method

    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(EdgekitError) as err:
        resolve_method(str(path))
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_builtin_recipes_still_load():
    from edgekit.quant.calibrate import resolve_method

    assert resolve_method("entropy-fine") == ("entropy", {"num_bins": 4096, "num_quantized_bins": 128})
    assert resolve_method("percentile-99.99", {"percentile": 99.9})[1]["percentile"] == 99.9


# --- device configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("table, message", [
    ('host = "h"\nport = "22"\n', "field 'port' is '22'; allowed: an integer from 1 to 65535"),
    ('host = "h"\nport = 70000\n', "field 'port' is 70000"),
    ('host = "h"\nssh_options = [1]\n', "field 'ssh_options' is [1]; allowed: a list of non-empty strings"),
    ('host = ["h"]\n', "field 'host' is ['h']; allowed: a non-empty string"),
    ('host = "h"\nstrict_host_key_checking = true\n', "field 'strict_host_key_checking' is True"),
    ('kind = "adb"\nserial = "R5"\ntimeout = -1\n', "field 'timeout' is -1; allowed: a finite number from 1"),
    ('kind = 7\nhost = "h"\n', "field 'kind' is 7; allowed: one of ssh, adb"),
    ('user = "pi"\n', "device 'lab' (ssh) needs 'host'"),
])
def test_device_config_fields_are_typed(tmp_path, table, message):
    from edgekit.bench import device_config

    path = tmp_path / "devices.toml"
    path.write_text("[devices.lab]\n" + table)
    with pytest.raises(EdgekitError) as err:
        device_config.load(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_valid_device_config_loads_typed(tmp_path):
    from edgekit.bench import device_config

    path = tmp_path / "devices.toml"
    path.write_text('[devices.lab]\nhost = "pi5"\nport = 2222\nssh_options = "A=1, B=2"\n'
                    '[devices.phone]\nkind = "adb"\nserial = "R58"\ntimeout = 30\n')
    devices = device_config.load(path)
    assert devices["lab"].options() == {"host": "pi5", "port": 2222, "ssh_options": ["A=1", "B=2"]}
    assert devices["phone"].options() == {"serial": "R58", "timeout": 30.0}


# --- bench results ---------------------------------------------------------------------------------------------
GOOD = {"artifact": "a", "target": "x86-server-cpu", "precision": "fp32", "latency_ms": {"p50": 1.0}, "batch": 1}


@pytest.mark.parametrize("change, message", [
    ({"batch": "1"}, "record 0: field 'batch' is '1'; allowed: an integer >= 1"),
    ({"batch": 0}, "record 0: field 'batch' is 0"),
    ({"target": ["x86-server-cpu"]}, "record 0: field 'target' is ['x86-server-cpu']; allowed: a string or null"),
    ({"status": "fine"}, "record 0: field 'status' is 'fine'; allowed: one of ok, skipped, error"),
    ({"model_bytes": 1.5}, "field 'model_bytes' is 1.5"),
    ({"accuracy": 95.0}, "must be a fraction in [0, 1]"),
    ({"latency_ms": {"p50": "fast"}}, "field 'latency_ms' must hold a positive p50"),
])
def test_results_records_are_typed(tmp_path, change, message):
    from edgekit.recommend import load_results

    path = tmp_path / "r.json"
    path.write_text(json.dumps([dict(GOOD, **change)]))
    with pytest.raises(EdgekitError) as err:
        load_results(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_recommend_refuses_a_junk_results_file_in_one_line(cli, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"records": [dict(GOOD, batch=[1])]}))
    r = cli("recommend", "--target", "x86-server-cpu", "--results", path)
    assert r.rc == 2 and r.err.count("\n") == 1 and "field 'batch' is [1]" in r.err, r.err
