from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.data.calibration import Ranges, load_data
from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization, resolve_method


def test_zoo_digits_default_is_300_seeded_samples_with_provenance():
    a = load_data("zoo:digits")
    b = load_data("zoo:digits")
    assert a.count == 300 and a.available == 1347 and a.source == "zoo:digits:train"
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    assert a.provenance()["preprocessing"]["normalize"] == {"mean": 0.5, "std": 0.5}
    assert load_data("zoo:digits", max_samples=50).count == 50
    assert load_data("zoo:digits:test", max_samples=None).count == 450


def test_npz_and_npy_sets(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 3)
    np.save(tmp_path / "d.npy", x)
    a = load_data(str(tmp_path / "d.npz"))
    b = load_data(str(tmp_path / "d.npy"), max_samples=10)
    assert a.count == 40 and a.y is not None and a.selection == "all 40"
    assert b.count == 10 and b.y is None and "seeded random" in b.selection
    assert a.sha256 != b.sha256


def test_npz_without_x_must_name_the_models_input(tmp_path):
    from edgekit.common.io import image_input
    from edgekit.data.calibration import checked

    np.savez(tmp_path / "z.npz", z=np.zeros((3, 2), dtype=np.float32))
    cset = load_data(str(tmp_path / "z.npz"))
    with pytest.raises(EdgekitError, match=r"lacks input\(s\) input of the model \(it has: z\)"):
        checked(cset, [image_input((1, 2))])
    np.savez(tmp_path / "named.npz", input=np.ones((3, 2), dtype=np.float32))
    assert checked(load_data(str(tmp_path / "named.npz")), [image_input((1, 2))]).named["input"].shape == (3, 2)


@pytest.mark.parametrize("content, message", [
    ({"y": np.zeros(3)}, "has no input arrays"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, "'y' has 2 labels but 'x' has 3 samples"),
    ({"x": np.zeros((0, 2))}, "is empty"),
])
def test_bad_data_files(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(str(tmp_path / "bad.npz"))


def test_methods_and_recipes():
    assert resolve_method("entropy")[1]["num_bins"] == 2048
    assert resolve_method("percentile", {"percentile": 99.9})[1]["percentile"] == 99.9
    method, opts = resolve_method("percentile-99.99")  # a recipe shipped in calibration/
    assert method == "percentile" and opts["percentile"] == 99.99
    with pytest.raises(EdgekitError, match="unknown option"):
        resolve_method("minmax", {"percentile": 99})
    with pytest.raises(EdgekitError, match="from 90 to 100"):
        resolve_method("percentile", {"percentile": 50})


@pytest.fixture(scope="module")
def prepared_student(tmp_path_factory):
    from edgekit.graph.onnx_export import export_to_onnx
    from edgekit.models.source import load_model

    root = tmp_path_factory.mktemp("calib")
    onnx_model = export_to_onnx(load_model("zoo:digits-student"), root / "m.onnx")
    return prepare_for_quantization(onnx_model.path, root / "prepared.onnx")


def test_three_methods_give_different_ranges_and_roundtrip(prepared_student, tmp_path):
    cset = load_data("zoo:digits", max_samples=120)
    ranges = {m: compute_ranges(prepared_student, cset, m) for m in ("minmax", "entropy", "percentile")}
    mm = ranges["minmax"].tensors
    for method in ("entropy", "percentile"):
        other = ranges[method].tensors
        assert set(other) == set(mm)
        widths_differ = [k for k in mm if abs((other[k][1] - other[k][0]) - (mm[k][1] - mm[k][0])) > 1e-3]
        assert widths_differ, f"{method} gave exactly the min-max ranges"
        # clipping methods never widen the observed range of a ReLU output
        relu = [k for k in mm if k.startswith("relu")]
        assert all(other[k][1] <= mm[k][1] + 1e-5 for k in relu)
    r = ranges["minmax"]
    assert r.calibration["samples"] == 120 and len(r.graph_sha256) == 64
    r.save(tmp_path / "r.json")
    assert Ranges.load(tmp_path / "r.json").tensors == r.tensors  # JSON floats round-trip exactly
    assert r.to_ort().data["input"].range_value[0] == pytest.approx(-1.0)
