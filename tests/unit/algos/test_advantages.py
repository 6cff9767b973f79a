"""Advantage estimators: hand-worked values, a loop reference, and the §13 V1/V5 properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

grpo = algos.get("advantage", "grpo")
dr_grpo = algos.get("advantage", "dr_grpo")
rloo = algos.get("advantage", "rloo")
reinforce_pp_baseline = algos.get("advantage", "reinforce_pp_baseline")

NAN = float("nan")
# Groups: 7 -> {1, 0, 2}; -2 -> {1, NaN} (one valid reward: a singleton); 100 -> {3} (singleton).
# Ids are neither contiguous nor sorted.
REWARDS = torch.tensor([1.0, 0.0, 1.0, NAN, 3.0, 2.0], dtype=torch.float64)
GROUPS = torch.tensor([7, 7, -2, -2, 100, 7])


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_grpo_group_zscore_by_hand():
    # group 7: mean (1+0+2)/3 = 1, sample var (0+1+1)/2 = 1, std 1 -> A = 0, -1, +1.
    # singletons and the NaN reward -> 0.
    adv = grpo(REWARDS, GROUPS, eps=0.0)
    torch.testing.assert_close(adv, t([0.0, -1.0, 0.0, 0.0, 0.0, 1.0]))
    # default eps = 1e-4: A = ±1 / (1 + 1e-4)
    adv = grpo(REWARDS, GROUPS)
    torch.testing.assert_close(adv, t([0.0, -1 / 1.0001, 0.0, 0.0, 0.0, 1 / 1.0001]))


def test_grpo_population_std():
    # population var (0+1+1)/3 = 2/3 -> A = ±1/sqrt(2/3) = ±sqrt(1.5) ≈ ±1.2247
    adv = grpo(REWARDS, GROUPS, eps=0.0, std_mode="population")
    s = math.sqrt(1.5)
    torch.testing.assert_close(adv, t([0.0, -s, 0.0, 0.0, 0.0, s]))


def test_grpo_singleton_raw_keeps_reward():
    # verl convention: a one-reward group gets mean 0, std 1 -> A = r. The NaN reward still gets 0.
    adv = grpo(REWARDS, GROUPS, eps=0.0, singleton="raw")
    torch.testing.assert_close(adv, t([0.0, -1.0, 1.0, 0.0, 3.0, 1.0]))


def test_grpo_batch_scale_is_lite_ppo():
    # valid rewards {1, 0, 1, 3, 2}: mean 7/5 = 1.4; squared deviations .16 + 1.96 + .16 + 2.56 + .36 = 5.2;
    # sample var 5.2/4 = 1.3 -> std_B = sqrt(1.3). Group-centred values 0, -1, 0, 0, 0, +1 are divided by it.
    adv = grpo(REWARDS, GROUPS, scale="batch", eps=0.0)
    s = math.sqrt(1.3)
    torch.testing.assert_close(adv, t([0.0, -1 / s, 0.0, 0.0, 0.0, 1 / s]))


def test_grpo_scale_none_is_dr_grpo():
    # mean-centring only: group 7 -> 1-1, 0-1, 2-1.
    expected = t([0.0, -1.0, 0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(grpo(REWARDS, GROUPS, scale="none"), expected)
    torch.testing.assert_close(dr_grpo(REWARDS, GROUPS), expected)


def test_equal_rewards_give_zero_even_without_eps():
    rewards, groups = t([0.5, 0.5, 0.5, 2.0, 2.0]), torch.tensor([3, 3, 3, 9, 9])
    for scale in ("group", "batch", "none"):
        torch.testing.assert_close(grpo(rewards, groups, scale=scale, eps=0.0), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(rloo(rewards, groups), torch.zeros(5, dtype=torch.float64))


def test_rloo_by_hand():
    # one group {1, 0, 0, 0}: A_0 = 1 - mean(0,0,0) = 1; A_j = 0 - mean(1,0,0) = -1/3.
    adv = rloo(t([1.0, 0.0, 0.0, 0.0]), torch.tensor([5, 5, 5, 5]))
    torch.testing.assert_close(adv, t([1.0, -1 / 3, -1 / 3, -1 / 3]))
    # the mixed batch: group 7 has G = 3 -> 3/2 · (0, -1, +1); singletons and NaN -> 0.
    torch.testing.assert_close(rloo(REWARDS, GROUPS), t([0.0, -1.5, 0.0, 0.0, 0.0, 1.5]))


def test_reinforce_pp_baseline_by_hand():
    # centred: group 7 -> 0, -1, +1; the rest 0 (NaN row excluded). Over the 5 valid sequences:
    # mean 0, sample var (1+1)/4 = 0.5 -> A = ±1/sqrt(0.5) = ±sqrt(2).
    adv = reinforce_pp_baseline(REWARDS, GROUPS)
    s = math.sqrt(2.0)
    torch.testing.assert_close(adv, t([0.0, -s, 0.0, 0.0, 0.0, s]), atol=1e-6, rtol=1e-6)


def test_reinforce_pp_baseline_token_level_counts_length():
    # rows: group 0 {2, 0} -> centred +1, -1; row lengths 3 and 1 -> tokens (+1, +1, +1, -1).
    # mean (3 - 1)/4 = 0.5; deviations .5, .5, .5, -1.5; sample var (3·.25 + 2.25)/3 = 1 -> A = .5 and -1.5.
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = reinforce_pp_baseline(t([2.0, 0.0]), torch.tensor([0, 0]), mask=mask)
    torch.testing.assert_close(adv, t([[0.5, 0.5, 0.5], [-1.5, 0.0, 0.0]]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,option",
    [({"scale": "std"}, "scale"), ({"std_mode": "unbiased"}, "std_mode"), ({"singleton": "one"}, "singleton")],
)
def test_grpo_rejects_bad_options(kwargs, option):
    with pytest.raises(ValueError, match=rf"{option}=.*not allowed.*'"):
        grpo(REWARDS, GROUPS, **kwargs)


def _grpo_loop(rewards, groups, eps):
    """Plain reference: one Python loop over groups (verl's test pattern)."""
    out = torch.zeros_like(rewards)
    for g in set(groups.tolist()):
        idx = [i for i in range(len(rewards)) if groups[i] == g and not math.isnan(rewards[i])]
        if len(idx) < 2:
            continue
        r = rewards[idx]
        out[idx] = (r - r.mean()) / (r.std() + eps)
    return out


def test_grpo_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(40, generator=gen, dtype=torch.float64)
    rewards[torch.randperm(40, generator=gen)[:5]] = NAN
    groups = torch.randint(-50, 50, (7,), generator=gen)[torch.randint(0, 7, (40,), generator=gen)]
    torch.testing.assert_close(grpo(rewards, groups), _grpo_loop(rewards, groups, 1e-4))


# Rewards on a grid of quarters keep the arithmetic exact enough for tight tolerances.
group_batches = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-8, 8).map(lambda x: x / 4), min_size=n, max_size=n),
        st.lists(st.sampled_from([-3, 0, 5, 42]), min_size=n, max_size=n),
    )
)
PROPS = settings(max_examples=30, deadline=None, derandomize=True)


def _centring_estimators():
    return {
        "grpo": lambda r, g: grpo(r, g),
        "grpo_batch": lambda r, g: grpo(r, g, scale="batch"),
        "grpo_population": lambda r, g: grpo(r, g, std_mode="population"),
        "dr_grpo": dr_grpo,
        "rloo": rloo,
    }


@PROPS
@given(group_batches)
def test_group_advantages_sum_to_zero_and_are_shift_invariant(batch):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    for name, fn in _centring_estimators().items():
        adv = fn(rewards, groups)
        sums = torch.zeros(46, dtype=torch.float64).index_add(0, groups + 3, adv)  # ids -3..42
        torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-9, rtol=0, msg=name)
        torch.testing.assert_close(fn(rewards + 3.25, groups), adv, atol=1e-9, rtol=1e-9, msg=name)


@PROPS
@given(group_batches, st.sampled_from([0.25, 0.5, 3.0, 10.0]))
def test_zscores_are_scale_invariant(batch, a):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    for scale in ("group", "batch"):
        adv = grpo(rewards, groups, scale=scale, eps=0.0)
        torch.testing.assert_close(grpo(a * rewards, groups, scale=scale, eps=0.0), adv, atol=1e-9, rtol=1e-9)
    adv = reinforce_pp_baseline(rewards, groups)
    torch.testing.assert_close(reinforce_pp_baseline(a * rewards, groups), adv, atol=1e-6, rtol=1e-6)


@PROPS
@given(group_batches)
def test_grpo_groups_have_unit_sample_std_and_rloo_leaves_one_out(batch):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    adv, loo = grpo(rewards, groups, eps=0.0), rloo(rewards, groups)
    for g in set(batch[1]):
        idx = (groups == g).nonzero().flatten()
        r = rewards[idx]
        if len(idx) == 1 or bool((r == r[0]).all()):
            torch.testing.assert_close(adv[idx], torch.zeros_like(r))  # singleton / equal rewards -> 0
        else:
            torch.testing.assert_close(adv[idx].std(), torch.tensor(1.0, dtype=torch.float64))
        for k, i in enumerate(idx.tolist()):
            others = torch.cat([r[:k], r[k + 1 :]])
            expected = rewards[i] - others.mean() if len(others) else torch.tensor(0.0, dtype=torch.float64)
            torch.testing.assert_close(loo[i], expected)


@PROPS
@given(group_batches, st.integers(0, 2**16))
def test_reinforce_pp_baseline_whitens_valid_tokens(batch, seed):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(rewards), 4, generator=gen) < 0.7
    adv = reinforce_pp_baseline(rewards, groups, mask=mask)
    assert adv.shape == mask.shape
    assert bool((adv[~mask] == 0).all())
    valid = adv[mask]
    if valid.numel() >= 2 and float(valid.std()) > 1e-3:
        torch.testing.assert_close(valid.mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0)
        torch.testing.assert_close(valid.std(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=1e-6)
