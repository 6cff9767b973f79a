"""SPO-chain segment advantages and cut states (ALGORITHMS.md §1.2), on hand-worked values."""

import math
import statistics

import pytest
import torch

from unipo.algos.advantages import spo_cut_states, spo_segment

NAN = math.nan
# two completions: row 0 fills T = 6, row 1 has 4 tokens
PROBS = torch.tensor([[0.5, 0.95, 0.3, 0.99, 0.2, 0.6], [0.95, 0.5, 0.5, 0.5, 0.1, 0.1]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
VALUES = torch.tensor([[0.4, NAN, 0.6, NAN, 0.2, 0.5, NAN], [NAN, NAN, 0.25, NAN, NAN, NAN, NAN]])
REWARDS = torch.tensor([1.0, 0.0])


def _adv(**kw):
    return spo_segment(REWARDS, torch.tensor([0, 0]), mask=MASK, segment_values=VALUES, rollout_logp=PROBS.log(), **kw)


def test_cut_states_are_every_kth_low_probability_token():
    cuts = spo_cut_states(PROBS.log(), MASK, prob_threshold=0.9, cut_interval=1)
    assert cuts.shape == (2, 7)
    assert cuts[0].nonzero().flatten().tolist() == [0, 2, 4, 5]
    assert cuts[1].nonzero().flatten().tolist() == [1, 2, 3]  # tokens 4, 5 are padding
    cuts = spo_cut_states(PROBS.log(), MASK, prob_threshold=0.9, cut_interval=2)
    assert cuts[0].nonzero().flatten().tolist() == [0, 4] and cuts[1].nonzero().flatten().tolist() == [1, 3]


def test_segment_advantage_is_the_value_gained_over_the_segment_on_low_probability_tokens():
    adv = _adv(whiten=False)
    # row 0: states 0, 2, 4, 5 valued, the end (6) by the reward 1: segments [0,2) +0.2, [2,4) -0.4, [4,5) +0.3,
    # [5,6) +0.5; tokens 1 and 3 were sampled with p > 0.9 and get 0
    torch.testing.assert_close(adv[0], torch.tensor([0.2, 0.0, -0.4, 0.0, 0.3, 0.5]))
    # row 1: no base before state 2 (tokens 0, 1 get 0), then 0 - 0.25 up to the end at 4; padding 0
    torch.testing.assert_close(adv[1], torch.tensor([0.0, 0.0, -0.25, -0.25, 0.0, 0.0]))


def test_whitening_runs_over_the_kept_tokens_only():
    kept = [0.2, -0.4, 0.3, 0.5, 0.0, -0.25, -0.25]  # row 0 tokens 0, 2, 4, 5; row 1 tokens 1, 2, 3
    mean, var = statistics.mean(kept), statistics.variance(kept)
    adv = _adv(whiten=True, eps=0.0)
    expected = torch.zeros(2, 6)
    for (i, t), a in zip([(0, 0), (0, 2), (0, 4), (0, 5), (1, 1), (1, 2), (1, 3)], kept, strict=True):
        expected[i, t] = (a - mean) / math.sqrt(var)
    torch.testing.assert_close(adv, expected)


def test_with_every_state_valued_the_advantages_telescope_to_the_return_minus_the_first_value():
    # interval 1, every token below the threshold: A_t = V(t+1) - V(t), so sum_t A_t = r - V(0) (theory)
    g = torch.Generator().manual_seed(0)
    n, t = 5, 7
    values = torch.rand(n, t + 1, generator=g)
    rewards = torch.rand(n, generator=g)
    mask = torch.ones(n, t)
    adv = spo_segment(rewards, torch.zeros(n), mask=mask, segment_values=values, rollout_logp=torch.full((n, t), -1.0),
                      whiten=False)  # fmt: skip
    full = torch.cat([values[:, :t], rewards[:, None]], 1)
    torch.testing.assert_close(adv, full[:, 1:] - full[:, :-1])
    torch.testing.assert_close(adv.sum(1), rewards - values[:, 0])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="segment_values"):
        spo_segment(REWARDS, torch.tensor([0, 0]), mask=MASK, rollout_logp=PROBS.log())
    with pytest.raises(ValueError, match=r"\[N, T\+1\]"):
        spo_segment(REWARDS, torch.tensor([0, 0]), mask=MASK, segment_values=VALUES[:, :6], rollout_logp=PROBS.log())
    with pytest.raises(ValueError, match="cut_interval"):
        spo_cut_states(PROBS.log(), MASK, prob_threshold=0.9, cut_interval=0)
