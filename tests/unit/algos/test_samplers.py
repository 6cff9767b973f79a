"""Rollout samplers (ALGORITHMS.md §6) and the batch operations the collect stage builds on."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.rollout.batch import Rollouts, cat, keep_groups


def test_dynamic_sampling_keeps_groups_with_reward_spread():
    dynamic_sampling = algos.get("sampler", "dynamic_sampling")
    # groups: 0 = {1, 1} equal; 1 = {0, 1} spread; 2 = {nan, 1}: one valid reward, no spread; 3 = {0.5, 0.5, 0.2}
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 1.0, 0.5, 0.5, 0.2])
    gids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3])
    keep = dynamic_sampling(rewards, gids)
    assert keep.tolist() == [False, False, True, True, False, False, True, True, True]
    # group 3's population std is sqrt(0.02) ≈ 0.141: a threshold of 0.2 drops it too
    assert dynamic_sampling(rewards, gids, min_std=0.2).tolist() == [False] * 2 + [True] * 2 + [False] * 5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=1, max_size=4), min_size=1, max_size=6))
def test_every_kept_group_has_reward_spread_and_groups_are_kept_whole(groups):
    # §13 S1: every kept group has reward std > 0
    rewards = torch.tensor([r for g in groups for r in g])
    gids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    keep = algos.get("sampler", "dynamic_sampling")(rewards, gids)
    for i, g in enumerate(groups):
        kept = keep[gids == i]
        assert bool(kept.all()) or not bool(kept.any())
        assert bool(kept.any()) == (len(set(g)) > 1)


def _batch(prompt_lengths, completions, offset=0):
    """A hand-built batch: prompt p has tokens [100 + p + offset] * length, completion i is `completions[i]`
    (group, length)."""
    lp = max(prompt_lengths)
    prompt_ids = torch.tensor([[0] * (lp - n) + [100 + p + offset] * n for p, n in enumerate(prompt_lengths)])
    prompt_mask = torch.tensor([[0] * (lp - n) + [1] * n for n in prompt_lengths])
    t = max(n for _, n in completions)
    ids = torch.tensor([[10 * g + i + offset] * n + [0] * (t - n) for i, (g, n) in enumerate(completions)])
    mask = torch.tensor([[1] * n + [0] * (t - n) for _, n in completions])
    gids = torch.tensor([g for g, _ in completions])
    rows = [{"prompt": f"p{p + offset}"} for p in range(len(prompt_lengths))]
    texts = [f"c{i + offset}" for i in range(len(completions))]
    return Rollouts(prompt_ids, prompt_mask, ids, mask, gids, torch.zeros(len(completions), dtype=torch.bool),
                    -mask.float(), rows, texts)  # fmt: skip


def _pairs(b):
    """Every completion with its own prompt's tokens (unpadded), row and text: what must survive selection."""
    out = []
    for i in range(b.num_completions):
        g = int(b.group_ids[i])
        prompt = b.prompt_ids[g][b.prompt_mask[g].bool()].tolist()
        comp = b.completion_ids[i][b.completion_mask[i].bool()].tolist()
        out.append((prompt, comp, b.rows[g]["prompt"], b.texts[i]))
    return out


def test_keep_groups_and_cat_keep_each_completion_with_its_prompt():
    a = _batch([2, 3, 1], [(0, 1), (0, 2), (1, 3), (1, 1), (2, 2), (2, 2)])
    b = _batch([4, 1], [(0, 2), (0, 1), (1, 4), (1, 1)], offset=50)
    kept = keep_groups(a, torch.tensor([False, False, True, True, True, True]))
    assert kept.prompt_ids.shape[0] == 2 and kept.group_ids.tolist() == [0, 0, 1, 1]
    assert _pairs(kept) == _pairs(a)[2:]
    merged = cat([kept, b], pad_id=0)
    assert merged.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert _pairs(merged) == _pairs(a)[2:] + _pairs(b)
    assert merged.prompt_ids.shape == (4, 4) and merged.completion_ids.shape == (8, 4)
