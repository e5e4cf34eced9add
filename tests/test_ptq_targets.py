"""Int8 PTQ techniques reach the pixel-8 (TFLite full-integer) and jetson (TensorRT Q/DQ) artifacts through the
normal export path, and a technique that cannot reach a target says so in the manifest and on the console.

The model is a small depthwise-separable net with the BN statistics of a trained one (uneven channel scales,
nonzero means), so int8 shifts channel means and bias correction has something to correct. Every artifact is
made by the real converters (onnx2tf + TensorFlow's TFLiteConverter, ONNX Runtime's quantizer) and read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import export_resdw_net, no_partial_left, run_cli

pytest.importorskip("tensorflow")
pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:

    import torch

    from edgekit.data import testmodels

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ptq-targets")
    export_resdw_net(root / "toy.onnx", (8, 16, 32), trained_bn=True)
    x = testmodels.digits_rgb("train").x
    np.save(root / "calib.npy", x[:64])
    np.save(root / "eval.npy", x[64:160])
    return {"root": root, "model": root / "toy.onnx", "calib": root / "calib.npy", "eval": root / "eval.npy"}


@pytest.fixture(scope="module")
def pixel8(toy) -> dict[str, Path]:
    """Plain int8, bias correction (+ range-mse, which cannot reach TFLite) and learned rounding, for pixel-8,
    from one pipeline so the ONNX export is made once; the same calibration and check data for all three."""
    from edgekit.export import ExportPipeline

    root = toy["root"] / "pixel-8"
    arts = {}
    with ExportPipeline(str(toy["model"])) as pipeline:
        for name, techniques in (("plain", ()), ("bc", ("bias-correction", "range-mse")), ("ada", ("adaround",))):
            arts[name] = pipeline.export("pixel-8", "int8", calib=str(toy["calib"]), eval_data=str(toy["eval"]),
                                         techniques=techniques, out=root / name).path
    return arts


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _tflite_biases(folder: Path) -> list[np.ndarray]:
    """The dequantized int32 biases of the weighted ops of a .tflite, in op order."""
    from ai_edge_litert import schema_py_generated as schema

    from edgekit.backends.tflite_inspect import WEIGHTED_OPS, read_tflite

    buf = (folder / "model.tflite").read_bytes()
    root = schema.Model.GetRootAs(buf, 0)
    graph = root.Subgraphs(0)
    out = []
    for op in read_tflite(buf).ops:
        if op.name not in WEIGHTED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        t = graph.Tensors(op.inputs[2])
        data = root.Buffers(t.Buffer()).DataAsNumpy()
        scale = t.Quantization().ScaleAsNumpy().astype(np.float64)
        out.append(np.frombuffer(data.tobytes(), np.int32).astype(np.float64) * scale)
    return out


def test_bias_correction_reaches_the_tflite_biases_and_range_mse_says_it_cannot(pixel8):
    plain, bc = _manifest(pixel8["plain"]), _manifest(pixel8["bc"])
    steps = bc["ptq_techniques"]
    assert [s["technique"] for s in steps] == ["none (plain PTQ)", "bias-correction"]
    assert steps[1]["layers_corrected"] > 0 and steps[1]["largest_shift"] > 0
    skipped = bc["ptq_techniques_not_applied"]
    assert [s["technique"] for s in skipped] == ["range-mse"]
    assert "representative dataset" in skipped[0]["why"] and skipped[0]["why"].startswith("not applied")
    assert "stand-in" in bc["ptq_techniques_measured_on"]
    # the converter's own calibration, not edgekit's ranges (which it does not take)
    assert "ranges_file" not in bc["calibration"] and "representative dataset" in bc["calibration"]["method"]
    assert "ptq_techniques" not in plain
    # the corrected biases are in the file: the per-layer change the correction made, up to int32 rounding
    before, after = _tflite_biases(pixel8["plain"]), _tflite_biases(pixel8["bc"])
    assert len(before) == len(after) > 0
    moved = max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True))
    assert moved == pytest.approx(steps[1]["largest_shift"], rel=0.05, abs=1e-3)
    assert bc["verification"]["agreement"] >= 0.9


def test_learned_rounding_integers_are_the_tflite_integers(pixel8):
    m = _manifest(pixel8["ada"])
    step = m["ptq_techniques"][-1]
    assert step["technique"] == "adaround" and step["layers_rounded"] >= 5
    assert any(layer["flipped"] > 0 for layer in step["per_layer"].values())  # not nearest rounding again
    grid = m["learned_rounding_in_artifact"]
    assert grid["layers_matched"] == step["layers_rounded"] and grid["layers_unmatched"] == []
    assert grid["weights_differing"] == 0 and grid["weights_compared"] > 1000
    # the plain file's integers are nearest rounding: they differ from the learned ones
    from edgekit.backends.tflite_inspect import int8_weights

    learned, plain = int8_weights(pixel8["ada"] / "model.tflite"), int8_weights(pixel8["plain"] / "model.tflite")
    assert len(learned) == len(plain)
    assert sum(int((a.values != b.values).sum()) for a, b in zip(learned, plain, strict=True)) > 0


def test_jetson_qdq_graph_carries_bias_correction_and_mse_ranges(toy):
    import onnx
    from onnx import numpy_helper

    from edgekit.export import ExportPipeline

    root = toy["root"] / "jetson"
    with ExportPipeline(str(toy["model"])) as pipeline:
        arts = {name: pipeline.export("jetson-orin-nano", "int8", calib=str(toy["calib"]),
                                      eval_data=str(toy["eval"]), techniques=t, out=root / name).path
                for name, t in (("plain", ()), ("both", ("range-mse", "bias-correction")))}
    m = _manifest(arts["both"])
    assert [s["technique"] for s in m["ptq_techniques"]][1:] == ["range-mse", "bias-correction"]
    assert "ptq_techniques_not_applied" not in m and "ptq_techniques_measured_on" not in m
    assert m["calibration"]["method"] == "mse-search"
    graphs = {k: onnx.load(str(v / "model.onnx")) for k, v in arts.items()}

    def floats(model, op: str) -> dict[str, np.ndarray]:
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return {n.name: inits[n.input[2]] for n in model.graph.node
                if n.op_type == op and len(n.input) > 2 and n.input[2] in inits}

    plain_b, both_b = floats(graphs["plain"], "Conv"), floats(graphs["both"], "Conv")
    assert plain_b and plain_b.keys() == both_b.keys()  # TensorRT's float biases, one per conv
    moved = max(float(np.abs(both_b[k] - plain_b[k]).max()) for k in plain_b)
    assert moved == pytest.approx(m["ptq_techniques"][-1]["largest_shift"], rel=1e-3)
    # the clipped ranges are the activation scales of the Q/DQ graph TensorRT builds from
    scales = {k: sorted(float(numpy_helper.to_array(t)) for t in g.graph.initializer
                        if t.name.endswith("_scale") and numpy_helper.to_array(t).size == 1)
              for k, g in graphs.items()}
    assert scales["both"] != scales["plain"]


def test_technique_that_cannot_reach_any_input_is_reported_on_the_console(toy, tmp_path):
    out = tmp_path / "mse"
    r = run_cli("export", toy["model"], "-t", "pixel-8", "--calib", toy["calib"], "--eval", toy["eval"],
                "--range-mse", "--out", out)
    assert r.rc == 0, r.err
    m = _manifest(out)
    assert [s["technique"] for s in m["ptq_techniques_not_applied"]] == ["range-mse"]
    assert "ptq_techniques" not in m  # nothing applied, nothing measured as if it had
    assert "technique  range-mse: not applied" in r.out


def test_backend_no_technique_reaches_is_a_one_line_error(toy, tmp_path):
    r = run_cli("export", toy["model"], "-t", "android-ort-mobile", "-p", "int8", "--calib", toy["calib"],
                "--adaround", "--out", tmp_path / "x")
    errors = [ln for ln in r.err.splitlines() if "error:" in ln]
    assert r.rc == 2 and len(errors) == 1 and "reach backends" in errors[0] and "tflite" in errors[0], r.err
    assert not (tmp_path / "x").exists() and no_partial_left(tmp_path)


def test_declared_gaps_name_only_missing_inputs() -> None:
    from edgekit.backends.registry import backend_names, get_spec
    from edgekit.quant.ptq_improve import CHANGES, TECHNIQUES

    assert set(CHANGES) == set(TECHNIQUES)
    for name in backend_names():
        spec = get_spec(name)
        assert set(spec.ptq_inputs) <= set(CHANGES.values())
        assert all(k not in spec.ptq_inputs for k, _ in spec.ptq_gaps)
        assert (spec.qdq_standin is None) == (spec.qdq_style is not None or not spec.ptq_inputs)
