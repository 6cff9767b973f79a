"""Preference bandit testbed: exact population fits of dpo / ipo / cdpo / rdpo against their closed forms."""

import math

import pytest
import torch

import unipo.cli
from unipo.testbeds import bandit

D = torch.float64
BETA = 0.5
REWARD, REF = bandit.DEMO_REWARD, bandit.DEMO_REF
TWO_REWARD = torch.tensor([math.log(3.0), 0.0], dtype=D)  # P(y0 ≻ y1) = σ(ln 3) = 3/4
TWO_REF = torch.tensor([0.6, 0.4], dtype=D)


def t(*xs):
    return torch.tensor(xs, dtype=D)


def margin(logp, ref):
    # β·(h_0 − h_1), h = log π − log π_ref
    h = logp - ref.log()
    return BETA * (h[0] - h[1])


def test_bt_and_noisy_preferences_by_hand():
    # σ(ln 3 − 0) = 3/(3+1) = 0.75; P + Pᵀ = 1
    pref = bandit.bt_preferences(t(0.0, math.log(3.0)))
    torch.testing.assert_close(pref, t(0.5, 0.25, 0.75, 0.5).reshape(2, 2))
    # ε = 0.2: Q[1, 0] = 0.8·0.75 + 0.2·0.25 = 0.65
    torch.testing.assert_close(bandit.noisy_preferences(pref, 0.2), t(0.5, 0.35, 0.65, 0.5).reshape(2, 2))


def test_logistic_margin_by_hand():
    # ε = s = 0: logit(3/4) = ln 3.  ε = 0.2: q = 0.65 ⇒ ln(13/7).  ε = s = 0.2: q' = ½ + 0.6·0.6·0.25 = 0.59
    p = t(0.75)[0]
    torch.testing.assert_close(bandit.logistic_margin(p), t(math.log(3.0))[0])
    torch.testing.assert_close(bandit.logistic_margin(p, label_noise=0.2), t(math.log(13 / 7))[0])
    torch.testing.assert_close(bandit.logistic_margin(p, label_noise=0.2, label_smoothing=0.2), t(math.log(59 / 41))[0])


def test_expected_loss_at_reference_by_hand():
    # π = π_ref: every pair has Δ = 0, so dpo/cdpo/rdpo give log 2 and ipo gives (0 − 1/(2β))² = 1 for any labels
    ref_logp, q, mu = REF.log(), bandit.noisy_preferences(bandit.bt_preferences(REWARD), 0.3), REF
    for name, kw in [("dpo", {}), ("cdpo", {"label_smoothing": 0.2}), ("rdpo", {"flip_rate": 0.2})]:
        out = bandit.expected_loss(name, ref_logp, ref_logp, q, mu, beta=BETA, **kw)
        torch.testing.assert_close(out, t(math.log(2.0))[0])
    out = bandit.expected_loss("ipo", ref_logp, ref_logp, q, mu, beta=BETA, length_norm=False)
    torch.testing.assert_close(out, t(1.0)[0])


@pytest.mark.parametrize("mu", [None, REF], ids=["uniform_pairs", "ref_pairs"])
def test_dpo_fit_reaches_kl_regularised_optimum(mu):
    # BT labels are additive, so every pair's own minimiser β·Δ_ij = r_i − r_j is reachable: any μ gives π_ref·e^{r/β}
    fit = bandit.fit_tabular("dpo", bandit.bt_preferences(REWARD), REF, beta=BETA, mu=mu)
    torch.testing.assert_close(fit, bandit.dpo_optimum(REF, REWARD, BETA), atol=1e-6, rtol=0)
    assert bandit.max_logp_error(REF.log(), bandit.dpo_optimum(REF, REWARD, BETA)) > 0.5  # the fit had to move


@pytest.mark.parametrize("mu", [None, REF], ids=["uniform_pairs", "ref_pairs"])
def test_ipo_fit_matches_its_closed_form(mu):
    pref = bandit.bt_preferences(REWARD)
    fit = bandit.fit_tabular("ipo", pref, REF, beta=BETA, mu=mu, length_norm=False)
    target = bandit.ipo_optimum(REF, pref, BETA, mu=mu)
    torch.testing.assert_close(fit, target, atol=1e-6, rtol=0)
    # IPO's target is bounded win rates, not rewards: it differs from DPO's optimum by a clear margin
    assert bandit.max_logp_error(target, bandit.dpo_optimum(REF, REWARD, BETA)) > 0.3


def test_rdpo_on_flipped_labels_recovers_clean_optimum_and_dpo_does_not():
    pref, clean = bandit.bt_preferences(REWARD), bandit.dpo_optimum(REF, REWARD, BETA)
    rdpo = bandit.fit_tabular("rdpo", pref, REF, beta=BETA, label_noise=0.2, flip_rate=0.2)
    dpo = bandit.fit_tabular("dpo", pref, REF, beta=BETA, label_noise=0.2)
    torch.testing.assert_close(rdpo, clean, atol=1e-6, rtol=0)
    assert bandit.max_logp_error(dpo, clean) > 0.3
    # flips shrink every margin toward 0, so noisy DPO's best response is less likely than the clean optimum says
    best = int(REWARD.argmax())
    assert dpo[best] < clean[best] - 0.1


def test_noisy_dpo_matches_noisy_closed_form_two_responses():
    # n = 2: noisy DPO's margin is logit q = ln(13/7) ≈ 0.619 instead of the clean ln 3 ≈ 1.099
    fit = bandit.fit_tabular("dpo", bandit.bt_preferences(TWO_REWARD), TWO_REF, beta=BETA, label_noise=0.2)
    torch.testing.assert_close(margin(fit, TWO_REF), t(math.log(13 / 7))[0], atol=1e-6, rtol=0)
    assert abs(float(margin(fit, TWO_REF)) - math.log(3.0)) > 0.4


def test_cdpo_on_noisy_labels_matches_conservative_target():
    # ε = s = 0.2: q' = 0.59, margin ln(59/41) ≈ 0.364 — smaller than both noisy DPO's ln(13/7) and clean ln 3
    fit = bandit.fit_tabular(
        "cdpo", bandit.bt_preferences(TWO_REWARD), TWO_REF, beta=BETA, label_noise=0.2, label_smoothing=0.2
    )
    torch.testing.assert_close(margin(fit, TWO_REF), t(math.log(59 / 41))[0], atol=1e-6, rtol=0)
    target = bandit.two_response_optimum(TWO_REF, t(math.log(59 / 41))[0], BETA)
    torch.testing.assert_close(fit, target, atol=1e-6, rtol=0)


def test_cdpo_keeps_a_finite_margin_on_hard_labels():
    # Mitchell 2023: with p = 1, cdpo(s = 0.1) has z* = log(0.9/0.1) = ln 9; dpo's margin runs off toward +∞
    hard = t(0.5, 1.0, 0.0, 0.5).reshape(2, 2)
    cdpo = bandit.fit_tabular("cdpo", hard, TWO_REF, beta=BETA, label_smoothing=0.1)
    dpo = bandit.fit_tabular("dpo", hard, TWO_REF, beta=BETA)
    torch.testing.assert_close(margin(cdpo, TWO_REF), t(math.log(9.0))[0], atol=1e-6, rtol=0)
    assert margin(dpo, TWO_REF) > 5 * math.log(9.0)


def test_verify_label_noise_table():
    rows = bandit.verify_label_noise(TWO_REWARD, TWO_REF, beta=BETA, noise_levels=(0.0, 0.2))
    assert [(r["noise"], r["method"]) for r in rows] == [(e, m) for e in (0.0, 0.2) for m in ("dpo", "cdpo", "rdpo")]
    assert all(r["theory"] < 1e-6 for r in rows)
    assert all(r["clean"] < 1e-6 for r in rows if r["noise"] == 0.0 or r["method"] == "rdpo")
    assert all(r["clean"] > 0.3 for r in rows if r["noise"] == 0.2 and r["method"] != "rdpo")


def test_cli_verify_preference(capsys):
    assert unipo.cli.main(["verify", "preference"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["dpo"], ["ipo"])]
    assert len(rows) == 2 and all(float(r[-1]) < 1e-5 for r in rows)  # clean-label closed forms
    lines = [line.split() for line in out.splitlines()]
    noise = {(r[0], r[1]): [float(x) for x in r[2:]] for r in lines if r[1:2] in (["dpo"], ["cdpo"], ["rdpo"])}
    assert set(noise) == {(e, m) for e in ("0.0", "0.1", "0.2", "0.3") for m in ("dpo", "cdpo", "rdpo")}
    for (eps, method), (clean4, clean2, theory2) in noise.items():
        assert theory2 < 1e-5
        if method == "rdpo" or eps == "0.0":
            assert clean4 < 1e-3 and clean2 < 1e-3
        else:
            assert clean4 > 0.1 and clean2 > 0.1
