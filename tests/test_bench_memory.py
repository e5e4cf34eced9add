"""Peak memory follows the model; fixed-batch artifacts skip batch sizes they cannot take; a new device kind
plugs in through the Device interface alone. Models here are ONNX MLPs built directly, with weights that
are really used (MatMul inputs), so their size is known exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.bench.harness import run_bench
from edgekit.bench.records import BenchConfig

MB = 2**20
QUICK = BenchConfig(warmup=1, warmup_seconds=0.0, iters=10, min_seconds=0.1, rounds=2)


def mlp_onnx(path: Path, hidden: int, d: int = 1024, classes: int = 10, batch: int | str = "batch") -> int:
    """x[batch, d] -> MatMul(d x hidden) -> Relu -> MatMul(hidden x classes); returns the weight bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((d, hidden)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return w1.nbytes + w2.nbytes


def export_fp32(onnx_path: Path, out: Path) -> Path:
    from edgekit.export import ExportPipeline

    with ExportPipeline(str(onnx_path)) as pipeline:
        return pipeline.export("x86-server-cpu", "fp32", out=out).path


@pytest.fixture(scope="module")
def mlps(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    root = tmp_path_factory.mktemp("bench-mlp")
    out = {}
    for name, hidden, batch in (("small", 256, "batch"), ("large", 16384, "batch"), ("fixed", 64, 1)):
        size = mlp_onnx(root / f"{name}.onnx", hidden, batch=batch)
        out[name] = (export_fp32(root / f"{name}.onnx", root / f"art-{name}"), size)
    return out


def test_peak_memory_follows_the_model(mlps):
    (small, small_bytes), (large, large_bytes) = mlps["small"], mlps["large"]
    diff_mb = (large_bytes - small_bytes) / MB
    assert diff_mb > 60  # tens of MB of weights between the two
    result = run_bench([small, large], QUICK)
    assert result.ok, result.failures
    peak = {Path(r["artifact"]).name: r["peak_rss_mb"] for r in result.records}
    grew = peak["art-large"] - peak["art-small"]
    print(f"weights differ by {diff_mb:.1f} MB; peak RSS small {peak['art-small']:.1f} MB, "
          f"large {peak['art-large']:.1f} MB, difference {grew:.1f} MB")
    # most of the weight difference shows up (loading may briefly hold the file and the tensors: up to ~2x)
    assert grew >= 0.7 * diff_mb
    assert grew <= 4.0 * diff_mb  # and it is the model's memory, not something else that was counted
    # the baseline is read after the runtime is imported: the interpreter and ONNX Runtime are not counted
    small_rec = next(r for r in result.records if Path(r["artifact"]).name == "art-small")
    assert small_rec["peak_rss_mb"] < small_rec["rss_before_load_mb"]
    for r in result.records:
        assert r["model_bytes"] == pytest.approx({"art-small": small_bytes, "art-large": large_bytes}[
            Path(r["artifact"]).name], rel=0.01)
        # no labels and no --eval: agreement with the FP32 source (the given .onnx) on seeded noise
        assert r["agreement"] == 1.0 and r["accuracy"] is None and "random" in r["eval"]["data"]


def test_fixed_batch_artifact_skips_other_batch_sizes(mlps, cli, tmp_path):
    fixed, _ = mlps["fixed"]
    r = cli("bench", fixed, "--batch", "1,4", "--iters", "5", "--min-seconds", "0.05", "--warmup-seconds", "0",
            "--rounds", "1", "--no-progress", "--json", tmp_path / "r.json")
    assert r.rc == 0, r.err
    assert "batch 4 skipped" in r.err and "fixed batch of 1" in r.err
    import json

    status = {rec["batch"]: rec["status"] for rec in json.loads((tmp_path / "r.json").read_text())}
    assert status == {1: "ok", 4: "skipped"}


def test_a_new_device_kind_plugs_in_without_touching_the_harness(mlps, monkeypatch):
    """What issue 9's ssh/adb devices will do: register a kind; the harness only calls the interface."""
    from edgekit.bench import devices

    calls: list[str] = []

    class RecordingDevice(devices.LocalDevice):
        kind = "recording"

        def __init__(self, address: str = "") -> None:
            super().__init__()
            self.address = address

        def open_worker(self):
            calls.append("open_worker")
            return super().open_worker()

        def stage(self, local: Path) -> str:
            calls.append(f"stage {Path(local).suffix or 'folder'}")
            return super().stage(local)

        def fetch(self, remote: str, local_dir: Path) -> Path:
            calls.append("fetch")
            return super().fetch(remote, local_dir)

    monkeypatch.setitem(devices._DEVICE_KINDS, "recording", RecordingDevice)
    small, _ = mlps["small"]
    records = run_bench([small], QUICK, device=devices.make_device("recording:board-7")).records
    assert [r["status"] for r in records] == ["ok"]
    assert records[0]["device"]["kind"] == "recording" and records[0]["device"]["name"] == "recording:board-7"
    assert calls == ["open_worker", "stage folder", "stage .npy", "fetch"]


def test_torch_eager_needs_a_torch_model(mlps):
    from edgekit.errors import EdgekitError
    from edgekit.export import ExportPipeline

    onnx_path = mlps["small"][0].parent / "small.onnx"
    with ExportPipeline(str(onnx_path)) as pipeline, pytest.raises(EdgekitError, match="needs a torch model"):
        pipeline.export("host-torch-cpu", out=onnx_path.parent / "torch-small")
    assert not (onnx_path.parent / "torch-small").exists()


def test_reference_artifact_and_sequential_mode(mlps):
    small, _ = mlps["small"]
    cfg = BenchConfig(warmup=1, warmup_seconds=0.0, iters=5, min_seconds=0.05, rounds=2, interleave=False)
    result = run_bench([small, mlps["fixed"][0]], cfg, reference=small)
    assert result.ok, result.failures
    by = {Path(r["artifact"]).name: r for r in result.records}
    assert by["art-small"]["eval"]["reference"] == f"reference artifact {small}"
    assert by["art-small"]["agreement"] == 1.0 and by["art-small"]["sqnr_db"] is None
    assert by["art-small"]["settings"]["interleaved"] is False
    # every artifact is compared with the one reference: a different model barely agrees with it
    assert by["art-fixed"]["eval"]["reference"] == f"reference artifact {small}"
    assert by["art-fixed"]["agreement"] < 0.5


def test_missing_source_model_falls_back_to_an_fp32_artifact(tmp_path):
    """The manifest names a source model that is gone from this machine: another fp32 artifact of it in the
    run serves (never the artifact itself: agreeing with itself would say nothing)."""
    mlp_onnx(tmp_path / "gone.onnx", 32)
    art = export_fp32(tmp_path / "gone.onnx", tmp_path / "art-gone")
    (tmp_path / "gone.onnx").unlink()
    alone = run_bench([art], QUICK).records[0]
    assert alone["agreement"] is None and "no fp32 artifact of it" in alone["eval"]["reference"]
    twin = tmp_path / "art-gone-twin"
    shutil.copytree(art, twin)
    result = run_bench([art, twin], QUICK)
    assert result.ok, result.failures
    rec = result.records[0]
    assert rec["agreement"] == 1.0 and "source model not loadable here" in rec["eval"]["reference"]
    assert f"fp32 artifact {twin} " in rec["eval"]["reference"]
    assert f"fp32 artifact {art} " in result.records[1]["eval"]["reference"]  # each the other, never itself
