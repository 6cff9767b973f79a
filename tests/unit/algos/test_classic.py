"""Classic methods (ALGORITHMS.md §11, §13 C2): each is the policy term of the LLM components on one transition."""

import pytest
import torch

from unipo import algos
from unipo.algos.classic import adapt_kl_beta, categorical_kl
from unipo.algos.critics import _gae
from unipo.testbeds.classic import gae

METHODS = ["ppo_classic", "mdpo", "ppo_kl_adaptive", "a2c", "reinforce_classic"]


def test_every_method_has_the_a2c_gradient_at_ratio_one():
    # §13 C2: on the first minibatch π_θ = π_old, so ρ = 1, no clip is active and both KL terms have zero gradient
    # (KL(π_θ‖π_old) and KL(π_old‖π_θ) are minimal at π_θ = π_old): every method's gradient is −A·∇log π
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 3, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 3, (6,), generator=g)
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    grads = {}
    for name in METHODS:
        logits = theta.clone().requires_grad_(True)
        logp = torch.log_softmax(logits, -1).gather(1, actions[:, None])[:, 0]
        loss, _ = algos.get("classic", name)(logp, logp.detach(), adv, logits=logits, old_logits=theta.clone())
        (grads[name],) = torch.autograd.grad(loss.mean(), logits)
    for name in METHODS:
        torch.testing.assert_close(grads[name], grads["a2c"], atol=1e-12, rtol=0)
    assert float(grads["a2c"].abs().max()) > 0.01


def test_adaptive_beta_halves_and_doubles_exactly_past_its_thresholds():
    target = 0.01
    assert adapt_kl_beta(1.0, target / 1.5, target) == 1.0  # at the threshold: unchanged
    assert adapt_kl_beta(1.0, target / 1.5 - 1e-9, target) == 0.5
    assert adapt_kl_beta(1.0, 1.5 * target, target) == 1.0
    assert adapt_kl_beta(1.0, 1.5 * target + 1e-9, target) == 2.0
    assert adapt_kl_beta(3.0, target, target) == 3.0


def test_mdpo_anneals_its_kl_coefficient_as_the_official_schedule():
    # with A = 0 and ρ = 1 the loss is (1/t_k)·KL(π_θ‖π_k), t_k = 1 − (k − 1)/K: 1/(1 + 1/K) at k = 0, K/2 at k = K − 1
    logits, old = torch.tensor([[0.5, -0.5, 0.0]]), torch.tensor([[0.0, 0.0, 0.3]])
    kl = float(categorical_kl(logits, old))
    lp = torch.log_softmax(logits, -1)[:, :1][:, 0]
    mdpo = algos.get("classic", "mdpo")
    for k, coef in ((0, 1 / (1 + 1 / 10)), (9, 10 / 2)):
        loss, _ = mdpo(lp, lp, torch.zeros(1), logits=logits, old_logits=old, progress=k / 10, iterations=10)
        assert float(loss) == pytest.approx(coef * kl, rel=1e-6)
    # a Gaussian head (no logits): the sampled estimate ρ·log ρ − ρ + 1, 0 at ρ = 1
    loss, _ = mdpo(lp, lp, torch.zeros(1), progress=0.5, iterations=10)
    assert float(loss) == 0.0


def test_gae_with_episode_ends_by_hand_and_as_the_llm_gae():
    # γ = λ = 1 and a zero critic: each step's advantage is the rest of its episode's reward (the Monte Carlo return)
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    adv = gae(rewards, torch.zeros(4, 1), dones, torch.zeros(1), gamma=1.0, lam=1.0)
    assert adv[:, 0].tolist() == [3.0, 2.0, 7.0, 4.0]
    # one episode (no end inside): the same numbers as the LLM trainers' GAE over a completion (unipo.algos.critics)
    g = torch.Generator().manual_seed(0)
    r, v, last = torch.randn(7, 1, generator=g), torch.randn(7, 1, generator=g), torch.randn(1, generator=g)
    ours = gae(r, v, torch.zeros(7, 1), last, gamma=0.9, lam=0.8)[:, 0]
    llm, _ = _gae(r.T, torch.cat([v[:, 0], last])[None], torch.ones(1, 7), last, 0.9, 0.8)
    torch.testing.assert_close(ours, llm[0], atol=1e-6, rtol=0)
