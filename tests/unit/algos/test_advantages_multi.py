"""Multi-reward and adaptive normalisation: gdpo and bnpo (hand-worked values, §13 V1, V2, V3, V5)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

grpo = algos.get("advantage", "grpo")
gdpo = algos.get("advantage", "gdpo")
bnpo = algos.get("advantage", "bnpo")

NAN = float("nan")
PROPS = settings(max_examples=30, deadline=None, derandomize=True)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# §13 V3: two groups of G = 2 with reward pairs {(0,0), (1,0)} and {(0,0), (1,1)}.
V3_REWARDS = t([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
V3_GROUPS = torch.tensor([10, 10, -4, -4])


def test_v3_gdpo_keeps_reward_combinations_apart():
    # per column, a pair {0, 1} has mean .5 and sample std sqrt(.5) -> ∓.5/sqrt(.5) = ∓sqrt(.5); {0, 0} -> 0.
    # A = [-sqrt(.5), sqrt(.5), -2 sqrt(.5), 2 sqrt(.5)]; batch mean 0, sample var (.5 + .5 + 2 + 2)/3 = 5/3.
    # Â = ∓sqrt(.5/(5/3)) = ∓sqrt(.3) and ∓sqrt(2/(5/3)) = ∓sqrt(1.2): ratio 1:2.
    adv = gdpo(V3_REWARDS, V3_GROUPS, eps=0.0)
    a, b = math.sqrt(0.3), math.sqrt(1.2)
    torch.testing.assert_close(adv, t([-a, a, -b, b]))
    # sum-then-normalise (grpo on r_1 + r_2 = [0, 1, 0, 2]) gives both groups the same advantages.
    summed = grpo(V3_REWARDS.sum(1), V3_GROUPS, eps=0.0)
    torch.testing.assert_close(summed[:2], summed[2:])


def test_gdpo_reward_weights_by_hand():
    # w = [2, 1]: A = [∓2 sqrt(.5)] in group 10 and [∓3 sqrt(.5)] in group -4, i.e. ∓sqrt(2), ∓sqrt(4.5);
    # batch sample var (2 + 2 + 4.5 + 4.5)/3 = 13/3 -> Â = ∓sqrt(6/13), ∓sqrt(27/26).
    adv = gdpo(V3_REWARDS, V3_GROUPS, reward_weights=t([2.0, 1.0]), eps=0.0)
    a, b = math.sqrt(6 / 13), math.sqrt(27 / 26)
    torch.testing.assert_close(adv, t([-a, a, -b, b]))
    with pytest.raises(ValueError, match="reward_weights"):
        gdpo(V3_REWARDS, V3_GROUPS, reward_weights=t([1.0, 1.0, 1.0]))


def test_gdpo_nan_entries():
    # column 0: {1, 0} -> ±sqrt(.5); column 1: only row 1 is valid (a singleton) -> 0. Row 2 has no reward.
    # A = [sqrt(.5), -sqrt(.5), 0]; whitened over rows 0 and 1: mean 0, sample var 1 -> unchanged.
    rewards = t([[1.0, NAN], [0.0, 1.0], [NAN, NAN]])
    adv = gdpo(rewards, torch.tensor([0, 0, 0]), eps=0.0)
    torch.testing.assert_close(adv, t([math.sqrt(0.5), -math.sqrt(0.5), 0.0]))


multi_batches = st.integers(2, 10).flatmap(
    lambda n: st.tuples(
        st.lists(st.lists(st.integers(0, 4).map(float), min_size=2, max_size=2), min_size=n, max_size=n),
        st.lists(st.sampled_from([-3, 0, 5, 42]), min_size=n, max_size=n),
    )
)


@PROPS
@given(multi_batches, st.sampled_from([0.5, 3.0]), st.sampled_from([-2.0, 1.5]))
def test_v1_v5_gdpo_sums_vanish_whitened_and_affine_invariant(batch, a, b):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    adv = gdpo(rewards, groups, eps=0.0)
    assert bool(torch.isfinite(adv).all())
    raw = grpo(rewards[:, 0], groups, eps=0.0) + grpo(rewards[:, 1], groups, eps=0.0)  # A before whitening
    if float(raw.abs().max()) < 1e-9:
        return  # A ≡ 0: with eps = 0 the whitening would only scale rounding noise up
    sums = torch.zeros(46, dtype=torch.float64).index_add(0, groups + 3, adv)
    torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-9, rtol=0)
    torch.testing.assert_close(adv.std(), torch.tensor(1.0, dtype=torch.float64))
    # each column on its own affine scale: the per-column z-scores do not move
    moved = rewards * t([a, 1.0]) + t([b, -b])
    torch.testing.assert_close(gdpo(moved, groups, eps=0.0), adv, atol=1e-9, rtol=1e-9)


def test_v2_bnpo_alpha_beta_one_is_reinforce_with_baseline():
    # groups {0,0}, {1,1}, {1,0}: p = 0, 1, .5; μ = .5, sample var (.25 + .25 + 0)/2 = .25,
    # k = .25/.25 - 1 = 0 -> a = b = 0 -> α = β = 1, pdf ≡ 1, A = r - p.
    rewards, groups = t([0, 0, 1, 1, 1, 0]), torch.tensor([1, 1, 2, 2, 3, 3])
    torch.testing.assert_close(bnpo(rewards, groups), t([0, 0, 0, 0, 0.5, -0.5]))


def test_v2_bnpo_alpha_beta_three_halves_is_scaled_grpo():
    # groups {1,0,0,0}, {1,1,0,0}, {1,1,1,0}: p = .25, .5, .75; μ = .5, sample var (1/16 + 0 + 1/16)/2 = 1/16,
    # k = .25·16 - 1 = 3, a = b = 1.5 -> α = β = 1 + 1.5/3 = 3/2. B(3/2, 3/2) = π/8, so
    # A = (π/8)(r - p)/sqrt(p(1-p)): p = .25 -> (π/8)·sqrt(3) = .6802 and -(π/8)/sqrt(3) = -.2267; p = .5 -> ±π/8.
    rewards = t([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0])
    groups = torch.tensor([0] * 4 + [5] * 4 + [9] * 4)
    c, s3 = math.pi / 8, math.sqrt(3)
    expected = t([c * s3, -c / s3, -c / s3, -c / s3, c, c, -c, -c, c / s3, c / s3, c / s3, -c * s3])
    adv = bnpo(rewards, groups)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(adv, c * grpo(rewards, groups, eps=0.0, std_mode="population"))


def test_bnpo_general_fit_by_hand():
    # groups {0,0}, {1,0}, {0,1}: p = 0, .5, .5; μ = 1/3, sample var ((1/3)² + 2·(1/6)²)/2 = 1/12,
    # k = (2/9)·12 - 1 = 5/3, a = 5/9, b = 10/9 -> α = 1 + 5/27 = 32/27, β = 1 + 10/27 = 37/27.
    # At p = .5: pdf = .5^(α+β-2)/B(α, β) with α + β - 2 = 5/9, so A = (r - .5)·B(α, β)/.5^(5/9).
    al, be = 32 / 27, 37 / 27
    inv_pdf = math.exp(math.lgamma(al) + math.lgamma(be) - math.lgamma(al + be)) / 0.5 ** (5 / 9)
    adv = bnpo(t([0, 0, 1, 0, 0, 1]), torch.tensor([3, 3, 1, 1, 8, 8]))
    h = 0.5 * inv_pdf
    torch.testing.assert_close(adv, t([0, 0, h, -h, -h, h]))


def test_bnpo_degenerate_fit_and_singletons():
    # every p = .5 (the singleton id 7 too) -> var 0: fall back to α = β = 1, A = r - p.
    # The singleton and the NaN reward get 0.
    rewards, groups = t([1, 0, 0, 1, 0.5, NAN]), torch.tensor([0, 0, 4, 4, 7, 4])
    torch.testing.assert_close(bnpo(rewards, groups), t([0.5, -0.5, -0.5, 0.5, 0, 0]))


def test_bnpo_affine_map_decomposition_and_checks():
    rewards, groups = t([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]), torch.tensor([0] * 4 + [5] * 4 + [9] * 4)
    # rewards in {-1, 1} with reward_min = -1 map to {0, 1}; A is in scaled units.
    torch.testing.assert_close(bnpo(2 * rewards - 1, groups, reward_min=-1.0), bnpo(rewards, groups))
    # decomposition: each column on its own, then the mean (official trainer) or the sum.
    cols = torch.stack([rewards, rewards.flip(0)], 1)
    per_col = torch.stack([bnpo(cols[:, 0], groups), bnpo(cols[:, 1], groups)], 1)
    torch.testing.assert_close(bnpo(cols, groups), per_col.mean(1))
    torch.testing.assert_close(bnpo(cols, groups, decomp_reduce="sum"), per_col.sum(1))
    with pytest.raises(ValueError, match="reward_max"):
        bnpo(rewards, groups, reward_max=0.0)
    with pytest.raises(ValueError, match="decomp_reduce"):
        bnpo(rewards, groups, decomp_reduce="median")


def _bnpo_loop(rewards, groups):
    """Reference: the official per-group loop, with our convention (a singleton gets 0) and math.lgamma."""
    ids = sorted(set(groups.tolist()))
    p = {g: float(rewards[groups == g].mean()) for g in ids}
    ps = torch.tensor([p[g] for g in ids], dtype=torch.float64)
    al = be = 1.0
    if len(ids) > 1 and float(ps.var()) > 0:
        mu, var = float(ps.mean()), float(ps.var())
        k = mu * (1 - mu) / var - 1
        al, be = max(1.0, 1 + k * mu / 3), max(1.0, 1 + k * (1 - mu) / 3)
    out = torch.zeros_like(rewards)
    for i in range(len(rewards)):
        g = int(groups[i])
        if int((groups == g).sum()) < 2:
            continue
        q = p[g]
        if q in (0.0, 1.0):  # an all-equal group: r - p = 0 (the capped weight does not matter)
            continue
        log_pdf = math.lgamma(al + be) - math.lgamma(al) - math.lgamma(be)
        log_pdf += (al - 1) * math.log(q) if al != 1 else 0.0
        log_pdf += (be - 1) * math.log(1 - q) if be != 1 else 0.0
        out[i] = (float(rewards[i]) - q) * min(math.exp(-log_pdf), 1e6)
    return out


@PROPS
@given(
    st.integers(3, 14).flatmap(
        lambda n: st.tuples(
            st.lists(st.sampled_from([0.0, 0.25, 1.0]), min_size=n, max_size=n),
            st.lists(st.sampled_from([-3, 0, 5, 42]), min_size=n, max_size=n),
        )
    )
)
def test_v2_bnpo_matches_official_loop(batch):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    torch.testing.assert_close(bnpo(rewards, groups), _bnpo_loop(rewards, groups), atol=1e-9, rtol=1e-7)


def test_normalize_then_sum_is_trls_name_for_gdpo():
    # TRL's GRPOTrainer `multi_objective_aggregation="normalize_then_sum"`, written out as its trainer computes it:
    # per function, group mean and sample std (nanmean/nanstd), (r - mean)/(std + 1e-4), weighted nansum; then the
    # batch's mean and sample std with the same eps. The alias resolves to the one registered component.
    assert algos.get("advantage", "normalize_then_sum") is gdpo
    rewards = t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.5], [1.0, NAN], [0.0, 0.0]])
    weights = t([1.0, 0.5])
    grouped = rewards.view(2, 3, 2)
    mean = torch.nanmean(grouped, 1, keepdim=True)
    count = (~grouped.isnan()).sum(1, keepdim=True)
    std = (torch.nansum((grouped - mean) ** 2, 1, keepdim=True) / (count - 1)).sqrt()
    summed = (((grouped - mean) / (std + 1e-4)).view(6, 2) * weights).nansum(1)
    expected = (summed - summed.mean()) / (summed.std() + 1e-4)
    adv = algos.get("advantage", "normalize_then_sum")(rewards, torch.tensor([0, 0, 0, 1, 1, 1]),
                                                       reward_weights=weights)  # fmt: skip
    torch.testing.assert_close(adv, expected)
