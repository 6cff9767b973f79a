"""adv_post: batch whitening over valid tokens, absolute clip, the zero-std share (§13 V5's whitening half)."""

import math

import pytest
import torch

from unipo import algos

post = algos.get("adv_post", "adv_post")


def test_sequence_advantages_are_whitened_over_tokens_by_hand():
    # A = (1, −1, 3) with 2, 1 and 1 valid tokens: the token values are 1, 1, −1, 3 → mean 1, Bessel std
    # sqrt((0 + 0 + 4 + 4)/3) = sqrt(8/3); a row with no valid token gets 0
    adv = torch.tensor([1.0, -1.0, 3.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0]])
    out, metrics = post(adv, mask, eps=0.0)
    s = math.sqrt(8 / 3)
    torch.testing.assert_close(out, torch.tensor([0.0, -2 / s, 2 / s, 0.0], dtype=torch.float64))
    assert metrics == {}
    # PPO-max's clip after whitening; whitening off leaves the values and only clips
    clipped, _ = post(adv, mask, eps=0.0, clip=1.0)
    torch.testing.assert_close(clipped, torch.tensor([0.0, -1.0, 1.0, 0.0], dtype=torch.float64))
    raw, _ = post(adv, mask, whiten_mode="off", clip=2.0)
    torch.testing.assert_close(raw, torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64))


def test_token_advantages_have_mean_zero_and_std_one_over_valid_tokens():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3 + 2
    mask = torch.rand(5, 7, generator=g) > 0.3
    out, _ = post(adv, mask, eps=0.0)
    valid = out[mask]
    assert float(valid.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(valid.std()) == pytest.approx(1.0, abs=1e-12)  # Bessel-corrected, as verl's masked_whiten
    assert bool((out[~mask] == 0).all())


def test_zero_std_share_counts_groups_whose_rewards_do_not_vary():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3, float("nan"), 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # group 3 has one valid reward: no spread either
    _, metrics = post(torch.zeros(8), torch.ones(8, 2), rewards=rewards, group_ids=groups)
    assert float(metrics["adv/zero_std_frac"]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="whiten_mode"):
        post(torch.zeros(8), torch.ones(8, 2), whiten_mode="group")
