"""Online / Nash losses (ALGORITHMS.md §8): hand-worked values, §13 N2, tabular minimisers, registration."""

import logging
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unipo.algos.nash as nash
from unipo.algos import registry

IDS = {
    "sppo",
    "inpo",
    "dno",
    "nash_md",
    "nash_mp_recon",
    "spo_selfplay",
    "xpo",
    "selm",
    "rebel",
    "spin",
    "a_star_po",
    "mmd",
}
CITATION = re.compile(r"arXiv:\d{4}\.\d{4,5}|https?://\S+")
T = torch.tensor


def _dpo(logp, ref_logp, beta):
    # −log σ(β·((lw − rw_ref) − (ll − rl_ref)))
    return -torch.nn.functional.logsigmoid(beta * ((logp[:, 0] - ref_logp[:, 0]) - (logp[:, 1] - ref_logp[:, 1])))


def test_registered_with_citations():
    assert IDS <= set(registry._REGISTRY["online"])
    for name in IDS:
        e = registry._REGISTRY["online"][name]
        first = e.fn.__doc__.strip().splitlines()[0]
        if name.endswith("_recon"):
            assert first.startswith("Reconstruction of") and e.tag == "reconstructed"
        else:
            assert CITATION.search(first), name
    assert "nash_mp" not in registry._REGISTRY["online"]  # R2: never the plain id


def test_sppo_by_hand():
    # y1: (−1 − (−1.5) − 2·(.8 − .5))² = (.5 − .6)² = .01 ; y2: (−2 − (−2) − 2·(.3 − .5))² = (.4)² = .16
    out = nash.sppo(T([-1.0, -2.0]), T([-1.5, -2.0]), win_rate=T([0.8, 0.3]), eta=2.0)
    torch.testing.assert_close(out, T([0.01, 0.16]))


def test_inpo_by_hand():
    # η = .5, τ = .4: ητ = .2; policy margin −1 − (−2) = 1, prev margin −1.5 − (−1) = −.5, ref margin 0
    # h = 1 − .8·(−.5) − .2·0 = 1.4 ; ℓ = (1.4 − .25)² = 1.3225
    out = nash.inpo(T([[-1.0, -2.0]]), T([[-1.5, -1.0]]), T([[-1.0, -1.0]]), eta=0.5, tau=0.4)
    torch.testing.assert_close(out, T([1.3225]))


def test_dno_by_hand():
    # β = .5: Δ = (−1 − (−2)) − (−3 − (−2)) = 1 + 1 = 2 ; ℓ = −log σ(1) = log(1 + e^{−1}) = .31326
    out = nash.dno(T([[-1.0, -3.0]]), T([[-2.0, -2.0]]), beta=0.5)
    torch.testing.assert_close(out, T([math.log1p(math.exp(-1.0))]))


def test_rebel_by_hand_and_its_tabular_minimiser():
    # η = 2: Δ = (−1 − (−2)) − (−3 − (−2)) = 2, reward gap .75 − .25 = .5 → (2 − 1)² = 1
    out = nash.rebel(T([[-1.0, -3.0]]), T([[-2.0, -2.0]]), rewards=T([[0.75, 0.25]]), eta=2.0)
    torch.testing.assert_close(out, T([1.0]))
    # the loss over every ordered pair of a 4-action bandit, weighted by π_t(y)·π_t(y′), is minimised (0) exactly at
    # π ∝ π_t·exp(η·r): its log-ratio differences then equal η·(r(y) − r(y′)); gradient descent gets there
    prev = torch.log_softmax(T([0.2, -0.4, 0.0, 0.9]), -1)
    r, eta = T([0.1, 0.9, 0.4, 0.0]), 1.5
    logits = prev.clone().requires_grad_(True)
    opt = torch.optim.SGD([logits], lr=0.5)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    w = (prev.exp()[:, None] * prev.exp()[None, :]).flatten()
    for _ in range(2000):
        logp = torch.log_softmax(logits, -1)
        pair = lambda x: torch.stack([x[i.flatten()], x[j.flatten()]], 1)  # noqa: E731
        loss = (w * nash.rebel(pair(logp), pair(prev), rewards=pair(r), eta=eta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    target = torch.softmax(prev + eta * r, -1)
    torch.testing.assert_close(torch.softmax(logits, -1).detach(), target, atol=1e-6, rtol=0)


def test_mmd_by_hand():
    # α = .5, η = 2, p = .75: pull = .5·(−1 − (−2)) + (−1 − (−1.5))/2 = .5 + .25 = .75 ; ℓ = .75·(−1) − .25·(−1) = −.5
    logp = T([-1.0], requires_grad=True)
    out = nash.mmd(logp, T([-1.5]), T([-2.0]), win_rate=T([0.75]), alpha=0.5, eta=2.0)
    torch.testing.assert_close(out, T([-0.5]))
    out.sum().backward()
    torch.testing.assert_close(logp.grad, T([0.5]))  # the pull and the win rate as weights: .75 − .25


def test_spin_is_dpo_against_the_previous_iterate_with_the_data_as_winner():
    # λ = .5: Δ = (−1 − (−2)) − (−3 − (−2)) = 2 ; ℓ = −log σ(1) = log(1 + e^{−1})
    out = nash.spin(T([[-1.0, -3.0]]), T([[-2.0, -2.0]]), beta=0.5)
    torch.testing.assert_close(out, T([math.log1p(math.exp(-1.0))]))
    assert "ground_truth_winner" in registry.entry("online", "spin").facts


def test_optimal_value_by_hand_and_its_limits():
    # β₁ = .5, r = (0, 1): V* = .5·(log(e⁰ + e²) − log 2) = .5·log((1 + e²)/2)
    out = nash.optimal_value(T([[0.0, 1.0]]), 0.5)
    torch.testing.assert_close(out, T([0.5 * math.log((1 + math.e**2) / 2)]))
    r = T([[0.0, 0.2, 1.0, 0.5]], dtype=torch.float64)
    assert float(nash.optimal_value(r, 1e4)) == pytest.approx(float(r.mean()), abs=1e-4)  # β₁ → ∞: the mean
    assert float(nash.optimal_value(r, 1e-3)) == pytest.approx(1.0 - 1e-3 * math.log(4), abs=1e-6)  # β₁ → 0: max
    with pytest.raises(ValueError, match="beta must be > 0"):
        nash.optimal_value(r, 0.0)


def test_a_star_po_by_hand():
    # β₂ = .1: h = −1 − (−3) = 2 ; (.1·2 − (1 − .5))² = (.2 − .5)² = .09
    out = nash.a_star_po(T([-1.0]), T([-3.0]), rewards=T([1.0]), value=T([0.5]), beta=0.1)
    torch.testing.assert_close(out, T([0.09]))


def test_a_star_po_minimiser_is_the_kl_regularised_optimum():
    # §13 N2: with β₁ = β₂ = β and the exact V* = β·log E_{π_ref} exp(r/β), the regression's minimiser
    # π_ref·exp((r − V*)/β) is already normalised, so a softmax policy reaches loss 0 exactly at π ∝ π_ref·exp(r/β),
    # whatever full-support distribution weights the responses
    ref = torch.log_softmax(T([0.3, -0.2, 0.0, 1.1, -0.7], dtype=torch.float64), -1)
    r, beta = T([0.0, 1.0, 0.3, 0.1, 0.8], dtype=torch.float64), 0.4
    v_star = beta * torch.logsumexp(ref + r / beta, -1)
    weights = torch.softmax(T([0.5, 0.1, -1.0, 0.0, 0.4], dtype=torch.float64), -1)
    logits = ref.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = (weights * nash.a_star_po(torch.log_softmax(logits, -1), ref, rewards=r, value=v_star.expand(5),
                                         beta=beta)).sum()  # fmt: skip
        loss.backward()
        return loss

    opt.step(closure)
    assert float(closure().detach()) < 1e-12
    optimum = torch.log_softmax(ref + r / beta, -1)
    torch.testing.assert_close(torch.softmax(logits, -1).detach(), optimum.exp(), atol=1e-7, rtol=0)
    # with another baseline b in place of V* the target is not normalised: at the optimum each term is (b − V*)²
    b = r.mean()
    wrong = nash.a_star_po(optimum, ref, rewards=r, value=b.expand(5), beta=beta)
    torch.testing.assert_close(wrong, (b - v_star).pow(2).expand(5))


def test_nash_md_value_and_gradient():
    # β = .1, p = .75: ℓ = .1·(−1 − (−2))·(−1) − .25·(−1) = −.1 + .25 = .15 ; dℓ/dlogp = .1·1 − .25 = −.15
    logp = T([-1.0], requires_grad=True)
    out = nash.nash_md(logp, T([-2.0]), win_rate=T([0.75]), beta=0.1)
    torch.testing.assert_close(out, T([0.15]))
    out.sum().backward()
    torch.testing.assert_close(logp.grad, T([-0.15]))


def test_nash_md_token_form_sums_masked_tokens():
    logp, ref = T([[-1.0, -0.5, -9.0]]), T([[-2.0, -0.5, 0.0]])
    mask = T([[1, 1, 0]])
    # tokens 1-2: .1·(1·(−1) + 0·(−.5)) − .25·(−1.5) = −.1 + .375 = .275 (token 3 masked)
    out = nash.nash_md(logp, ref, win_rate=T([0.75]), mask=mask, beta=0.1)
    torch.testing.assert_close(out, T([0.275]))


def test_nash_mp_recon_by_hand_and_warns_once(caplog):
    registry._WARNED.discard("nash_mp_recon")
    # β = .1, η = .5, p = .75, logp = −1, ref = −2, prev = −1.5:
    # pull = .1·1 + .5/.5 = 1.1 ; ℓ = 1.1·(−1) − .25·(−1) = −.85 ; gradient = 1.1 − .25 = .85
    logp = T([-1.0], requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="unipo.algos"):
        out = nash.nash_mp_recon(logp, T([-1.5]), T([-2.0]), win_rate=T([0.75]), beta=0.1, eta=0.5)
        nash.nash_mp_recon(logp, T([-1.5]), T([-2.0]), win_rate=T([0.75]), beta=0.1, eta=0.5)
    torch.testing.assert_close(out, T([-0.85]))
    out.sum().backward()
    torch.testing.assert_close(logp.grad, T([0.85]))
    assert sum("reconstruction" in r.getMessage() for r in caplog.records) == 1


def test_spo_selfplay_by_hand():
    # K = 3 with the §13 matrix: rows off the diagonal (.1 + .7)/2 = .4, (.9 + .4)/2 = .65, (.3 + .6)/2 = .45
    pref = T([[0.5, 0.1, 0.7], [0.9, 0.5, 0.4], [0.3, 0.6, 0.5]])
    torch.testing.assert_close(nash.spo_selfplay(pref), T([0.4, 0.65, 0.45]))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(k=st.integers(2, 6), groups=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_spo_selfplay_win_rates_sum_to_half_k(k, groups, seed):
    # §13 N2: with P + Pᵀ = 1 the group's rewards sum to (1/(K−1))·K(K−1)/2 = K/2
    upper = torch.rand(groups, k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).triu(1)
    pref = upper + (1 - upper.transpose(-1, -2)).tril(-1) + 0.5 * torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(nash.spo_selfplay(pref).sum(-1), torch.full((groups,), k / 2, dtype=torch.float64))


def test_xpo_and_selm_by_hand():
    logp, ref = T([[-1.0, -3.0]]), T([[-2.0, -2.0]])
    # xpo β = .5: −log σ(.5·2) = .31326 ; + α·logp(ỹ) = 1e-2·(−4) = −.04
    torch.testing.assert_close(
        nash.xpo(logp, ref, explore_logp=T([-4.0]), beta=0.5, alpha=1e-2), T([math.log1p(math.exp(-1.0)) - 0.04])
    )
    # xpo ipo: (2 − 1/(2·.5))² = 1 ; α = 0
    torch.testing.assert_close(
        nash.xpo(logp, ref, explore_logp=T([-4.0]), beta=0.5, alpha=0.0, loss_type="ipo"), T([1.0])
    )
    # selm β = .5, α = .1: .31326 + .1·.5·(−4 − (−3)) = .31326 − .05
    out = nash.selm(logp, ref, explore_logp=T([-4.0]), explore_ref_logp=T([-3.0]), beta=0.5, alpha=0.1)
    torch.testing.assert_close(out, T([math.log1p(math.exp(-1.0)) - 0.05]))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), beta=st.floats(0.01, 2.0))
def test_xpo_selm_with_alpha_zero_are_dpo(seed, beta):
    g = torch.Generator().manual_seed(seed)
    logp, ref, ex, ex_ref = (-5 * torch.rand(4, 2, generator=g, dtype=torch.float64) for _ in range(4))
    dpo = _dpo(logp, ref, beta)
    torch.testing.assert_close(nash.xpo(logp, ref, explore_logp=ex[:, 0], beta=beta, alpha=0.0), dpo)
    sel = nash.selm(logp, ref, explore_logp=ex[:, 0], explore_ref_logp=ex_ref[:, 0], beta=beta, alpha=0.0)
    torch.testing.assert_close(sel, dpo)
    # DNO is DPO with the previous iterate as reference
    torch.testing.assert_close(nash.dno(logp, ref, beta=beta), dpo)
