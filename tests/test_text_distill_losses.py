"""Transformer distillation terms, layer maps, student configs and data scoring, against values worked out
by hand (with `math`, not torch)."""

from __future__ import annotations

import math

import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.train.distill.data_score import ScheduledSampler, score_samples, text_degenerate
from edgekit.train.distill.layer_map import layer_map
from edgekit.train.distill.student import parse_student_config
from edgekit.train.distill.text_losses import (
    attention_loss,
    embedding_loss,
    group_heads,
    hidden_cosine,
    mean_pool,
    soften,
)

# one sentence, 2 real tokens + 1 pad; one head. Student rows (1/2, 1/2) and (1, 0); teacher rows (3/4, 1/4)
# and (1/4, 3/4). The pad row (query 3) differs wildly and must not count.
S_ATT = torch.tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]])
T_ATT = torch.tensor([[[[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [1.0, 0.0, 0.0]]]])
MASK = torch.tensor([[1, 1, 0]])


def test_attention_mse_sums_keys_and_skips_padded_queries():
    row1 = (0.5 - 0.75) ** 2 + (0.5 - 0.25) ** 2  # 0.125
    row2 = (1.0 - 0.25) ** 2 + (0.0 - 0.75) ** 2  # 1.125
    assert float(attention_loss(S_ATT, T_ATT, MASK, "mse")) == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_attention_kl_per_row_teacher_to_student():
    row1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    # the student's second row puts 0 on key 2: clamped at 1e-12, so the term is 0.75 * ln(0.75 / 1e-12)
    row2 = 0.25 * math.log(0.25 / 1.0) + 0.75 * math.log(0.75 / 1e-12)
    assert float(attention_loss(S_ATT, T_ATT, MASK, "kl")) == pytest.approx((row1 + row2) / 2, rel=1e-5)


def test_attention_temperature_softens_both_maps_and_scales_kl_by_t_squared():
    # T = 2: (3/4, 1/4) -> (sqrt 3, 1) / (sqrt 3 + 1); (1/2, 1/2) stays
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    assert soften(torch.tensor([0.75, 0.25]), 2.0).tolist() == pytest.approx(p, rel=1e-6)
    s = torch.tensor([[[[0.5, 0.5]]]])
    t = torch.tensor([[[[0.75, 0.25]]]])
    expected = (p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)) * 4
    assert float(attention_loss(s, t, torch.tensor([[1]]), "kl", 2.0)) == pytest.approx(expected, rel=1e-5)


def test_teacher_heads_are_averaged_in_groups_down_to_the_student_count():
    # teacher 4 heads, student 2: student head 0 <- mean of teacher heads 0, 1; head 1 <- heads 2, 3
    t = torch.tensor([[0.75, 0.25], [0.25, 0.75], [1.0, 0.0], [0.0, 1.0]]).reshape(1, 4, 1, 2)
    assert group_heads(t, 2).reshape(2, 2).tolist() == [[0.5, 0.5], [0.5, 0.5]]
    s = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).reshape(1, 2, 1, 2)
    # head 0 matches exactly; head 1: (1 - 0.5)^2 + (0 - 0.5)^2 = 0.5; mean over 2 heads
    assert float(attention_loss(s, t, torch.tensor([[1]]), "mse")) == pytest.approx(0.25, rel=1e-6)
    # 3 teacher heads cannot be grouped into 2: both sides averaged over all heads
    t3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]).reshape(1, 3, 1, 2)
    assert float(attention_loss(s, t3, torch.tensor([[1]]), "mse")) == pytest.approx(
        (0.75 - 0.5) ** 2 + (0.25 - 0.5) ** 2, rel=1e-6)


def test_hidden_cosine_masks_padding():
    # token 1: s (1, 0) vs t (1, 1): cos = 1/sqrt 2; token 2: s (0, 2) vs t (0, 1): cos = 1; token 3 is padding
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [-5.0, 5.0]]])
    expected = ((1 - 1 / math.sqrt(2)) + 0.0) / 2
    assert float(hidden_cosine(s, t, MASK)) == pytest.approx(expected, rel=1e-6)


def test_mean_pool_and_embedding_losses():
    h = torch.tensor([[[1.0, 3.0], [3.0, 1.0], [100.0, 100.0]]])
    assert mean_pool(h, MASK).tolist() == [[2.0, 2.0]]
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert float(embedding_loss(s, t, "cosine")) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    assert float(embedding_loss(s, t, "mse")) == pytest.approx(0.5)
    with pytest.raises(EdgekitError, match="output loss"):
        embedding_loss(s, t, "l1")


def test_layer_maps():
    assert layer_map("uniform", 3, 6).pairs == ((0, 0), (1, 2), (2, 4), (3, 6))
    assert layer_map("uniform", 4, 6, embeddings=False).pairs == ((1, 2), (2, 3), (3, 4), (4, 6))
    assert layer_map("last", 3, 6).blocks == ((1, 4), (2, 5), (3, 6))
    assert layer_map("3=6, 1=1", 3, 6).pairs == ((0, 0), (1, 1), (3, 6))
    with pytest.raises(EdgekitError, match="out of range"):
        layer_map("1=7", 3, 6)
    with pytest.raises(EdgekitError, match="malformed"):
        layer_map("first", 3, 6)
    with pytest.raises(EdgekitError, match="twice"):
        layer_map("1=2,1=3", 3, 6)
    with pytest.raises(EdgekitError, match="no deeper"):
        layer_map("last", 7, 6)


def test_student_config_parsing():
    spec = parse_student_config("layers=2,hidden=64,heads=4,intermediate=128,vocab=500")
    assert (spec.layers, spec.hidden, spec.heads, spec.intermediate, spec.vocab) == (2, 64, 4, 128, "500")
    with pytest.raises(EdgekitError, match="not divisible"):
        parse_student_config("hidden=100,heads=6")
    with pytest.raises(EdgekitError, match="malformed student config entry 'depth=3'"):
        parse_student_config("depth=3")
    with pytest.raises(EdgekitError, match="whole number"):
        parse_student_config("layers=three")


def test_scoring_drops_duplicates_degenerate_and_inconsistent_samples():
    e = torch.eye(6)
    e[3] = e[0] + 0.01  # a near-duplicate of sample 0 (the earlier one stays)
    aug = e.clone()
    aug[5] = torch.ones(6)  # sample 5 changes meaning under augmentation
    degenerate = {"too_short": torch.tensor([False, False, True, False, False, False])}
    scores = score_samples(e, aug, degenerate, drop_inconsistent=0.2)
    assert scores.dropped == {"too_short": 1, "near_duplicate": 1, "inconsistent_under_augmentation": 1}
    assert scores.kept.tolist() == [0, 1, 4]


def test_text_degenerate_checks():
    names = {0: "[PAD]", 1: "[UNK]", 2: "[CLS]", 3: "[SEP]", 10: "the", 11: "cat", 12: "!", 13: "sat", 14: "on"}
    ids = [[2, 10, 11, 3], [2, 12, 12, 12, 12, 1, 3], [2, 10, 10, 10, 10, 10, 3], [2, 10, 11, 13, 14, 10, 11, 3]]
    flags = text_degenerate(ids, names.__getitem__, {0, 2, 3}, 1)
    assert flags["too_short"].tolist() == [True, False, False, False]
    assert flags["mostly_non_words"].tolist() == [False, True, False, False]
    # 2 distinct of 5 is not under 40 %; 1 distinct of 5 is
    assert flags["repetitive"].tolist() == [False, False, True, False]


def test_sampler_moves_from_diverse_to_quality_and_hard():
    assert ScheduledSampler.mixture(0.0) == {"diverse": 0.7, "quality": 0.3, "hard": 0.0}
    assert ScheduledSampler.mixture(1.0) == pytest.approx({"diverse": 0.0, "quality": 0.6, "hard": 0.4})
    n = 200
    gen = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=-1)
    scores = score_samples(e, e + 0.3 * torch.randn(n, 16, generator=gen), drop_inconsistent=0.0)
    sampler = ScheduledSampler(scores, batch_size=20, seed=0)
    sampler.update_difficulty(torch.arange(n), torch.arange(n, dtype=torch.float32))  # the last ones are hard
    early = torch.cat(sampler.epoch_batches(0, 10, 30)).float()
    late = torch.cat(sampler.epoch_batches(9, 10, 30)).float()
    hard_rank = sampler.difficulty
    assert hard_rank[late.long()].mean() > hard_rank[early.long()].mean() + 10  # hard samples later
    assert all(len(set(b.tolist())) == 20 for b in sampler.epoch_batches(3, 10, 5))  # no repeats in a batch


def test_cnn_distillation_with_scored_sampling_drops_blank_and_duplicate_images(cli, tmp_path):
    import json
    import textwrap

    import numpy as np

    from edgekit.data import zoo

    (tmp_path / "cnnpair.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def teacher():
            torch.manual_seed(1)
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 10))

        def student():
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 10))
    """))
    train = zoo.digits_split("train")
    x = np.concatenate([train.x[:200], np.repeat(train.x[:1], 5, 0), np.zeros_like(train.x[:3])])
    y = np.concatenate([train.y[:200], np.repeat(train.y[:1], 5, 0), np.zeros(3, dtype=train.y.dtype)])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    r = cli("distill", "--teacher", "cnnpair:teacher", "--student", "cnnpair:student", "--data", "train.npz",
            "--epochs", "2", "--batch-size", "32", "--alpha", "1", "--sampling", "scored", "--no-progress",
            "--out", tmp_path / "out", cwd=tmp_path)
    assert r.rc == 0, r.err[-2000:]
    scores = json.loads((tmp_path / "out" / "report.json").read_text())["data_scores"]
    assert scores["samples"] == 208
    assert scores["dropped"]["near_constant"] == 3 and scores["dropped"]["near_duplicate"] >= 5
