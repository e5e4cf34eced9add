"""The paired bootstrap interval that decides whether one student measurably beats another on the same
sentences: a small consistent gain hidden in a wide spread is found, a zero-mean difference is not."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.common.metrics import paired_bootstrap


def test_small_consistent_gain_is_significant_and_noise_is_not():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 1.0, 300)  # spread far wider than the gain
    better = base + 0.01 + rng.normal(0, 0.01, 300)
    r = paired_bootstrap(better, base)
    assert r["ci_low"] > 0 and r["ci_low"] < r["mean_diff"] < r["ci_high"] < 0.02
    assert r["a_better"] > r["b_better"] and r["n"] == 300
    noise = base + rng.normal(0, 0.01, 300)
    noise -= (noise - base).mean()  # exactly zero mean difference
    r = paired_bootstrap(noise, base)
    assert r["ci_low"] < 0 < r["ci_high"]
    assert paired_bootstrap(base, base)["ci_low"] == paired_bootstrap(base, base)["ci_high"] == 0


def test_unequal_lists_fail():
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(3), np.ones(4))
