"""REINFORCE-style baselines: reinforce_pp, remax, flash_reinforce, optimal_token_baseline (§13 V4, V5, V7)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos.advantages.baselines import discounted_returns

reinforce_pp = algos.get("advantage", "reinforce_pp")
remax = algos.get("advantage", "remax")
flash_reinforce = algos.get("advantage", "flash_reinforce")
otb = algos.get("advantage", "optimal_token_baseline")
dr_grpo = algos.get("advantage", "dr_grpo")

NAN = float("nan")
PROPS = settings(max_examples=30, deadline=None, derandomize=True)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_reinforce_pp_outcome_only_by_hand():
    # γ = 1, no KL: returns are r on every valid token: row 0 -> 1, 1, 1; row 1 -> 0, 0 (third token masked).
    # 5 valid tokens: mean 0.6, squared deviations 3·0.16 + 2·0.36 = 1.2, sample var 0.3.
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = reinforce_pp(t([1.0, 0.0]), torch.tensor([0, 0]), mask=mask)
    s = math.sqrt(0.3)
    torch.testing.assert_close(adv, t([[0.4 / s] * 3, [-0.6 / s, -0.6 / s, 0.0]]), atol=1e-6, rtol=1e-6)


def test_reinforce_pp_kl_in_reward_and_discount_by_hand():
    # β = 0.5, old − ref = [[.2, 0, .4], [.2, .2, (masked 9)]] -> token rewards
    # row 0: [-.1, 0, -.2 + 1] = [-.1, 0, .8]; row 1: [-.1, -.1 + 0 (outcome 0 on its last valid token)].
    # γ = 0.5: row 0: t2 = .8, t1 = 0 + .5·.8 = .4, t0 = -.1 + .5·.4 = .1; row 1: t1 = -.1, t0 = -.1 - .05 = -.15.
    # values .1, .4, .8, -.15, -.1: mean .21; squared deviations .0121 + .0361 + .3481 + .1296 + .0961 = .622;
    # sample var .622/4 = .1555.
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = t([[0.2, 0.0, 0.4], [0.2, 0.2, 9.0]])
    ref = torch.zeros(2, 3, dtype=torch.float64)
    adv = reinforce_pp(
        t([1.0, 0.0]), torch.tensor([5, 5]), mask=mask, old_logp=old, ref_logp=ref, kl_coef=0.5, gamma=0.5
    )
    s = math.sqrt(0.1555)
    expected = t([[(0.1 - 0.21) / s, (0.4 - 0.21) / s, (0.8 - 0.21) / s], [(-0.15 - 0.21) / s, (-0.1 - 0.21) / s, 0]])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=1e-6)


def test_reinforce_pp_checks_its_inputs():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="mask"):
        reinforce_pp(t([1.0, 0.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="old_logp"):
        reinforce_pp(t([1.0, 0.0]), torch.tensor([0, 0]), mask=mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="ref_logp"):
        reinforce_pp(t([1.0, 0.0]), torch.tensor([0, 0]), mask=mask, kl_coef=0.1, old_logp=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="gamma"):
        reinforce_pp(t([1.0, 0.0]), torch.tensor([0, 0]), mask=mask, gamma=1.5)


def test_discounted_returns_skip_masked_tokens():
    # row [1, 0, 1] with reward 1 on t = 2 and γ = 0.5: t2 = 1, the masked t1 is skipped, t0 = 0.5·1.
    g = discounted_returns(t([[0.0, 7.0, 1.0]]), torch.tensor([[1, 0, 1]]), 0.5)
    torch.testing.assert_close(g, t([[0.5, 0.0, 1.0]]))


def _returns_loop(r, mask, gamma):
    """Reference: a plain loop over time per row, skipping masked tokens."""
    out = torch.zeros_like(r)
    for i in range(r.shape[0]):
        running = 0.0
        for step in reversed(range(r.shape[1])):
            if mask[i, step]:
                running = float(r[i, step]) + gamma * running
                out[i, step] = running
    return out


@PROPS
@given(st.integers(0, 2**16), st.integers(1, 9), st.sampled_from([0.0, 0.3, 0.9, 1.0]))
def test_discounted_returns_match_loop(seed, length, gamma):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(3, length, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, length, generator=gen) < 0.7
    torch.testing.assert_close(discounted_returns(r, mask, gamma), _returns_loop(r, mask, gamma))


@PROPS
@given(st.integers(0, 2**16), st.sampled_from([0.0, 0.05]), st.sampled_from([0.9, 1.0]))
def test_v5_reinforce_pp_whitened_over_valid_tokens(seed, kl_coef, gamma):
    gen = torch.Generator().manual_seed(seed)
    n, width = 6, 5
    rewards = torch.randint(0, 2, (n,), generator=gen).to(torch.float64)
    mask = torch.rand(n, width, generator=gen) < 0.7
    mask[:, 0] = True
    old, ref = torch.randn(n, width, generator=gen), torch.randn(n, width, generator=gen)
    adv = reinforce_pp(
        rewards, torch.arange(n), mask=mask, old_logp=old, ref_logp=ref, kl_coef=kl_coef, gamma=gamma, eps=0.0
    )
    assert bool((adv[~mask] == 0).all())
    valid = adv[mask]
    if float(valid.std()) > 1e-6:
        torch.testing.assert_close(valid.mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0)
        torch.testing.assert_close(valid.std(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9, rtol=0)


def test_remax_by_hand():
    # per completion: [1 - .5, 0 - .5, .5 - .5, NaN -> 0]
    rewards, groups = t([1.0, 0.0, 0.5, NAN]), torch.tensor([5, 5, 2, 2])
    torch.testing.assert_close(remax(rewards, groups, baseline_rewards=t([0.5, 0.5, 0.5, 1.0])), t([0.5, -0.5, 0, 0]))
    # per group, in ascending id order [2, 5]: group 2 -> 0.25, group 5 -> 1.0
    torch.testing.assert_close(remax(rewards, groups, baseline_rewards=t([0.25, 1.0])), t([0.0, -1.0, 0.25, 0]))


def test_remax_checks_baseline():
    rewards, groups = t([1.0, 0.0, 0.5]), torch.tensor([5, 5, 2])
    with pytest.raises(ValueError, match="baseline_rewards"):
        remax(rewards, groups)
    with pytest.raises(ValueError, match="baseline_rewards"):
        remax(rewards, groups, baseline_rewards=t([1.0, 2.0, 3.0, 4.0]))


@PROPS
@given(st.lists(st.integers(-8, 8).map(lambda x: x / 4), min_size=1, max_size=10))
def test_v4_remax_sample_equal_to_greedy_gives_zero(values):
    rewards = t(values)
    adv = remax(rewards, torch.arange(len(values)), baseline_rewards=rewards.clone())
    torch.testing.assert_close(adv, torch.zeros_like(rewards))


def test_flash_reinforce_by_hand():
    # verl's case: the empty fourth row is left out, mean of {3, -1, 1} = 1 -> 2, -2, 0, 0.
    rewards, groups = t([3.0, -1.0, 1.0, 9.0]), torch.tensor([0, 1, 2, 3])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(flash_reinforce(rewards, groups, mask=mask), t([2.0, -2.0, 0.0, 0.0]))
    # without a mask every row counts: mean 3 -> 0, -4, -2, 6. Groups play no part.
    torch.testing.assert_close(flash_reinforce(rewards, torch.zeros(4, dtype=torch.long)), t([0, -4, -2, 6]))
    # NaN is left out: mean of {1, 3} = 2
    torch.testing.assert_close(flash_reinforce(t([1.0, NAN, 3.0]), torch.arange(3)), t([-1.0, 0.0, 1.0]))


# p = π_old(y_t): row 0 -> 0.5, row 1 -> 0.25; Σπ² = 0.5 and 0.25, so e = 1 - 2p + Σπ² = 0.5 and 0.75.
OTB_OLD = torch.log(t([[0.5, 0.5], [0.25, 0.25]]))
OTB_SPP = t([[0.5, 0.5], [0.25, 0.25]])


def test_otb_by_hand():
    # W row 0 = [.5, 1], row 1 = [.75, 1.5]; G = r = [1, 0] on every token.
    # B_0 = 1·.5/(.5 + .75) = .4; B_1 = 1·1/(1 + 1.5) = .4 -> A = [[.6, .6], [-.4, -.4]].
    rewards, groups = t([1.0, 0.0]), torch.tensor([3, 3])
    adv = otb(rewards, groups, mask=torch.ones(2, 2), old_logp=OTB_OLD, sum_pi_squared=OTB_SPP, eps=0.0)
    torch.testing.assert_close(adv, t([[0.6, 0.6], [-0.4, -0.4]]))
    # rollout IS weights [[2, 1], [1, 1]]: e_00 = .5·4 = 2 -> W row 0 = [2, 2.5];
    # B_0 = 2/(2 + .75) = 8/11, B_1 = 2.5/(2.5 + 1.5) = .625.
    is_w = t([[2.0, 1.0], [1.0, 1.0]])
    kwargs = dict(mask=torch.ones(2, 2), old_logp=OTB_OLD, sum_pi_squared=OTB_SPP, eps=0.0)
    adv = otb(rewards, groups, rollout_is_weights=is_w, **kwargs)
    torch.testing.assert_close(adv, t([[3 / 11, 0.375], [-8 / 11, -0.625]]))


def test_otb_zero_tail_and_singletons():
    # row 1 has one token: at t = 1 only row 0 is left, so its baseline is zeroed and A = G = 1.
    # Without the zero tail B_1 = 1·1/1 = 1 and A = 0. Row 2 is a singleton group (id 9): G = 2 (verl, the default),
    # or 0 with singleton="zero".
    rewards, groups = t([1.0, 0.0, 2.0]), torch.tensor([3, 3, 9])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    old, spp = torch.cat([OTB_OLD, OTB_OLD[:1]]), torch.cat([OTB_SPP, OTB_SPP[:1]])
    kwargs = dict(mask=mask, old_logp=old, sum_pi_squared=spp, eps=0.0)
    torch.testing.assert_close(otb(rewards, groups, **kwargs), t([[0.6, 1.0], [-0.4, 0.0], [2.0, 2.0]]))
    adv = otb(rewards, groups, handle_zero_tail=False, **kwargs)
    torch.testing.assert_close(adv, t([[0.6, 0.0], [-0.4, 0.0], [2.0, 2.0]]))
    torch.testing.assert_close(otb(rewards, groups, singleton="zero", **kwargs)[2], t([0.0, 0.0]))


def test_otb_needs_its_tensors():
    kwargs = dict(mask=torch.ones(2, 2), old_logp=OTB_OLD, sum_pi_squared=OTB_SPP)
    for missing in ("old_logp", "sum_pi_squared", "mask"):
        with pytest.raises(ValueError, match=missing):
            otb(t([1.0, 0.0]), torch.tensor([0, 0]), **{**kwargs, missing: None})


def _otb_loop(rewards, groups, mask, old, spp):
    """Reference: verl's loop (right-padded masks, zero tail past the second-longest response)."""
    returns = rewards[:, None] * mask
    w = ((1 - 2 * old.exp() + spp) * mask).cumsum(1)
    base = torch.zeros_like(returns)
    for g in set(groups.tolist()):
        idx = [i for i in range(len(rewards)) if groups[i] == g]
        if len(idx) == 1:
            continue
        num, den = (returns[idx] * w[idx] * mask[idx]).sum(0), (w[idx] * mask[idx]).sum(0)
        base[idx] = torch.where(den > 0, num / den, 0.0)
        lengths = mask[idx].sum(1)
        top = sorted(lengths.tolist())
        if top[-1] > top[-2]:
            base[idx[int(lengths.argmax())], int(top[-2]) :] = 0.0
    return (returns - base) * mask


@PROPS
@given(st.integers(0, 2**16))
def test_otb_matches_verl_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    n, width = 7, 5
    groups = torch.tensor([4, 4, 4, -1, -1, 8, 8])
    rewards = torch.randint(0, 3, (n,), generator=gen).to(torch.float64)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float64)
    probs = torch.rand(n, width, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    old, spp = probs.log(), probs**2 + 0.1
    adv = otb(rewards, groups, mask=mask, old_logp=old, sum_pi_squared=spp, eps=0.0)
    torch.testing.assert_close(adv, _otb_loop(rewards, groups, mask, old, spp))


@PROPS
@given(st.lists(st.integers(0, 4).map(float), min_size=6, max_size=6), st.integers(1, 4), st.integers(0, 2**16))
def test_v7_otb_equal_energies_and_lengths_give_group_mean_baseline(values, length, seed):
    # equal per-token energies and equal lengths -> B_t = mean_G G_t, so A = r - mean_G r on every valid token
    rewards, groups = t(values), torch.tensor([0, 0, 0, 9, 9, 9])
    mask = torch.zeros(6, 4, dtype=torch.float64)
    mask[:, :length] = 1
    probs = torch.rand(1, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.9 + 0.05
    old, spp = probs.log().expand(6, 4), (probs**2).expand(6, 4)
    adv = otb(rewards, groups, mask=mask, old_logp=old, sum_pi_squared=spp, eps=0.0)
    torch.testing.assert_close(adv, dr_grpo(rewards, groups)[:, None] * mask)


tir_otb = algos.get("advantage", "tir_otb")


def test_tir_otb_aligns_the_kth_policy_token_of_each_trajectory_by_hand():
    # row 0's policy tokens sit at columns 0 and 2 (a tool reply at column 1), row 1's at 0 and 1. Counted over policy
    # tokens both have two, with test_otb_by_hand's energies, so A = [.6, .6] and [-.4, -.4] on their own columns.
    rewards, groups = t([1.0, 0.0]), torch.tensor([3, 3])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    old = torch.log(t([[0.5, 0.9, 0.5], [0.25, 0.25, 0.9]]))
    spp = t([[0.5, 0.3, 0.5], [0.25, 0.25, 0.3]])
    kwargs = dict(mask=mask, old_logp=old, sum_pi_squared=spp, eps=0.0)
    torch.testing.assert_close(tir_otb(rewards, groups, **kwargs), t([[0.6, 0.0, 0.6], [-0.4, -0.4, 0.0]]))
    # aligned by column instead, row 0's second token meets nobody at column 2 (zero tail: A = G = 1)
    torch.testing.assert_close(otb(rewards, groups, **kwargs), t([[0.6, 0.0, 1.0], [-0.4, 0.0, 0.0]]))


def _tir_otb_loop(rewards, groups, mask, old, spp):
    """Reference, as verl's multi-turn loop: each row's policy tokens packed left, the OTB loop, scattered back."""
    lengths = mask.sum(1).long()
    width = int(lengths.max())
    pack = [torch.zeros(len(rewards), width, dtype=torch.float64) for _ in range(3)]
    for i in range(len(rewards)):
        cols = mask[i].nonzero().squeeze(1)
        for k, c in enumerate(cols.tolist()):
            pack[0][i, k], pack[1][i, k], pack[2][i, k] = 1.0, old[i, c], spp[i, c]
    packed = _otb_loop(rewards, groups, *pack)
    out = torch.zeros_like(mask)
    for i in range(len(rewards)):
        for k, c in enumerate(mask[i].nonzero().squeeze(1).tolist()):
            out[i, c] = packed[i, k]
    return out


@PROPS
@given(st.integers(0, 2**16))
def test_tir_otb_matches_verl_multi_turn_loop_and_is_otb_without_holes(seed):
    gen = torch.Generator().manual_seed(seed)
    n, width = 7, 6
    groups = torch.tensor([4, 4, 4, -1, -1, 8, 8])
    rewards = torch.randint(0, 3, (n,), generator=gen).to(torch.float64)
    mask = (torch.rand(n, width, generator=gen) < 0.6).to(torch.float64)
    mask[:, 0] = 1.0  # every trajectory has a policy token
    probs = torch.rand(n, width, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    old, spp = probs.log(), probs**2 + 0.1
    adv = tir_otb(rewards, groups, mask=mask, old_logp=old, sum_pi_squared=spp, eps=0.0)
    torch.testing.assert_close(adv, _tir_otb_loop(rewards, groups, mask, old, spp))
    right = (torch.arange(width)[None, :] < mask.sum(1, keepdim=True)).to(torch.float64)  # no holes: plain OTB
    torch.testing.assert_close(tir_otb(rewards, groups, mask=right, old_logp=old, sum_pi_squared=spp, eps=0.0),
                               otb(rewards, groups, mask=right, old_logp=old, sum_pi_squared=spp, eps=0.0))  # fmt: skip
