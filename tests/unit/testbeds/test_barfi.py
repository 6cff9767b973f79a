"""BARFI (`reward` `barfi`, unipo.testbeds.barfi): the shaped reward by hand, exact returns, the implicit gradient
against finite differences of the trained policy's primary return (implicit function theorem), the Neumann series
against the exact inverse, and what it learns on a distracting and a helpful auxiliary reward."""

import pytest
import torch

from unipo import algos
from unipo.cli import main
from unipo.testbeds import barfi


def test_barfi_reward_by_hand():
    got = algos.get("reward", "barfi")(torch.tensor([1.0, 0.0]), aux_rewards=torch.tensor([0.5, 2.0]),
                                       phi=torch.tensor([-1.0, 0.25]))  # fmt: skip
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5]))


def test_exact_returns_of_deterministic_policies():
    mdp = barfi.chain(aux="distractor")
    right, left = torch.zeros(6, 2, dtype=torch.float64), torch.zeros(6, 2, dtype=torch.float64)
    right[:, 1], left[:, 0] = 50.0, 50.0
    # always right: the goal's reward 1 at t = 4, γ⁴; always left: the bonus 0.5 forever at state 0, 0.5/(1 − γ)
    assert float(barfi.objective(mdp, right, mdp.r_p)) == pytest.approx(0.9**4, rel=1e-9)
    assert float(barfi.objective(mdp, left, mdp.r_aux)) == pytest.approx(5.0, rel=1e-9)
    # potential-based shaping telescopes: its return is −Φ(s₀) = 0 from the start, for every policy
    helpful = barfi.chain(aux="helpful")
    for logits in (right, left, torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))):
        assert float(barfi.objective(helpful, logits, helpful.r_aux)) == pytest.approx(0.0, abs=1e-9)


def _solved(mdp, phi, tau):
    theta = barfi.inner(mdp, phi, torch.zeros_like(mdp.r_p), 3000, 1.0, tau)
    t = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(barfi.objective(mdp, t, barfi.shaped(mdp, phi), tau), t)
    assert grad.abs().max() < 1e-9  # the inner optimum
    return theta


def test_implicit_gradient_is_the_derivative_of_the_trained_policys_primary_return():
    mdp, tau = barfi.chain(aux="distractor", bonus=0.2), 0.5
    gen = torch.Generator().manual_seed(1)
    phi = 1 + 0.3 * torch.randn(6, 2, dtype=torch.float64, generator=gen)
    g = barfi.meta_gradient(mdp, phi, _solved(mdp, phi, tau), tau, alpha=0.0, terms=0)
    d, eps = torch.randn(6, 2, dtype=torch.float64, generator=gen), 1e-4
    j = [float(barfi.objective(mdp, _solved(mdp, phi + s * eps * d, tau), mdp.r_p)) for s in (1, -1)]
    assert float((g * d).sum()) == pytest.approx((j[0] - j[1]) / (2 * eps), rel=1e-5)
    assert float((g * d).sum()) != pytest.approx(0.0, abs=1e-4)
    # the Neumann series α·Σ(I + αH)^j converges to the exact −H⁺
    neumann = barfi.meta_gradient(mdp, phi, _solved(mdp, phi, tau), tau, alpha=0.2, terms=400)
    torch.testing.assert_close(neumann, g, rtol=1e-4, atol=1e-7)


def test_barfi_turns_a_distraction_off_and_keeps_a_helpful_shaping():
    distractor = barfi.chain(aux="distractor")
    naive = barfi.train(distractor, learn=False)
    learned = barfi.train(distractor)
    assert naive["primary_return"] < 0.01  # the summed bonus keeps the agent at the start
    assert learned["primary_return"] > 0.6 and learned["phi"][0, 0] < 0  # φ(0, left) turned the bonus into a cost
    assert (learned["phi"][1:] == 1).all()  # no auxiliary reward elsewhere: no gradient, φ stays
    helpful = barfi.chain(aux="helpful")
    assert barfi.train(helpful)["primary_return"] > barfi.train(helpful, learn=False)["primary_return"] + 0.05


def test_verify_barfi_prints_the_three_policies(capsys):
    assert main(["verify", "barfi"]) == 0
    out = capsys.readouterr().out
    assert "distractor naive sum    0.000" in out and "learned φ(s, left)  = [-0." in out
