"""Advantage shaping: xrpo_sharpen and red_weight (hand-worked values and bounds)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

grpo = algos.get("advantage", "grpo")
xrpo_sharpen = algos.get("advantage", "xrpo_sharpen")
red_weight = algos.get("advantage", "red_weight")

NAN = float("nan")
PROPS = settings(max_examples=30, deadline=None, derandomize=True)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# Group 6: rewards [1, 1, 0]; s = token means of old_logp = [-1, -2, -1.5] (row 1's second token is masked, so
# its -100 does not count). Row 3 is a singleton group (id -5).
X_REWARDS = t([1.0, 1.0, 0.0, 1.0])
X_GROUPS = torch.tensor([6, 6, 6, -5])
X_OLD = t([[-1.0, -1.0], [-2.0, -100.0], [-1.5, -1.5], [-0.1, -0.1]])
X_MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])


def test_xrpo_sharpen_by_hand():
    # base z-score: mean 2/3, squared deviations 1/9 + 1/9 + 4/9, sample var 1/3
    # -> z = 1/sqrt(3), 1/sqrt(3), -2/sqrt(3).
    # s̄ = -1.5, η = [e^.5, e^-.5, 1]. Row 0: λ(1 - e^.5) < 0 -> bonus 0. Row 1: λ(1 - e^-.5) = .3935 < κ·A = .5774.
    # Row 2 has A < 0 and is left alone; the singleton has A = 0.
    z = 1 / math.sqrt(3)
    kwargs = dict(mask=X_MASK, old_logp=X_OLD, eps=0.0)
    adv = xrpo_sharpen(X_REWARDS, X_GROUPS, **kwargs)
    torch.testing.assert_close(adv, t([z, z + 1 - math.exp(-0.5), -2 * z, 0.0]))
    # κ = .5 caps row 1's bonus at .5·z
    adv = xrpo_sharpen(X_REWARDS, X_GROUPS, novelty_cap=0.5, **kwargs)
    torch.testing.assert_close(adv, t([z, 1.5 * z, -2 * z, 0.0]))
    # λ = 0 is plain GRPO
    torch.testing.assert_close(
        xrpo_sharpen(X_REWARDS, X_GROUPS, novelty_coef=0.0, **kwargs), grpo(X_REWARDS, X_GROUPS, eps=0.0)
    )


def test_xrpo_sharpen_checks_inputs():
    with pytest.raises(ValueError, match="old_logp"):
        xrpo_sharpen(X_REWARDS, X_GROUPS, mask=X_MASK)
    with pytest.raises(ValueError, match="mask"):
        xrpo_sharpen(X_REWARDS, X_GROUPS, old_logp=X_OLD)
    with pytest.raises(ValueError, match="novelty_coef"):
        xrpo_sharpen(X_REWARDS, X_GROUPS, mask=X_MASK, old_logp=X_OLD, novelty_coef=-1.0)


@PROPS
@given(
    st.lists(st.integers(0, 1).map(float), min_size=6, max_size=6),
    st.integers(0, 2**16),
    st.sampled_from([0.5, 1.0, 3.0]),
    st.sampled_from([0.25, 1.0]),
)
def test_xrpo_sharpen_only_raises_positive_advantages_within_the_cap(values, seed, lam, kappa):
    rewards, groups = t(values), torch.tensor([0, 0, 0, 1, 1, 1])
    old = -torch.rand(6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    adv = xrpo_sharpen(rewards, groups, mask=torch.ones(6, 3), old_logp=old, novelty_coef=lam, novelty_cap=kappa)
    base = grpo(rewards, groups)
    pos = base > 0
    torch.testing.assert_close(adv[~pos], base[~pos])
    assert bool((adv[pos] >= base[pos]).all()) and bool((adv[pos] <= (1 + kappa) * base[pos] + 1e-12).all())


def test_red_weight_by_hand():
    # group 7 {1, 0, 2} centred (0, -1, +1) -> A·exp(A/T): 0, -e^-1, e^1; T = 2 -> -e^-.5, e^.5.
    rewards, groups = t([1.0, 0.0, 1.0, NAN, 3.0, 2.0]), torch.tensor([7, 7, -2, -2, 100, 7])
    torch.testing.assert_close(red_weight(rewards, groups), t([0, -math.exp(-1), 0, 0, 0, math.e]))
    adv = red_weight(rewards, groups, temperature=2.0)
    torch.testing.assert_close(adv, t([0, -math.exp(-0.5), 0, 0, 0, math.exp(0.5)]))
    # std_normalize: population std sqrt(2/3) -> z = ∓sqrt(1.5)
    z = math.sqrt(1.5)
    adv = red_weight(rewards, groups, std_normalize=True, eps=0.0)
    torch.testing.assert_close(adv, t([0, -z * math.exp(-z), 0, 0, 0, z * math.exp(z)]))
    with pytest.raises(ValueError, match="temperature"):
        red_weight(rewards, groups, temperature=0.0)
