"""The public Python API: the README's example runs, every data form is accepted (and bad data refused as a
file would be), `import edgekit` stays light, and the callable modules work in either import order."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.errors import EdgekitError

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "onnxruntime", "tensorflow", "onnx", "ai_edge_litert")


def python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_edgekit_loads_no_runtime() -> None:
    out = python("import sys, edgekit; dir(edgekit); print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = set(json.loads(out.replace("'", '"')))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


# each snippet imports in its own order, then uses both faces of every callable module (a cheap call that
# reaches the function: a listing, a tree decision, or a one-line error raised by the function's own checks)
USE_ALL = """
import edgekit
from edgekit.errors import EdgekitError
assert edgekit.export.ExportPipeline and edgekit.bench.bench and edgekit.recommend.decide
assert edgekit.targets.load_target is edgekit.load_target
assert "x86-server-cpu" in [t.name for t in edgekit.targets()]
assert edgekit.recommend("x86-server-cpu").precision
for call, words in ((lambda: edgekit.export("zoo:digits-student", "no-such-target"), "unknown target"),
                    (lambda: edgekit.bench([]), "no artifacts")):
    try:
        call()
    except EdgekitError as exc:
        assert words in str(exc), exc
    else:
        raise AssertionError("no error")
print("ok")
"""


@pytest.mark.parametrize("first", [
    "import edgekit",  # the package face first: edgekit.export comes from __getattr__
    "import edgekit.export, edgekit.bench.harness, edgekit.recommend, edgekit.targets",  # submodules first
    "from edgekit.export import ExportPipeline; from edgekit.bench import records",
])
def test_callable_modules_in_any_import_order(first: str) -> None:
    assert python(first + "\n" + USE_ALL).strip().endswith("ok")


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # the README's own example
    records, deploy = namespace["records"], namespace["deploy"]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["accuracy"] > 0.9 for r in records)
    assert [a.target for a in deploy] == ["x86-server-cpu", "raspberry-pi-5"]
    assert all(a.path.parent == Path("deploy") and a.path.name.startswith("DigitsCNN-") for a in deploy)
    assert namespace["int8"].manifest["calibration"]["source"].startswith("in-memory array")
    assert namespace["choice"].precision in ("fp32", "int8")
    # progress=print saw the stage lines
    assert "exporting DigitsCNN to ONNX" in capsys.readouterr().out


# -- every accepted data form ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 3, 4, 4)).astype(np.float32), np.arange(20) % 4


def _forms(x: np.ndarray, y: np.ndarray, tmp: Path):
    import torch

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.savez(tmp / "d.npz", x=x, y=y)
    np.save(tmp / "d.npy", x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tx, ty), batch_size=6)
    return {
        "npz path": (tmp / "d.npz", True),
        "npz str": (str(tmp / "d.npz"), True),
        "npy": (tmp / "d.npy", False),
        "array": (x, False),
        "(x, y)": ((x, y), True),
        "tensor": (tx, False),
        "(tensor, tensor)": ((tx, ty), True),
        "dict": ({"input": x, "y": y}, True),
        "loader of (x, y)": (loader, True),
        "loader of tensors": (torch.utils.data.DataLoader(tx, batch_size=7), False),
        "loader of dicts": ([{"input": tx[:10], "y": ty[:10]}, {"input": tx[10:], "y": ty[10:]}], True),
        "generator of arrays": ((x[i : i + 5] for i in range(0, 20, 5)), False),
    }


def test_every_data_form_gives_the_same_samples(samples, tmp_path) -> None:
    x, y = samples
    for name, (data, labelled) in _forms(x, y, tmp_path).items():
        ds = edgekit.as_dataset(data, what="calib=")
        np.testing.assert_array_equal(ds.x, x, err_msg=name)
        assert ds.x.dtype == np.float32, name
        if labelled:
            np.testing.assert_array_equal(ds.y, y, err_msg=name)
        else:
            assert ds.y is None, name
        assert ds.sha256 == edgekit.as_dataset(x).sha256, name  # the same samples, the same provenance hash


def test_in_memory_data_is_subsampled_like_a_file(samples, tmp_path) -> None:
    x, y = samples
    np.savez(tmp_path / "d.npz", x=x, y=y)
    from_file = edgekit.as_dataset(tmp_path / "d.npz", max_samples=8)
    in_memory = edgekit.as_dataset((x, y), max_samples=8)
    np.testing.assert_array_equal(from_file.x, in_memory.x)
    np.testing.assert_array_equal(from_file.y, in_memory.y)
    assert in_memory.selection == from_file.selection == "8 of 20, seeded random (seed 0)"


def test_a_file_with_nan_is_refused_like_an_array(tmp_path) -> None:
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]], dtype=np.float32))
    with pytest.raises(EdgekitError, match=r"calib= \(.*nan.npy\) holds 1 NaN or infinite value"):
        edgekit.as_dataset(tmp_path / "nan.npy", what="calib=")


@pytest.mark.parametrize("data, words", [
    (np.zeros((4, 3), dtype=np.complex64), "complex"),
    (np.array([[1.0, np.nan]], dtype=np.float32), "NaN or infinite"),
    (np.array([[1.0, np.inf]]), "NaN or infinite"),
    (np.array(["a", "b"]), "must hold numbers"),
    (np.zeros((0, 3), dtype=np.float32), "empty"),
    ((np.zeros((4, 3)), np.zeros(3)), "3 labels for 4 samples"),
    ({"y": np.zeros(3)}, "no input arrays"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((3, 2))}, "different numbers of samples"),
    ([], "yielded no batches"),
    ([(np.zeros((2, 3)), np.zeros(2)), np.zeros((2, 3))], "carry labels"),
    (None, "is None"),
    (42, "is not data"),
])
def test_bad_data_is_refused_naming_the_parameter(data, words) -> None:
    with pytest.raises(EdgekitError, match=words) as err:
        edgekit.as_dataset(data, what="calib=")
    assert "calib=" in str(err.value) and "--" not in str(err.value)


# -- export from Python ------------------------------------------------------------------------------
def tiny():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.conv(x).relu().mean((2, 3)))

    import torch

    torch.manual_seed(0)
    return Tiny().eval()


def test_several_targets_share_one_onnx_export_and_calibration(samples, tmp_path) -> None:
    x, _ = samples
    lines: list[str] = []
    arts = edgekit.export(tiny(), ["x86-server-cpu", "raspberry-pi-5"], "int8", calib={"input": x},
                          out=tmp_path / "deploy", progress=lines.append)
    assert [a.path for a in arts] == [tmp_path / "deploy" / "Tiny-x86-server-cpu-int8",
                                      tmp_path / "deploy" / "Tiny-raspberry-pi-5-int8"]
    assert sum("to ONNX" in line for line in lines) == 1
    assert sum(line.startswith("calibrating") for line in lines) == 1
    sha = edgekit.as_dataset(x).sha256
    assert all(a.manifest["calibration"]["sha256"] == sha for a in arts)
    assert all(a.manifest["model"]["input_shape"] == [1, 3, 4, 4] for a in arts)  # taken from calib=
    back = edgekit.load_artifact(arts[0].path)
    assert back.manifest == arts[0].manifest


def test_bad_calls_write_nothing_and_speak_of_parameters(samples, tmp_path) -> None:
    x, _ = samples
    with pytest.raises(EdgekitError, match="input_shape=") as err:
        edgekit.export(tiny(), "x86-server-cpu", "fp32", out=tmp_path / "a")
    assert "--" not in str(err.value).split("(")[0]
    with pytest.raises(EdgekitError, match=r"opset 12 is outside target x86-server-cpu's range 17-21"):
        edgekit.export(tiny(), ["x86-server-cpu", "pixel-8"], calib=x, opset=12, out=tmp_path / "b")
    with pytest.raises(EdgekitError, match="needs calibration data: give calib="):
        edgekit.export(tiny(), "x86-server-cpu", "int8", input_shape=(1, 3, 4, 4), out=tmp_path / "c")
    with pytest.raises(EdgekitError, match=r"unknown option.* of backend 'onnxruntime': 'no_such_option'"):
        edgekit.export(tiny(), "x86-server-cpu", calib=x, out=tmp_path / "d", no_such_option=1)
    with pytest.raises(EdgekitError, match="progress="):
        edgekit.export(tiny(), "x86-server-cpu", calib=x, out=tmp_path / "e", progress=3)
    assert list(tmp_path.iterdir()) == []


def test_an_opset_in_range_is_the_opset_exported(samples, tmp_path) -> None:
    x, _ = samples
    art = edgekit.export(tiny(), "x86-server-cpu", "fp32", calib=x, opset=18, out=tmp_path / "o18")
    assert art.manifest["onnx_export"]["opset"] == 18


def test_cli_exports_several_targets_and_an_opset(cli, samples, tmp_path) -> None:
    x, y = samples
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = cli("export", "zoo:digits-student", "--target", "x86-server-cpu,raspberry-pi-5", "--precision", "fp32",
            "--opset", "18", "--out", tmp_path / "multi")
    assert r.rc == 0, r.err
    folders = sorted(p.name for p in (tmp_path / "multi").iterdir())
    assert folders == ["digits-student-raspberry-pi-5-fp32", "digits-student-x86-server-cpu-fp32"]
    assert r.err.count("to ONNX") == 1
    manifest = json.loads((tmp_path / "multi" / folders[0] / "manifest.json").read_text())
    assert manifest["onnx_export"]["opset"] == 18
    r = cli("export", "zoo:digits-student", "--target", "x86-server-cpu", "--opset", "99", "--out", tmp_path / "x")
    assert r.rc == 2 and "opset 99 is outside target x86-server-cpu's range 17-21" in r.err
    assert not (tmp_path / "x").exists()


def test_factories_are_named_after_their_model(tmp_path, monkeypatch) -> None:
    for pkg, cls in (("facta", "AlphaNet"), ("factb", "BetaNet")):
        (tmp_path / f"{pkg}.py").write_text(
            "from torch import nn\n"
            f"class {cls}(nn.Module):\n    def forward(self, x):\n        return x\n"
            f"def make():\n    return {cls}()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from edgekit.models.source import load_model

    assert load_model("facta:make", (1, 3)).name == "AlphaNet"
    assert load_model("factb:make", (1, 3)).name == "BetaNet"


def test_diagnose_from_python_takes_in_memory_data(samples) -> None:
    x, _ = samples
    report = edgekit.diagnose(tiny(), "x86-server-cpu", calib=np.concatenate([x, x]), verify=2)
    assert report["target"] == "x86-server-cpu" and report["calibration"]["source"].startswith("in-memory array")
    assert report["ranking"] and {r["layer"] for r in report["ranking"]} <= {r["layer"] for r in report["layers"]}
