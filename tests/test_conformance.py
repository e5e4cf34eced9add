"""Every registered backend x every precision it declares, round-tripped through the same path a user takes:
export, load the folder back (files checked against their sha256), run it with its own runner, and check
that the manifest's verification is what running it gives.

Parametrised from the registry (timm's rule: what is registered is tested). A backend whose device compiler
is missing here (TensorRT's engine build, Ascend's atc) still writes and checks its ONNX with ONNX Runtime,
as it does for users; only what truly cannot run here is skipped, with the reason. One ExportPipeline is
shared by every case, so the ONNX export, the ranges and the FP32 reference are made once.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgekit.backends import registry
from edgekit.errors import MissingRuntimeError
from edgekit.common.metrics import compare
from edgekit.targets import Target, list_targets

INPUT_SHAPE = (1, 3, 16, 16)
#: the least output SQNR (dB) against FP32 each precision must keep on the tiny model
MIN_SQNR = {"fp32": 40.0, "fp16": 25.0, "mixed": 15.0, "int8": 8.0, "dynamic-int8": 8.0, "int4-weight": 8.0}

CASES = [(b, p) for b in registry.backend_names() for p in registry.backend_precisions(b)]


def target_for(backend: str, precision: str) -> Target:
    """A built-in target that runs `backend` (as its default or another of its backends), its precisions
    widened to the backend's declared ones: a backend is tested on all it declares, not only on what one
    device profile lists."""
    for t in list_targets():
        if backend in t.backends:
            tgt = t.with_backend(backend)
            if precision not in tgt.precisions:
                tgt = dataclasses.replace(tgt, precisions=registry.backend_precisions(backend))
            return tgt
    pytest.skip(f"no built-in target runs backend '{backend}'")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import torch

    from edgekit.data import testmodels
    from edgekit.export import ExportPipeline

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = testmodels.resdw_net(widths=(8, 16), num_classes=10).eval()
    with ExportPipeline(model, INPUT_SHAPE) as p:
        yield p


@pytest.fixture(scope="module")
def data():
    from edgekit.data import testmodels
    from edgekit.data.datasets import as_dataset

    split = testmodels.digits_rgb("train", size=16)
    return as_dataset((split.x[:64], split.y[:64]), what="calib=")


def test_every_backend_declares_precisions_the_targets_know() -> None:
    from edgekit.targets import PRECISIONS

    assert CASES and all(p in PRECISIONS for _, p in CASES)


@pytest.mark.parametrize("backend, precision", CASES, ids=[f"{b}-{p}" for b, p in CASES])
def test_backend_round_trip(backend, precision, pipeline, data, tmp_path) -> None:
    import edgekit

    try:
        registry.exporter_class(backend)
    except MissingRuntimeError as exc:
        pytest.skip(f"runtime not installed here: {exc}")
    target = target_for(backend, precision)
    art = pipeline.export(target, precision, calib=data, out=tmp_path / "art")

    back = edgekit.load_artifact(art.path)  # every file listed, with its sha256
    m = back.manifest
    assert (m["backend"], m["precision"], m["target"]) == (backend, precision, target.name)
    assert (art.path / m["model_file"]).is_file()
    v = m["verification"]
    assert v["samples"] == data.count and v["data_sha256"] == data.sha256

    with back.runner(threads=1) as runner:
        got = [runner.infer(data.x[i : i + 1])[0] for i in range(data.count)]
    got = np.concatenate(got)
    assert got.shape == (data.count, 10) and np.isfinite(got).all()
    reference = pipeline.reference(data)[0]
    again = compare(reference, got, data.y)
    # the manifest says what running the artifact gives
    assert again["agreement"] == pytest.approx(v["agreement"], abs=1.5 / data.count)
    sqnr = again["sqnr_db"] if again["sqnr_db"] is not None else float("inf")  # None: exact
    assert sqnr >= MIN_SQNR[precision], f"{backend} {precision}: output SQNR {sqnr:.1f} dB"
