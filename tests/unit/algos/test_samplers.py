"""Rollout samplers (ALGORITHMS.md §6) and the batch operations the collect stage builds on."""

import pytest
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


def test_hpt_switches_the_prompts_with_no_solved_rollout():
    hpt = algos.get("sampler", "hpt")
    # groups: 0 = {0, 0} none solved; 1 = {1, 0} one; 2 = {nan, 0}: unscored is not solved; 3 = {0.5, 0.2}
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, float("nan"), 0.0, 0.5, 0.2])
    gids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert hpt(rewards, gids).tolist() == [True, True, False, False, True, True, False, False]
    # a gate of 1 also switches group 1 (one solved) but not group 3 (two); solved only above 0.3: group 3 has one
    assert hpt(rewards, gids, switch_gate=1).tolist() == [True] * 6 + [False] * 2
    assert hpt(rewards, gids, solved_above=0.3).tolist() == [True] * 2 + [False] * 2 + [True] * 2 + [False] * 2
    assert algos.entry("sampler", "hpt").facts == {"demonstrations"}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=1, max_size=6), min_size=1, max_size=5),
       st.integers(0, 1000))  # fmt: skip
def test_red_drop_leaves_no_more_negatives_than_positives(groups, seed):
    # §13 S1: after red_drop, #neg <= #pos in every group; positives and at-mean completions are all kept, and a
    # group that had too many negatives keeps exactly #pos of them
    red_drop = algos.get("sampler", "red_drop")
    rewards = torch.tensor([r for g in groups for r in g])
    gids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    keep = red_drop(rewards, gids, generator=torch.Generator().manual_seed(seed))
    for i, g in enumerate(groups):
        r, k = torch.tensor(g), keep[gids == i]
        neg, pos = r < r.mean(), r > r.mean()
        assert bool(k[~neg].all())
        assert int((k & neg).sum()) == min(int(neg.sum()), int(pos.sum()))


def test_red_drop_on_a_hand_worked_batch():
    red_drop = algos.get("sampler", "red_drop")
    # group 0 = {1, 0, 0, 0}: 1 positive, keep 1 of the 3 negatives; group 1 = {1, 1, 0}: balanced already;
    # group 2 = {nan, 1, 0, 0}: the unscored completion stays, one of the two negatives goes
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, float("nan"), 1, 0, 0])
    gids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    seen = set()
    for seed in range(20):
        keep = red_drop(rewards, gids, generator=torch.Generator().manual_seed(seed))
        assert keep[[0, 4, 5, 6, 7, 8]].all() and int(keep[1:4].sum()) == 1 and int(keep[9:].sum()) == 1
        seen.add(tuple(keep[1:4].tolist()))
    assert len(seen) == 3  # each negative can be the one kept


NAN = float("nan")


def test_ghpo_hints_only_groups_where_no_rollout_is_correct():
    # §13 S2: the trigger is the accuracy column (reward function 0) <= 0 for every rollout of the group; a group that
    # nothing scored is left alone; the combined reward (here a format bonus everywhere) plays no part
    ghpo = algos.get("sampler", "ghpo")
    gids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    acc = torch.tensor([0.0, 0.0, 1.0, 0.0, NAN, NAN, -1.0, NAN])
    components = torch.stack([acc, torch.full_like(acc, 0.5)], 1)
    hint = ghpo(torch.full_like(acc, 0.5), gids, reward_components=components)
    assert hint.tolist() == [True, True, False, False, False, False, True, True]


def test_with_hint_appends_the_ghpo_text_and_a_fraction_of_the_solution():
    from unipo.rollout.inject import GHPO_HINT, with_hint

    row = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}], "solution": "abcdefgh",
           "answer": "8"}  # fmt: skip
    for fraction, part in ((0.25, "ab"), (0.5, "abcd"), (0.75, "abcdef")):
        hinted = with_hint(row, fraction)
        assert hinted["prompt"][1]["content"] == "Q?" + GHPO_HINT + part
        assert hinted["prompt"][0] == row["prompt"][0] and hinted["answer"] == "8"
    assert row["prompt"][1]["content"] == "Q?"  # the row itself is not changed
    # a plain-text prompt, and the answer as the solution when there is none
    assert with_hint({"prompt": "Q?", "answer": "1234"}, 0.5)["prompt"] == "Q?" + GHPO_HINT + "12"
    assert GHPO_HINT.startswith("\n The following text is the beginning part of the answer")


def test_dr_po_prefix_lengths_are_uniform_on_one_to_l_minus_one():
    dr_po = algos.get("sampler", "dr_po")
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5] * 4000 + [1, 0])
    h = dr_po(lengths, generator=g)
    assert h[-2:].tolist() == [0, 0]  # L < 2: no reset (TRIL RollinProcessor)
    counts = torch.bincount(h[:-2], minlength=6)
    assert counts[0] == 0 and counts[5] == 0  # never the whole reference, never empty when reset
    assert ((counts[1:5] / 4000 - 0.25).abs() < 0.03).all()  # uniform on 1..4
    assert bool((dr_po(lengths, generator=g, reset_prob=0.0) == 0).all())  # β = 0: standard rollouts only
    mixed = dr_po(torch.full((4000,), 5), generator=g, reset_prob=0.3)
    assert abs(float((mixed > 0).float().mean()) - 0.3) < 0.03


def test_igpo_inpaint_gives_sorted_ratios_to_all_wrong_groups_only():
    igpo = algos.get("sampler", "igpo_inpaint")
    gids = torch.tensor([1, 0, 1, 0, 2, 1, 0, 2])  # groups interleaved: the sort is per group, in completion order
    acc = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    r = igpo(acc, gids, reward_components=acc[:, None], generator=torch.Generator().manual_seed(3))
    assert bool((r[gids == 0] == 0).all())  # group 0 has a correct rollout
    for g in (1, 2):
        values = r[gids == g]
        assert bool(((values >= 0.2) & (values <= 0.6)).all())
        assert values.tolist() == sorted(values.tolist())


def test_a_forced_prefix_starts_each_completion_and_is_out_of_the_loss(tiny_model_dir):
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.models.logprobs import completion_logprobs
    from unipo.rollout.hf import sample

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    rows = [{"prompt": "say 7:"}, {"prompt": "count to 3:"}]
    forced = [[], [5, 6, 7], [8], []]
    g = torch.Generator().manual_seed(0)
    batch = sample(model, tok, rows, n=2, max_new_tokens=6, generator=g, forced=forced)
    for i, prefix in enumerate(forced):
        assert batch.completion_ids[i, : len(prefix)].tolist() == prefix
        assert batch.forced[i].tolist() == [j < len(prefix) for j in range(batch.forced.shape[1])]
        assert batch.loss_mask[i, : len(prefix)].sum() == 0 and bool((batch.rollout_logp[i, : len(prefix)] == 0).all())
    # the policy continued from the forced tokens: the behaviour log-probs of the sampled tokens are the ones the update
    # computes on the finished sequence (the forced tokens are in the context)
    logp, _ = completion_logprobs(model, batch)
    sampled = batch.loss_mask.bool()
    torch.testing.assert_close(logp[sampled], batch.rollout_logp[sampled], atol=1e-4, rtol=1e-4)
    # prefix length 0 everywhere is a standard rollout, token for token (§13 S2)
    plain = sample(model, tok, rows, n=2, max_new_tokens=6, generator=torch.Generator().manual_seed(1))
    empty = sample(model, tok, rows, n=2, max_new_tokens=6, generator=torch.Generator().manual_seed(1),
                   forced=[[], [], [], []])  # fmt: skip
    assert torch.equal(plain.completion_ids, empty.completion_ids) and not bool(empty.forced.any())
    torch.testing.assert_close(plain.rollout_logp, empty.rollout_logp)


def test_knapsack_value_on_hand_worked_points():
    from unipo.algos.samplers import knapsack_value

    n = torch.tensor([1, 4, 8])
    assert knapsack_value(n, torch.tensor(0.0)).tolist() == [0.0, 0.0, 0.0]  # §13 S1: Value(N, 0) = Value(N, 1) = 0
    assert knapsack_value(n, torch.tensor(1.0)).tolist() == [0.0, 0.0, 0.0]
    # N = 1 can never show both outcomes; N = 4, p = 1/2: (1 - 2/16) · 1/2 · 1/4 = 0.109375
    assert knapsack_value(torch.tensor([1, 4]), torch.tensor(0.5)).tolist() == [0.0, 0.109375]


def _brute_force(p, total, n_min, n_max):
    from itertools import product

    from unipo.algos.samplers import knapsack_value

    best, arg = -1.0, None
    for combo in product(range(n_min, n_max + 1), repeat=len(p)):
        if sum(combo) == total:
            v = float(knapsack_value(torch.tensor(combo), p).sum())
            if v > best + 1e-12:
                best, arg = v, combo
    return best, arg


@given(st.lists(st.floats(0, 1), min_size=1, max_size=4), st.integers(2, 5))
@settings(max_examples=40, deadline=None)
def test_knapsack_budgets_are_optimal_sum_to_the_total_and_beat_the_uniform_split(rates, per_prompt):
    from unipo.algos.samplers import knapsack_value

    knapsack = algos.get("sampler", "knapsack_rl")
    p = torch.tensor(rates, dtype=torch.float64)
    total, n_max = per_prompt * len(rates), per_prompt + 4
    budgets = knapsack(p, total=total, n_min=2, n_max=n_max)
    assert int(budgets.sum()) == total and bool(((budgets >= 2) & (budgets <= n_max)).all())  # §13 S1
    value = float(knapsack_value(budgets, p).sum())
    assert value >= float(knapsack_value(torch.full_like(budgets, per_prompt), p).sum()) - 1e-12
    # optimal up to the DP's tie-break (it subtracts 1e-12·k² per prompt to prefer even splits among equal values)
    assert value == pytest.approx(_brute_force(p, total, 2, n_max)[0], abs=1e-12 * len(rates) * n_max**2)


def test_knapsack_moves_rollouts_from_settled_prompts_to_uncertain_ones():
    knapsack = algos.get("sampler", "knapsack_rl")
    # always solved, never solved, and two uncertain prompts: the settled ones keep the minimum
    budgets = knapsack(torch.tensor([1.0, 0.0, 0.3, 0.6]), total=32, n_min=2)
    assert budgets[:2].tolist() == [2, 2] and int(budgets[2:].sum()) == 28
    assert budgets[2] > budgets[3]  # p(1-p)² is larger at 0.3 than at 0.6
    # equal estimates (e.g. all prompts unseen, at the prior): the even split
    assert knapsack(torch.full((4,), 0.5), total=32).tolist() == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="cannot share"):
        knapsack(torch.full((4,), 0.5), total=6, n_min=2)


def test_arpo_replaces_the_last_rollout_of_failed_groups_with_a_stored_success():
    arpo = algos.get("sampler", "arpo_gui_replay")
    gids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3])
    first = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, NAN, 0.0, 0.0])
    stored = torch.tensor([True, True, True, False])
    # group 0 failed and has a stored success: its last rollout; group 1 succeeded; group 2 failed on its scored
    # rollout (the NaN is unscored); group 3 failed with nothing stored
    assert arpo(first, gids, stored).nonzero().squeeze(-1).tolist() == [2, 6]
    assert arpo(first, gids, stored, success_above=1.0).nonzero().squeeze(-1).tolist() == [2, 4, 6]


def test_pf_ppo_batch_resampling_follows_the_verl_weights():
    pf = algos.get("sampler", "pf_ppo")
    gids = torch.tensor([0, 0, 1, 1])
    rewards = torch.tensor([0.0, 1.0, -2.0, NAN])
    g = torch.Generator().manual_seed(0)
    counts = torch.stack([pf(rewards, gids, generator=g) for _ in range(2000)])
    assert bool((counts.sum(1) == 4).all())  # N samples drawn with replacement
    share = counts.sum(0).double() / counts.sum()
    # pow, p = 2: weights (1e-8, 1, 4, 1e-8): shares 0, 1/5, 4/5, 0 (the unscored sample is never drawn)
    assert share[0] < 1e-3 and share[3] < 1e-3 and abs(float(share[1]) - 0.2) < 0.02
    counts = torch.stack([pf(rewards, gids, generator=g, method="max_random") for _ in range(2000)])
    share = counts.sum(0).double() / counts.sum()  # 0.1, 0.4 (the max), 0.1, ~0: 1/6, 2/3, 1/6
    assert abs(float(share[1]) - 2 / 3) < 0.03 and abs(float(share[0]) - 1 / 6) < 0.03 and share[3] < 1e-3
    counts = pf(rewards, gids, generator=g, method="max_min")
    assert counts[0] == 0 and counts[3] == 0 and int(counts[1] + counts[2]) == 4  # only the max (1) and the min (-2)


def test_pf_ppo_prompt_subsets_are_the_papers():
    pf = algos.get("sampler", "pf_ppo")
    gids = torch.tensor([0, 0, 0, 1, 1, 1])
    rewards = torch.tensor([0.2, 0.9, 0.1, 0.5, NAN, 0.7])
    assert pf(rewards, gids, scope="prompt", method="bon").tolist() == [0, 1, 0, 0, 0, 1]
    assert pf(rewards, gids, scope="prompt", method="bw").tolist() == [0, 1, 1, 1, 0, 1]
    br = pf(rewards, gids, scope="prompt", method="br", generator=torch.Generator().manual_seed(0))
    assert br[[1, 5]].tolist() == [1, 1] and int(br[[0, 2]].sum()) == 1 and br[4] == 0 and int(br.sum()) == 4
    with pytest.raises(ValueError, match="scope 'prompt'"):
        pf(rewards, gids, scope="prompt", method="pow")


def test_low_var_group_filter_drops_groups_below_the_threshold():
    f = algos.get("sampler", "low_var_group_filter")
    # population stds: group 0 {0.5, 0.52} -> 0.01; group 1 {0.2, 0.4} -> 0.1; group 2 {0.3, nan} -> one score
    rewards = torch.tensor([0.5, 0.52, 0.2, 0.4, 0.3, float("nan")])
    gids = torch.tensor([0, 0, 1, 1, 2, 2])
    assert f(rewards, gids).tolist() == [False, False, True, True, False, False]
    assert f(rewards, gids, min_std=0.1 + 1e-6).tolist() == [False] * 6
    assert f(rewards, gids, min_std=0.005).tolist() == [True] * 4 + [False] * 2


def _variance(values):
    return float(torch.tensor(values, dtype=torch.float64).var(unbiased=False))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=2, max_size=7), min_size=1, max_size=4),
       st.floats(0.0, 1.0))  # fmt: skip
def test_d3s_keeps_the_maximum_variance_subset_of_the_scheduled_size(groups, progress):
    import itertools

    rewards = torch.tensor([r / 6 for g in groups for r in g])
    gids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    keep = algos.get("sampler", "d3s_sample_recon")(rewards, gids, progress=progress, keep_start=0.4)
    for i, g in enumerate(groups):
        kept = rewards[(gids == i) & keep].tolist()
        k = min(len(g), max(2, round(len(g) * (0.4 + 0.6 * progress))))
        assert len(kept) == k
        best = max(_variance(c) for c in itertools.combinations([r / 6 for r in g], k))  # brute force
        assert _variance(kept) == pytest.approx(best, abs=1e-6)  # the rewards are float32


def test_d3s_on_a_hand_worked_group():
    d3s = algos.get("sampler", "d3s_sample_recon")
    # 6 rollouts, rho = 0.5 at the start: k = 3 -> the extremes {0, 1, 1} (j = 1: var 2/9) beat {0, 0.2, 1} (j = 2)
    rewards = torch.tensor([0.2, 1.0, 0.5, 0.0, 1.0, 0.6])
    keep = d3s(rewards, torch.zeros(6, dtype=torch.long))
    assert keep.tolist() == [False, True, False, True, True, False]
    assert d3s(rewards, torch.zeros(6, dtype=torch.long), progress=1.0).all()  # relaxed to the whole group


def test_gt_in_group_marks_the_last_rollout_of_each_chosen_group():
    gt = algos.get("sampler", "gt_in_group_recon")
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, float("nan")])
    gids = torch.tensor([0, 0, 0, 1, 1, 2])
    assert gt(rewards, gids).tolist() == [False, False, True, False, True, True]
    accuracy = rewards[:, None]
    assert gt(rewards, gids, reward_components=accuracy, when="unsolved").tolist() == [False] * 4 + [True, False]
    with pytest.raises(ValueError, match="when="):
        gt(rewards, gids, when="sometimes")


def test_aepo_keeps_the_first_positive_samples_up_to_its_budget():
    aepo = algos.get("sampler", "aepo")
    adv = torch.tensor([0.5, -1.0, 0.04, 1.2, 0.06, 0.9, 0.3])  # above 0.05: indices 0, 3, 4, 5, 6
    assert aepo(adv, 0.2).tolist() == [True, False, False, True, True, True, True]  # H <= H*: all 5 (<= 60)
    assert aepo(adv, 0.2, max_samples=3).tolist() == [True, False, False, True, True, False, False]
    assert aepo(adv, 0.7, max_samples=3).tolist() == [True] + [False] * 6  # H > H*: min(60, 5) // 2 -> 3 // 2 = 1
    assert aepo(adv, 0.7).tolist() == [True, False, False, True, False, False, False]  # 5 // 2 = 2
    from unipo.algos.samplers import aepo_temperature

    params = algos.entry("sampler", "aepo").params
    assert aepo_temperature(0.0, params) == 1.2 and aepo_temperature(0.5, params) == 1.2
    assert aepo_temperature(0.51, params) == 0.8


def test_igrpo_marks_each_prompts_best_scored_draft():
    igrpo = algos.get("sampler", "igrpo")
    nan = float("nan")
    rewards = torch.tensor([0.2, 0.9, 0.9, nan, nan, 0.0, -1.0, nan])
    gids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    # group 0: the first of the tied best; group 1: nothing scored, no draft; group 2: 0.0 beats -1.0 and NaN
    assert igrpo(rewards, gids).tolist() == [False, True, False, False, False, True, False, False]


def test_scaf_hint_levels_go_from_least_to_most_help():
    from unipo.rollout.inject import scaf_hint_levels

    row = {"prompt": [{"role": "user", "content": "Q?"}], "answer": "a b c d e"}
    row |= {"knowledge_components_parts": ["k1", "k2"], "solution_breakdown_parts": ["s1", "s2", "s3", "s4", "s5"]}
    tiers = ("knowledge_components_parts", "solution_breakdown_parts")
    texts = [r["prompt"][0]["content"] for r in scaf_hint_levels(row, tiers)]
    assert texts == ["Q?\nKnowledge Hints: k1", "Q?\nKnowledge Hints: k1 k2", "Q?\nSolution Hints: s1",
                     "Q?\nSolution Hints: s1 s2", "Q?\nSolution Hints: s1 s2 s3",
                     "Q?\nSolution Hints: s1 s2 s3 s4"]  # fmt: skip
    assert row["prompt"][0]["content"] == "Q?"  # the row itself is not changed
    # no tier columns: the reference solution's 5 words in 4 cumulative parts (1, 2, 4, 5 words)
    bare = {"prompt": "Q?", "answer": "a b c d e"}
    assert [r["prompt"] for r in scaf_hint_levels(bare, tiers)] == [
        "Q?\nSolution Hints: a", "Q?\nSolution Hints: a b", "Q?\nSolution Hints: a b c d",
        "Q?\nSolution Hints: a b c d e"]  # fmt: skip


def test_xrpo_allocator_gives_each_rollout_where_the_interval_shrinks_most_by_hand():
    from unipo.algos.samplers import xrpo_alloc_recon

    # s = √(p(1−p)) = 0.5, 0, 0.3; h(n) = t_{0.975,n−1}·s/√n. From n = 2 the shrink per unit s is 12.706/√2 −
    # 4.303/√3 = 6.500, then 4.303/√3 − 3.182/2 = 0.893, then 3.182/2 − 2.776/√5 = 0.350: the four extra rollouts
    # go to prompt 0 (3.25), prompt 2 (1.95), prompt 0 (0.447), prompt 2 (0.268 > 0.175); p = 0 keeps n_min
    out = xrpo_alloc_recon(torch.tensor([0.5, 0.0, 0.1]), total=10)
    assert out.tolist() == [4, 2, 4] and out.dtype == torch.long
    # no spread anywhere: the budget is spread evenly, the earlier prompt first
    assert xrpo_alloc_recon(torch.tensor([0.0, 1.0, 0.0]), total=10).tolist() == [4, 3, 3]
    assert xrpo_alloc_recon(torch.tensor([0.5, 0.5]), total=10, n_max=6).tolist() == [5, 5]
    assert xrpo_alloc_recon(torch.tensor([0.5, 0.0]), total=10, n_max=6).tolist() == [6, 4]
    with pytest.raises(ValueError, match="cannot share"):
        xrpo_alloc_recon(torch.tensor([0.5, 0.5]), total=3)


def test_arpo_branches_where_the_entropy_rose_and_restarts_with_the_rest():
    # one prompt, two initial trajectories of turns 0, 1, 2 (the environment's token between them is -1)
    turn_ids = torch.tensor([[0, 0, 0, -1, 1, 1, -1, 2], [0, 0, 0, -1, 1, 1, -1, 2]])
    # window 2: H_0 = mean of the first two tokens of turn 0 = 2 (the third, 9, is outside the window)
    entropy = torch.tensor([[2.0, 2.0, 9.0, 0.0, 3.0, 3.0, 0.0, 1.0], [2.0, 2.0, 9.0, 0.0, 2.0, 2.0, 0.0, 4.0]])
    fn = algos.get("sampler", "arpo_branch")
    kw = {"window": 2, "alpha": 0.4, "beta": 0.2, "beam_size": 2}
    out = fn(entropy, turn_ids, torch.zeros(2, dtype=torch.long), 3, generator=torch.Generator().manual_seed(0), **kw)
    # ΔH: (3 − 2)/2 = 0.5 and (1 − 2)/2 = −0.5 for the first; 0 and 1 for the second -> P = 0.5, 0.3 | 0.4, 0.6
    # draws in the order t = 1 (trajectory 0, 1), then t = 2 (0, 1), while the budget of 3 lasts
    u = torch.rand(4, generator=torch.Generator().manual_seed(0)).tolist()
    expected = torch.zeros(2, 3, dtype=torch.long)
    left = 3
    for (i, t), p, draw in zip([(0, 1), (1, 1), (0, 2), (1, 2)], [0.5, 0.4, 0.3, 0.6], u, strict=True):
        if left and draw < p:
            expected[i, t], left = 1, left - 1
    expected[0, 0] = left  # the rest restarts from the prompt
    assert torch.equal(out, expected) and int(out.sum()) == 3
    # P = 1 everywhere: the budget goes to the earliest turns in order; P = 0: all of it restarts
    always = fn(entropy, turn_ids, torch.zeros(2, dtype=torch.long), 3, alpha=1.0, beta=0.0)
    assert always.tolist() == [[0, 1, 1], [0, 1, 0]]
    never = fn(entropy, turn_ids, torch.zeros(2, dtype=torch.long), 3, alpha=0.0, beta=0.0)
    assert never.tolist() == [[3, 0, 0], [0, 0, 0]]
    assert "entropy_branch" in algos.entry("sampler", "arpo_branch").facts


def test_r3l_retries_the_first_failures_of_each_group_from_a_cut_in_range():
    r3l = algos.get("sampler", "r3l_retry_recon")
    # group 0: failures at 0, 2, 3 (1 solved) -> the first two, 0 and 2; group 1: failure at 4 only (NaN: unscored,
    # a failure); group 2: all solved
    acc = torch.tensor([0.0, 1.0, 0.0, -1.0, float("nan"), 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    cuts = r3l(acc, groups, reward_components=acc[:, None], generator=torch.Generator().manual_seed(0),
               max_retries=2, cut_low=0.1, cut_high=0.3)  # fmt: skip
    assert (~cuts.isnan()).nonzero().squeeze(-1).tolist() == [0, 2, 4]
    assert bool(((cuts[[0, 2, 4]] >= 0.1) & (cuts[[0, 2, 4]] <= 0.3)).all())
    with pytest.raises(ValueError, match="cut_low <= cut_high < 1"):
        r3l(acc, groups, cut_low=0.5, cut_high=0.2)
