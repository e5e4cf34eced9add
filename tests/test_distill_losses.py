"""Distillation losses and schedules against values computed by hand (closed forms with `math`, not torch)."""

from __future__ import annotations

import math

import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.train.distill import (
    DistillationLoss,
    DistillConfig,
    LayerPair,
    kd_loss,
    parse_alpha,
    parse_temperature,
    soft_target_kl,
)
from edgekit.train.distill.losses import AttentionMSE, FeatureMSE, HiddenCosine
from edgekit.train.distill.schedules import (
    ConstantAlpha,
    ConstantTemperature,
    LearnableTemperatureConfig,
    LinearAlpha,
    StagedTemperature,
)

# student logits (0, 0) and teacher logits (ln 3, 0): at T=1 the teacher says (3/4, 1/4), the student (1/2, 1/2)
S = torch.tensor([[0.0, 0.0]])
TL = torch.tensor([[math.log(3.0), 0.0]])


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_soft_target_kl_at_t1_is_plain_kl():
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert float(soft_target_kl(S, TL, 1.0)) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.130812, abs=1e-6)


def test_soft_target_kl_is_scaled_by_t_squared():
    # at T=2 the teacher's distribution is softmax(ln3/2, 0) = (sqrt3, 1) / (sqrt3 + 1)
    r3 = math.sqrt(3.0)
    p_t = [r3 / (r3 + 1), 1 / (r3 + 1)]
    kl = _kl(p_t, [0.5, 0.5])
    got = float(soft_target_kl(S, TL, 2.0))
    assert got == pytest.approx(4.0 * kl, rel=1e-6)  # T² = 4
    assert got == pytest.approx(0.145364, abs=1e-5)


def test_t_squared_keeps_gradient_scale():
    """Hinton's reason for T²: d(T²·KL)/ds = T·(softmax(s/T) - softmax(t/T)), which for large T tends to
    ((s - t) - mean(s - t)) / N whatever T is; without T² it would shrink as 1/T²."""
    s = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    t = torch.tensor([[0.5, -0.4, 0.0]])
    d = s.detach() - t
    limit = (d - d.mean()) / 3
    for temperature in (10.0, 50.0):
        s.grad = None
        soft_target_kl(s, t, temperature).backward()
        assert torch.allclose(s.grad, limit, atol=0.05 * float(limit.abs().max()))


def test_kl_is_zero_for_identical_logits_and_batch_averaged():
    logits = torch.randn(4, 10)
    assert float(soft_target_kl(logits, logits, 3.0)) == pytest.approx(0.0, abs=1e-6)
    two = torch.cat([S, S])
    teacher = torch.cat([TL, S])  # second row identical: the mean halves the first row's KL
    assert float(soft_target_kl(two, teacher, 1.0)) == pytest.approx(0.130812 / 2, abs=1e-6)


def test_alpha_mixes_kl_and_cross_entropy():
    y = torch.tensor([0])
    ce = math.log(2.0)  # the student's (1/2, 1/2) against label 0
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    for alpha in (0.0, 0.3, 0.9, 1.0):
        total, parts = kd_loss(S, TL, y, 1.0, alpha)
        assert float(total) == pytest.approx(alpha * kl + (1 - alpha) * ce, rel=1e-6)
    _, parts = kd_loss(S, TL, y, 1.0, 0.3)
    assert float(parts["kd"]) == pytest.approx(kl, rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-6)


def test_alpha_extremes_need_only_what_they_use():
    total, parts = kd_loss(S, None, torch.tensor([1]), 4.0, 0.0)  # labels only: no teacher needed
    assert set(parts) == {"ce"} and float(total) == pytest.approx(math.log(2.0))
    total, parts = kd_loss(S, TL, None, 1.0, 1.0)  # teacher only: no labels needed
    assert set(parts) == {"kd"}
    with pytest.raises(EdgekitError, match="needs labels"):
        kd_loss(S, TL, None, 1.0, 0.5)


def test_standardized_logits_ignore_scale():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert float(soft_target_kl(3 * t + 1, t, 2.0, standardize=True)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_target_kl(3 * t + 1, t, 2.0)) > 0.1


def test_feature_projection_shapes():
    conv = FeatureMSE((2, 8, 4, 4), (2, 32, 4, 4), "f")
    assert isinstance(conv.proj, torch.nn.Conv2d)
    assert tuple(conv.proj.weight.shape) == (32, 8, 1, 1)
    s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        assert float(conv(s, t)) == pytest.approx(float(((conv.proj(s) - t) ** 2).mean()), rel=1e-5)

    pooled = FeatureMSE((2, 8, 8, 8), (2, 16, 4, 4), "f")  # spatial sizes differ: both pooled to 4x4
    assert pooled.size == (4, 4)
    assert pooled(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)).shape == ()

    tokens = FeatureMSE((2, 17, 32), (2, 17, 64), "f")
    assert isinstance(tokens.proj, torch.nn.Linear) and tuple(tokens.proj.weight.shape) == (64, 32)
    same = FeatureMSE((2, 16), (2, 16), "f")
    assert isinstance(same.proj, torch.nn.Identity)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert float(FeatureMSE((2, 2), (2, 2), "f")(x, torch.zeros(2, 2))) == pytest.approx((1 + 4 + 9 + 16) / 4)

    with pytest.raises(EdgekitError, match="token counts differ"):
        FeatureMSE((2, 17, 32), (2, 5, 64), "f")
    with pytest.raises(EdgekitError, match="must both be"):
        FeatureMSE((2, 8, 4, 4), (2, 32), "f")


def test_attention_mse_by_hand():
    n = 2
    uniform = torch.full((1, 1, n, n), 1.0 / n)
    onehot = torch.eye(n).reshape(1, 1, n, n)
    term = AttentionMSE(uniform.shape, onehot.shape, "a")
    # each row: (1/2 - 1)^2 + (1/2 - 0)^2 = 0.5, summed over keys, averaged over rows
    assert float(term(uniform, onehot)) == pytest.approx(0.5)
    assert float(term(onehot, onehot)) == 0.0
    # different head counts: heads are averaged first
    s = torch.cat([uniform, onehot], dim=1)  # 2 heads, mean = (0.75, 0.25; 0.25, 0.75)
    t = onehot.repeat(1, 4, 1, 1)  # 4 identical heads
    mixed = AttentionMSE(s.shape, t.shape, "a")
    assert mixed.average_heads
    assert float(mixed(s, t)) == pytest.approx(2 * 0.25**2)
    with pytest.raises(EdgekitError, match="token counts must match"):
        AttentionMSE((1, 4, 5, 5), (1, 4, 6, 6), "a")


def test_hidden_cosine_by_hand():
    term = HiddenCosine((1, 2, 3), (1, 2, 3), "h")
    a = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert float(term(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(term(a, -a)) == pytest.approx(2.0)
    assert float(term(a, a.roll(1, dims=-1))) == pytest.approx(1.0)  # each row orthogonal to its partner
    projected = HiddenCosine((2, 17, 32), (2, 17, 64), "h")
    assert tuple(projected.proj.weight.shape) == (64, 32)


def test_distillation_loss_sums_weighted_terms():
    cfg = DistillConfig(alpha=0.5, temperature=1.0, features=[("fs", "ft")], feature_weight=2.0,
                        standardize_logits=False)
    loss = DistillationLoss(cfg, {"fs": (1, 2)}, {"ft": (1, 2)})
    fs, ft = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]])
    total, parts = loss(S, TL, torch.tensor([0]), {"fs": fs}, {"ft": ft})
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(parts["features"]) == pytest.approx(1.0)
    assert float(total) == pytest.approx(0.5 * kl + 0.5 * math.log(2.0) + 2.0 * 1.0, rel=1e-6)


def test_layer_pairs_parse():
    assert LayerPair.parse("a.b=c.d") == LayerPair("a.b", "c.d")
    assert LayerPair.parse(("x", "y")) == LayerPair("x", "y")
    with pytest.raises(EdgekitError, match="STUDENT_LAYER=TEACHER_LAYER"):
        LayerPair.parse("no-equals")


def test_schedules():
    staged = parse_temperature("5,2,1")
    assert isinstance(staged, StagedTemperature)
    assert [staged(p) for p in (0.0, 0.32, 0.34, 0.66, 0.67, 1.0)] == [5, 5, 2, 2, 1, 1]
    explicit = StagedTemperature((4.0, 1.0), milestones=(0.8,))
    assert explicit(0.79) == 4 and explicit(0.8) == 1
    assert parse_temperature("3") == ConstantTemperature(3.0)
    linear = parse_alpha("0.7:0.3")
    assert isinstance(linear, LinearAlpha)
    assert linear(0.0) == pytest.approx(0.7) and linear(0.5) == pytest.approx(0.5) and linear(1.0) == pytest.approx(0.3)
    assert parse_alpha("0.9") == ConstantAlpha(0.9)
    learn = parse_temperature("learnable:3")
    assert isinstance(learn, LearnableTemperatureConfig)
    module = learn.build()
    assert float(module()) == pytest.approx(3.0, rel=1e-5)
    module.raw.data.fill_(100.0)
    assert float(module()) == pytest.approx(10.0)  # bounded above


def test_learnable_temperature_gets_gradients_and_adversarial_reverses_them():
    grads = {}
    for adversarial in (False, True):
        cfg = DistillConfig(alpha=1.0, temperature=LearnableTemperatureConfig(init=4.0, adversarial=adversarial))
        loss = DistillationLoss(cfg)
        assert [n for n, _ in loss.named_parameters()] == ["learned_temperature.raw"]
        total, _ = loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 3.0, 0.0]]), None)
        total.backward()
        grads[adversarial] = float(loss.learned_temperature.raw.grad)
    assert grads[False] != 0.0
    assert grads[True] == pytest.approx(-grads[False])


@pytest.mark.parametrize("bad, match", [
    ("0", "temperature must be > 0"), ("5,0,1", "positive values"), ("learnable:20", "low < init < high"),
    ("warm", "expected a number"),
])
def test_bad_temperatures(bad, match):
    with pytest.raises(EdgekitError, match=match):
        parse_temperature(bad)


@pytest.mark.parametrize("bad", ["1.5", "-0.1:0.5", "a", "0.1:0.2:0.3"])
def test_bad_alphas(bad):
    with pytest.raises(EdgekitError):
        parse_alpha(bad)


def test_config_knows_what_it_needs():
    assert not DistillConfig(alpha=1.0).uses_labels
    assert DistillConfig(alpha="1.0:0.5").uses_labels
    assert not DistillConfig(alpha=0.0).uses_teacher
    assert DistillConfig(alpha=0.0, features=["a=b"]).uses_teacher
    with pytest.raises(EdgekitError, match="feature_weight"):
        DistillConfig(feature_weight=-1)
