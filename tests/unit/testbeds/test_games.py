"""Preference-game testbed: exact NE, regularised NE, and the §13 N1 convergence facts on the RPS-like matrix."""

import pytest
import torch

from unipo.testbeds import games

P = games.RPS_LIKE
REF = torch.full((3,), 1 / 3, dtype=torch.float64)
TAU = 0.2


def test_exact_nash_equilibrium_by_hand():
    # A = P − ½ = [[0, −.4, .2], [.4, 0, −.1], [−.2, .1, 0]]; A·π = 0: c = 2b, a = c/4 ⇒ π ∝ (1/2, 1, 2) = (1, 2, 4)/7
    pi = games.nash_equilibrium(P)
    torch.testing.assert_close(pi, torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64) / 7)
    torch.testing.assert_close(games.exploitability(pi, P), torch.tensor(0.0, dtype=torch.float64))
    # uniform: P(y ≻ π) = row means (1.3, 1.8, 1.4)/3 ⇒ exploitability .6 − .5 = .1, duality gap = .2
    torch.testing.assert_close(games.exploitability(REF, P), torch.tensor(0.1, dtype=torch.float64))
    torch.testing.assert_close(games.duality_gap(REF, P), torch.tensor(0.2, dtype=torch.float64))


def test_pure_equilibrium_found_for_a_transitive_matrix():
    pref = torch.tensor([[0.5, 0.8], [0.2, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(games.nash_equilibrium(pref), torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("tau", [0.1, 0.2, 0.5])
def test_regularized_nash_is_a_fixed_point(tau):
    star = games.regularized_nash(P, REF, tau=tau)
    torch.testing.assert_close(star, torch.softmax(REF.log() + games.win_rates(star, P) / tau, -1))
    # every regularised update keeps π*_τ fixed (§13 N1: "an exact fixed point")
    for method in ("inpo", "nash_mp_recon", "mmd"):
        torch.testing.assert_close(games.TABULAR[method](star, P, REF, eta=0.3, tau=tau), star)


def test_sppo_average_iterate_exploitability_vanishes():
    # MWU on a zero-sum game: the average iterate's exploitability is O(log n/(ηT) + η); the last iterate cycles
    avg = games.run("sppo", 2000, eta=0.1, average=True)
    assert avg[-1] < 0.005 and avg[-1] < avg[99] / 5
    last = games.run("sppo", 2000, eta=0.1)
    assert last[-1] > 0.05  # documents the cycling; the average is what converges


@pytest.mark.parametrize("method", ["inpo", "nash_mp_recon", "mmd"])
def test_last_iterate_reaches_regularized_nash(method):
    star = games.regularized_nash(P, REF, tau=TAU)
    pis = games.trajectory(method, 200, eta=0.5, tau=TAU)
    torch.testing.assert_close(pis[-1], star, atol=1e-9, rtol=0)
    kls = torch.stack([games.kl(star, p) for p in pis])
    assert (kls[1:] <= kls[:-1] + 1e-15).all()  # monotone in KL


def test_nash_mp_rate_claim():
    # §13 N1: KL(π*‖π_k) ≤ C·(1+2β)^{−k/2}, C = KL(π*‖π_0), β = τ, while above the float floor
    star = games.regularized_nash(P, REF, tau=TAU)
    pis = games.trajectory("nash_mp_recon", 40, eta=0.5, tau=TAU)
    kls = torch.stack([games.kl(star, p) for p in pis])
    bound = kls[0] * (1 + 2 * TAU) ** (-torch.arange(41, dtype=torch.float64) / 2)
    assert (kls <= bound + 1e-12).all()


def test_nash_md_bias_is_order_eta_over_tau():
    star = games.regularized_nash(P, REF, tau=TAU)
    errs = {}
    for eta in (0.1, 0.2, 0.5, 1.0):
        pis = games.trajectory("nash_md", 1000, eta=eta, tau=TAU)
        torch.testing.assert_close(pis[-1], pis[-2], atol=1e-10, rtol=0)  # it converges (to a biased point)
        errs[eta] = (pis[-1] - star).abs().max().item()
        assert errs[eta] <= 0.01 * eta / TAU
    assert errs[0.1] < errs[0.2] < errs[0.5] < errs[1.0]  # the bias shrinks with η (η_t → 0 converges)


def test_nash_mp_last_iterate_at_least_as_fast_as_nash_md():
    star = games.regularized_nash(P, REF, tau=TAU)
    md = games.trajectory("nash_md", 300, eta=0.5, tau=TAU)
    mp = games.trajectory("nash_mp_recon", 300, eta=0.5, tau=TAU)
    kl_md = torch.stack([games.kl(star, p) for p in md])
    kl_mp = torch.stack([games.kl(star, p) for p in mp])
    assert (kl_mp[30:] <= kl_md[30:]).all()  # past the transient the Mirror-Prox curve lies below
    assert kl_mp[-1] < 1e-12 < kl_md[-1]


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.3, 1.0, 3.0, 10.0])
def test_dpo_bradley_terry_fit_misses_the_equilibrium(beta):
    # the DPO minimiser is π ∝ π_ref·exp(s/β) with s the BT fit; an intransitive P has no BT scores that reach the NE
    s = games.bt_fit(P, REF)
    pi = torch.softmax(REF.log() + s / beta, -1)
    assert games.exploitability(pi, P) > 0.05


def test_online_dpo_stays_exploitable():
    # online DPO re-fits BT scores on pairs from π_t; the iterates keep a best response ≥ .03 ahead of them
    assert min(games.run("online_dpo", 20, eta=1.0)) > 0.03
    assert min(games.run("xpo", 20, eta=10.0)) > 0.03


def test_run_returns_one_value_per_iteration():
    out = games.run("inpo", 7, eta=0.5, tau=TAU)
    assert len(out) == 7 and all(isinstance(v, float) for v in out)


def test_plot_nash_curves(tmp_path):
    pytest.importorskip("matplotlib")
    path = games.plot_nash_curves(tmp_path / "nash.png", iterations=20)
    assert path.exists() and path.stat().st_size > 0


@pytest.mark.parametrize(("method", "coef"), [("mmd", "alpha"), ("nash_mp_recon", "beta")])
def test_the_registered_prox_loss_is_minimised_at_the_tabular_step(method, coef):
    # §13 N1 through the registered loss: on the game, with exact expectations over y ∼ π_θ (weights sg(π_θ(y)), the
    # expectation its score-function terms assume), gradient descent on the loss stops at the closed-form prox step
    from unipo.algos import nash

    pi_t = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    eta = 0.7
    logits = pi_t.log().clone().requires_grad_(True)
    opt = torch.optim.SGD([logits], lr=0.5)
    win = games.win_rates(pi_t, P)
    for _ in range(3000):
        logp = torch.log_softmax(logits, -1)
        loss = getattr(nash, method)(logp, pi_t.log(), REF.log(), win_rate=win, eta=eta, **{coef: TAU})
        opt.zero_grad()
        (logp.exp().detach() * loss).sum().backward()
        opt.step()
    step = games.geometric_md_step(pi_t, win, REF, eta=eta, tau=TAU)
    torch.testing.assert_close(torch.softmax(logits, -1).detach(), step, atol=1e-9, rtol=0)
    assert method != "mmd" or torch.equal(step, games.mmd_step(pi_t, P, REF, eta=eta, tau=TAU))


def test_the_registered_inpo_loss_is_minimised_at_the_tabular_omd_step():
    # §13 N1 through the registered loss: judged pairs (y_w, y_l) = (y, y′) drawn from π_t × π_t with y winning with
    # probability P(y ≻ y′), in exact expectation; the weighted least squares on pair differences is solved by
    # log π = (1 − ητ)·log π_t + ητ·log π_ref + η·P(· ≻ π_t) + const, i.e. INPO's OMD step
    from unipo.algos import nash

    pi_t, eta = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), 0.8
    y, y2 = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    y, y2 = y.flatten(), y2.flatten()
    weight = pi_t[y] * pi_t[y2] * P[y, y2]
    logits = pi_t.log().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16)

    def pair(x):
        return torch.stack([x[y], x[y2]], 1)

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(logits, -1)
        loss = (weight * nash.inpo(pair(logp), pair(pi_t.log()), pair(REF.log()), eta=eta, tau=TAU)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    step = games.inpo_step(pi_t, P, REF, eta=eta, tau=TAU)
    torch.testing.assert_close(torch.softmax(logits, -1).detach(), step, atol=1e-9, rtol=0)


def test_the_registered_nash_md_loss_in_self_play_reaches_the_regularised_equilibrium():
    # §13 N1 through the registered loss: with exact expectations over y ∼ π_θ and the opponent the current policy
    # (α = 0, detached), the loss's expected gradient is that of β·KL(π‖π_ref) − P(π ≻ sg(π)); its fixed point
    # π = π_ref·exp(P(· ≻ π)/β) is the β-regularised equilibrium π*_β
    from unipo.algos import nash

    beta = TAU
    logits = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(4000):
        logp = torch.log_softmax(logits, -1)
        pi = logp.exp().detach()
        loss = nash.nash_md(logp, REF.log(), win_rate=games.win_rates(pi, P), beta=beta)
        opt.zero_grad()
        (pi * loss).sum().backward()
        opt.step()
    star = games.regularized_nash(P, REF, tau=beta)
    torch.testing.assert_close(torch.softmax(logits, -1).detach(), star, atol=1e-9, rtol=0)


def test_the_toy_task_equilibrium_at_the_recipes_kl_coefficient_writes_few_sevens():
    # The learning check's toy task as a game (tests/recipes/test_learning.py): 8 tokens, reward k/8 for k sevens, the
    # task-reward oracle P(k ≻ k') = σ((k − k')/8/0.1), and a reference that writes a 7 with p = 0.015 per token. P
    # depends on y only through k, so the sequence-level regularised equilibrium π ∝ π_ref·exp(P(y ≻ π)/τ) sums to
    # this game on k with π_ref(k) = Binomial(8, 0.015). Nash-MD's, MMD's and Nash-MP's recipes (β or α = 0.1) aim at
    # a policy whose mean reward is 0.12, so they cannot rise far there; at 0.01 the equilibrium writes only 7s.
    k = torch.arange(9, dtype=torch.float64)
    ref = torch.distributions.Binomial(8, probs=torch.tensor(0.015, dtype=torch.float64)).log_prob(k).exp()
    pref = torch.sigmoid((k[:, None] - k[None, :]) / 8 / 0.1)
    reward = {tau: float(games.regularized_nash(pref, ref, tau=tau) @ k / 8) for tau in (0.1, 0.01)}
    assert reward[0.1] == pytest.approx(0.123, abs=1e-3) and reward[0.01] > 0.999
