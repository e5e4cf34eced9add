from __future__ import annotations

import onnx
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.graph.onnx_export import export_to_onnx, verify_against_reference
from edgekit.models.source import SourceModel, load_model, parse_input_shape


def _mlp(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def test_export_is_self_contained_named_and_checked(tmp_path):
    src = load_model(_mlp(0), (1, 3, 2, 2))
    m = export_to_onnx(src, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no .onnx.data beside it
    assert m.inputs[0].name == "input" and m.inputs[0].shape[1:] == (3, 2, 2)
    assert m.check["max_abs_err"] and max(m.check["max_abs_err"].values()) < 1e-5
    assert 17 <= m.opset <= 21
    onnx.checker.check_model(onnx.load(str(m.path)))


def test_mismatch_over_tolerance_names_the_output(tmp_path):
    export_to_onnx(load_model(_mlp(0), (1, 3, 2, 2)), tmp_path / "a.onnx")
    other = SourceModel("torch", "b", "b", (1, 3, 2, 2), module=_mlp(1).eval())
    with pytest.raises(EdgekitError, match=r"output '.+' max abs error .* > tolerance .* on random inputs"):
        verify_against_reference(other, tmp_path / "a.onnx")


def test_real_inputs_are_checked_too(tmp_path):
    src = load_model(_mlp(0), (1, 3, 2, 2))
    m = export_to_onnx(src, tmp_path / "m.onnx", real_inputs=torch.rand(5, 3, 2, 2).numpy())
    assert m.check["inputs"] == {"random": 8, "real": 5}


@pytest.mark.parametrize("text, shape", [("1x3x224x224", (1, 3, 224, 224)), ("2X8", (2, 8))])
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1x", "1x-3", "axb", "1,3,4"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(EdgekitError, match="malformed input shape"):
        parse_input_shape(text)


def test_export_ships_no_debug_metadata_and_honours_the_opset_range(tmp_path):
    """torch's exporter stores stack traces (with this machine's paths) on every node; artifacts must not."""
    src = load_model(_mlp(0), (1, 3, 2, 2))
    m = export_to_onnx(src, tmp_path / "m.onnx", opset_range=(17, 18))
    model = onnx.load(str(m.path))
    assert all(len(n.metadata_props) == 0 and not n.doc_string for n in model.graph.node)
    assert __file__.encode() not in m.path.read_bytes()
    assert m.opset == 18  # torch emits a newer opset by default: converted into the target's range
    onnx.checker.check_model(model)
