"""Shared fixtures: an isolated zoo cache, the CLI run in-process, and user models built by the tests
themselves (saved as .onnx and .pt2, with 3x32x32 input, residual and depthwise layers)."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _zoo_cache(tmp_path_factory):
    """Zoo weights are trained once per test session, never read from the user's cache; the CLI runs a test
    starts get a temp folder of this session's own, so leftovers of other processes' killed runs (which the
    next run removes and reports in one more stderr line) never reach a test that counts stderr lines."""
    os.environ["EDGEKIT_CACHE"] = str(tmp_path_factory.mktemp("edgekit-cache"))
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))
    yield


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """`edgekit ARGS` in this process (fast); argparse's SystemExit becomes the exit code."""
    from edgekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:
                rc = int(exc.code or 0)
    finally:
        os.chdir(old)
    return CliResult(rc, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


@dataclass
class UserModels:
    small_onnx: Path
    large_pt2: Path
    calib: Path  # .npz with x and y, digits_rgb train split
    eval: Path  # .npz with x and y, digits_rgb test split
    small_params: int
    large_params: int


@pytest.fixture(scope="session")
def user_models(tmp_path_factory) -> UserModels:
    """A trained ~10 k-parameter model given as .onnx and a trained ~1.2 M-parameter one as .pt2."""
    import torch

    from edgekit.data import testmodels, zoo

    root = tmp_path_factory.mktemp("user-models")
    torch.manual_seed(0)
    small = testmodels.train_on_digits_rgb(testmodels.small_resdw(), epochs=15)
    torch.manual_seed(1)
    large = testmodels.train_on_digits_rgb(testmodels.large_resdw(), epochs=4)
    example = torch.randn(1, 3, 32, 32)
    onnx_path = root / "small_resdw.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(small, (example,), str(onnx_path), dynamo=True, external_data=False)
    pt2_path = root / "large_resdw.pt2"
    torch.export.save(torch.export.export(large, (example,)), str(pt2_path))
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    np.savez(root / "calib.npz", x=train.x, y=train.y)
    np.savez(root / "eval.npz", x=test.x, y=test.y)
    return UserModels(onnx_path, pt2_path, root / "calib.npz", root / "eval.npz",
                      zoo.count_params(small), zoo.count_params(large))


def no_partial_left(folder: Path) -> bool:
    """True when an export left no staging folder behind."""
    return not any(p.name.startswith(".") and ".partial-" in p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training results are bit-reproducible for a given thread count; one thread also shares the 2 cores fairly.
    Test modules that train take it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def export_resdw_net(path: Path, widths: tuple[int, ...], trained_bn: bool = False) -> Path:
    """A seeded `testmodels.resdw_net(widths)` exported (torch dynamo, one file) to `path`: the small
    depthwise-separable CNN the int8 technique tests run on. `trained_bn` gives its BatchNorms the uneven
    channel statistics of a trained net, as real layers have."""
    import torch

    from edgekit.data import testmodels

    torch.manual_seed(0)
    model = testmodels.resdw_net(widths).eval()
    if trained_bn:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.copy_(torch.rand(m.num_features) * 2 + 0.05)
                    m.running_mean.copy_(torch.randn(m.num_features) * 0.2)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=True, external_data=False)
    return path


def write_tiny_bert(folder: Path, words: int = 990, tweak=None) -> Path:
    """A BertConfig(hidden 32, 2 layers, 2 heads, vocab 1000) model with a word-piece tokenizer built from the
    shipped calibration sentences, written with save_pretrained into `folder`: the transformer tests' fast
    stand-in for a real encoder. `tweak(model)` adjusts the weights before saving (under no_grad)."""
    import re

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from edgekit.data.text import sentences_path

    found = sorted({w for line in sentences_path("train").read_text().lower().split("\n")
                    for w in re.findall(r"[a-z]+", line)})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *found[:words]]) + "\n")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    if tweak is not None:
        with torch.no_grad():
            tweak(model)
    model.save_pretrained(folder)
    # the vocabulary handed over as a mapping: built from vocab_file, this transformers version's fast
    # tokenizer keeps only the five special tokens and reads every word as [UNK]
    vocab = (folder / "vocab.txt").read_text().split("\n")[:-1]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return folder

