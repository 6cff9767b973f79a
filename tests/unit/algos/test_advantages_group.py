"""Group baselines: group_mean_batch_std, opo, gpg, grpo_passk, p3o_pairwise (hand-worked values and §13 V1, V4)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

grpo = algos.get("advantage", "grpo")
dr_grpo = algos.get("advantage", "dr_grpo")
rloo = algos.get("advantage", "rloo")
group_mean_batch_std = algos.get("advantage", "group_mean_batch_std")
opo = algos.get("advantage", "opo")
gpg = algos.get("advantage", "gpg")
grpo_passk = algos.get("advantage", "grpo_passk")
p3o_pairwise = algos.get("advantage", "p3o_pairwise")

NAN = float("nan")
# Groups: 7 -> {1, 0, 2} (rows 0, 1, 5); -2 -> {1, NaN} (a singleton); 100 -> {3} (a singleton).
# Ids are neither contiguous nor sorted.
REWARDS = torch.tensor([1.0, 0.0, 1.0, NAN, 3.0, 2.0], dtype=torch.float64)
GROUPS = torch.tensor([7, 7, -2, -2, 100, 7])
PROPS = settings(max_examples=30, deadline=None, derandomize=True)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_group_mean_batch_std_by_hand():
    # valid rewards {1, 0, 1, 3, 2}: mean 1.4, squared deviations .16 + 1.96 + .16 + 2.56 + .36 = 5.2,
    # sample var 5.2/4 = 1.3. Group 7 centred: 0, -1, +1 -> divided by sqrt(1.3); singletons and NaN -> 0.
    s = math.sqrt(1.3)
    torch.testing.assert_close(group_mean_batch_std(REWARDS, GROUPS, eps=0.0), t([0, -1 / s, 0, 0, 0, 1 / s]))
    torch.testing.assert_close(group_mean_batch_std(REWARDS, GROUPS), t([0, -1 / (s + 1e-4), 0, 0, 0, 1 / (s + 1e-4)]))
    torch.testing.assert_close(group_mean_batch_std(REWARDS, GROUPS), grpo(REWARDS, GROUPS, scale="batch"))


def test_group_mean_batch_std_equal_rewards_and_bad_option():
    rewards, groups = t([0.5, 0.5, 2.0, 2.0]), torch.tensor([3, 3, 9, 9])
    torch.testing.assert_close(group_mean_batch_std(rewards, groups, eps=0.0), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="std_mode"):
        group_mean_batch_std(rewards, groups, std_mode="biased")


# Row lengths 1, 3, (2), (1), (3), 2; row 5 has an interior masked token and still counts 2 tokens.
OPO_MASK = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 1]])


def test_opo_length_weighted_baseline_by_hand():
    # group 7: b = (1·1 + 3·0 + 2·2)/(1 + 3 + 2) = 5/6 -> A = 1/6, -5/6, 7/6. Singletons and NaN -> 0.
    adv = opo(REWARDS, GROUPS, mask=OPO_MASK)
    torch.testing.assert_close(adv, t([1 / 6, -5 / 6, 0, 0, 0, 7 / 6]))
    # verl's convention: a singleton's baseline is 0, so A = r (row 2: 1, row 4: 3); the NaN row stays 0.
    adv = opo(REWARDS, GROUPS, mask=OPO_MASK, singleton="raw")
    torch.testing.assert_close(adv, t([1 / 6, -5 / 6, 1, 0, 3, 7 / 6]))


def test_opo_needs_mask_and_handles_empty_group():
    with pytest.raises(ValueError, match="mask"):
        opo(REWARDS, GROUPS)
    # every response of the group is empty: Σ|y| = 0, fall back to the group mean 0.5 -> ±0.5
    adv = opo(t([1.0, 0.0]), torch.tensor([4, 4]), mask=torch.zeros(2, 3))
    torch.testing.assert_close(adv, t([0.5, -0.5]))


def test_gpg_by_hand():
    # B = 5 valid rewards, of which 4 are non-zero -> α = 5/4. Group 7 centred 0, -1, +1 -> 0, -1.25, +1.25.
    torch.testing.assert_close(gpg(REWARDS, GROUPS), t([0, -1.25, 0, 0, 0, 1.25]))
    torch.testing.assert_close(gpg(REWARDS, GROUPS, f_norm=2.0), t([0, -0.625, 0, 0, 0, 0.625]))
    # singleton="raw": α·r for the two singletons (1.25·1, 1.25·3)
    torch.testing.assert_close(gpg(REWARDS, GROUPS, singleton="raw"), t([0, -1.25, 1.25, 0, 3.75, 1.25]))
    # all rewards 0: α = 4/max(1, 0) = 4, but every centred value is 0
    torch.testing.assert_close(gpg(torch.zeros(4), torch.tensor([0, 0, 1, 1])), torch.zeros(4))
    with pytest.raises(ValueError, match="f_norm"):
        gpg(REWARDS, GROUPS, f_norm=0.0)


# idx:     0    1    2    3    4    5    6    7    8    9   10
PK_R = t([0.5, 3.0, 2.0, 0.0, 1.0, 1.0, 5.0, NAN, 1.0, NAN, 1.0])
PK_G = torch.tensor([4, -1, 4, 2, 9, 9, 2, -1, 4, 2, 2])


def test_grpo_passk_by_hand():
    # group 4 {0.5, 2, 1}: best row 2, gap 2 - 1 = 1. group 2 {0, 5, 1} (+NaN): best row 6, gap 5 - 1 = 4.
    # group 9 {1, 1}: tie for the maximum, gap 0. group -1 {3, NaN}: a singleton -> 0.
    adv = grpo_passk(PK_R, PK_G, divide_by_std=False)
    torch.testing.assert_close(adv, t([0, 0, 1.0, 0, 0, 0, 4.0, 0, 0, 0, 0]))
    # with std: group 4 mean 7/6, squared deviations 4/9 + 25/36 + 1/36 = 7/6, sample var 7/12;
    # group 2 mean 2, squared deviations 4 + 9 + 1 = 14, sample var 7.
    adv = grpo_passk(PK_R, PK_G, eps=0.0)
    expected = t([0, 0, 1 / math.sqrt(7 / 12), 0, 0, 0, 4 / math.sqrt(7), 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected)


def test_p3o_pairwise_by_hand():
    # pairs: {1, 0} -> ±0.5; {0.2, 0.7} -> ∓0.25. A group of three {1, 0, 2} averages over partners:
    # ½·rloo = ½·(3/2)·(0, -1, +1) = (0, -0.75, 0.75). A singleton -> 0.
    rewards = t([1.0, 0.0, 0.2, 0.7, 1.0, 0.0, 2.0, 5.0])
    groups = torch.tensor([3, 3, 8, 8, -1, -1, -1, 11])
    torch.testing.assert_close(p3o_pairwise(rewards, groups), t([0.5, -0.5, -0.25, 0.25, 0, -0.75, 0.75, 0]))


def _passk_loop(rewards, groups):
    """Reference: verl's per-group loop (torch.topk) without the std, singletons and NaN -> 0."""
    out = torch.zeros_like(rewards)
    for g in set(groups.tolist()):
        idx = [i for i in range(len(rewards)) if groups[i] == g and not math.isnan(rewards[i])]
        if len(idx) < 2:
            continue
        top, where = torch.topk(rewards[idx], 2)
        if top[0] > top[1]:  # ties give 0 whichever index topk picks
            out[idx[int(where[0])]] = top[0] - top[1]
    return out


group_batches = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-8, 8).map(lambda x: x / 4), min_size=n, max_size=n),
        st.lists(st.sampled_from([-3, 0, 5, 42]), min_size=n, max_size=n),
    )
)


def _group_sums(adv, groups):
    return torch.zeros(46, dtype=adv.dtype).index_add(0, groups + 3, adv)  # ids -3..42


@PROPS
@given(group_batches, st.sampled_from([0.25, 3.0]), st.sampled_from([-1.5, 2.25]))
def test_v1_group_sums_vanish_and_invariances(batch, a, b):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    for name, fn in {"group_mean_batch_std": group_mean_batch_std, "gpg": gpg, "p3o": p3o_pairwise}.items():
        sums = _group_sums(fn(rewards, groups), groups)
        torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-9, rtol=0, msg=name)
    adv = group_mean_batch_std(rewards, groups, eps=0.0)
    torch.testing.assert_close(group_mean_batch_std(a * rewards + b, groups, eps=0.0), adv, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(p3o_pairwise(rewards + b, groups), p3o_pairwise(rewards, groups))
    torch.testing.assert_close(p3o_pairwise(rewards, groups), 0.5 * rloo(rewards, groups))


@PROPS
@given(group_batches, st.integers(1, 5))
def test_v4_opo_with_equal_lengths_is_dr_grpo(batch, length):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    mask = torch.zeros(len(rewards), 6)
    mask[:, :length] = 1
    torch.testing.assert_close(opo(rewards, groups, mask=mask), dr_grpo(rewards, groups), atol=1e-12, rtol=0)


@PROPS
@given(group_batches)
def test_v4_passk_one_nonzero_per_group_equal_to_the_gap(batch):
    rewards, groups = t(batch[0]), torch.tensor(batch[1])
    adv = grpo_passk(rewards, groups, divide_by_std=False)
    torch.testing.assert_close(adv, _passk_loop(rewards, groups))
    for g in set(batch[1]):
        assert int((adv[groups == g] != 0).sum()) <= 1
    # with the std: the same row, divided by std_G + eps
    scaled = grpo_passk(rewards, groups, eps=1e-6)
    assert bool(((scaled != 0) == (adv != 0)).all())
