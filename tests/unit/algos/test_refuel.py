"""REFUEL (Gao et al. 2024, arXiv:2410.04612; ALGORITHMS.md §9): the pair regression loss on hand-worked values and
the branch-turn sampler's distribution."""

import pytest
import torch

from unipo.algos import get


def test_refuel_loss_and_gradient_by_hand():
    # two pairs (groups 0 and 1); π_t = 0 so each branch's summed log-ratio s_i is the sum of its masked logp
    logp = torch.tensor([[-0.5, -0.2, 9.0], [-0.1, 9.0, 9.0], [0.3, 9.0, 9.0], [0.05, 0.05, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5])
    groups = torch.tensor([0, 0, 1, 1])
    refuel = get("policy_loss", "refuel")
    per_token, metrics = refuel(logp, torch.zeros(4, 3), torch.zeros(4, 3), mask, rewards=rewards, group_ids=groups)
    # s = (-0.7, -0.1, 0.3, 0.1): pair 0: ((-0.7 + 0.1) - (1 - 0))² = 2.56; pair 1: ((0.3 - 0.1) - 0.5)² = 0.09
    loss = get("aggregation", "seq_mean_token_mean")(per_token, mask)
    torch.testing.assert_close(loss, torch.tensor((2.56 + 0.09) / 2))
    loss.backward()
    # L = (ℓ₀ + ℓ₁)/2; ∂ℓ₀/∂s₀ = 2·(-1.6) = -∂ℓ₀/∂s₁, ∂ℓ₁/∂s₂ = 2·(-0.3) = -∂ℓ₁/∂s₃; each masked token gets ∂L/∂s_i
    want = torch.tensor([-1.6, 1.6, -0.3, 0.3])[:, None] * mask
    torch.testing.assert_close(logp.grad, want)
    agree = metrics["refuel/sign_agree"][:, 0]  # pair 0's log-ratio difference has the wrong sign, pair 1's the right
    torch.testing.assert_close(agree, torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    _, on_policy = refuel(logp.detach(), logp.detach(), torch.zeros(4, 3), mask, rewards=rewards, group_ids=groups)
    assert (on_policy["refuel/sign_agree"] == 0).all()  # no log-ratio difference yet


def test_refuel_scales_the_return_difference_by_eta_and_needs_pairs():
    logp, mask = torch.tensor([[0.2], [0.0]]), torch.ones(2, 1)
    refuel = get("policy_loss", "refuel")
    kw = {"rewards": torch.tensor([1.0, 0.0]), "group_ids": torch.tensor([0, 0])}
    out, _ = refuel(logp, torch.zeros(2, 1), torch.zeros(2, 1), mask, eta=0.5, **kw)
    torch.testing.assert_close(out[:, 0], torch.tensor([(0.2 - 0.5) ** 2] * 2))
    with pytest.raises(ValueError, match="exactly two branches"):
        refuel(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), torch.ones(3, 1),
               rewards=torch.zeros(3), group_ids=torch.tensor([0, 0, 0]))  # fmt: skip


def test_refuel_branch_turn_is_uniform_over_each_roll_ins_turns():
    turns = torch.tensor([3, 1, 0, 5]).repeat(6000)
    h = get("sampler", "refuel_branch")(turns, generator=torch.Generator().manual_seed(0)).view(6000, 4)
    assert (h[:, 1] == 0).all() and (h[:, 2] == 0).all()  # one turn, or none: the first
    for col, n in ((0, 3), (3, 5)):
        counts = torch.bincount(h[:, col], minlength=n)
        assert counts.numel() == n  # never past the roll-in's last turn
        assert (counts - 6000 / n).abs().max() < 0.06 * 6000 / n  # uniform: within 6 % (2.3 to 3.3 binomial sd; seeded)
