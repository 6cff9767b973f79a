"""Preference losses (ALGORITHMS.md §7): hand-computed values, policy = reference, and the §13 rows P1–P6."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
LOG2 = math.log(2.0)
D = torch.float64


def pref(name):
    return algos.get("preference", name)


def t(*values):
    return torch.tensor(values, dtype=D)


# One pair used by the hand-computed tests: h_w = −1 − (−2) = 1, h_l = −3 − (−2) = −1, Δ = 2.
# |y_w| = 2, |y_l| = 4, so mean token log-probs are ℓ̄_w = −0.5, ℓ̄_l = −0.75.
C, R, RC, RR = t(-1.0), t(-3.0), t(-2.0), t(-2.0)
LEN_W, LEN_L = t(2.0), t(4.0)
NLS = lambda z: -F.logsigmoid(torch.as_tensor(z, dtype=D))  # noqa: E731  (−log σ(z))


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=D).reshape(actual.shape))


# --------------------------------------------------------------------------------------------- hand-computed values


def test_dpo_family_hand_values():
    # β = 0.5, βΔ = 1. −log σ(1) = log(1 + e^{−1}) = 0.3132617; −log σ(−1) = 1 + 0.3132617 = 1.3132617.
    close(pref("dpo")(C, R, RC, RR, beta=0.5), 0.3132617)
    # cdpo, ε = 0.1: 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617
    close(pref("cdpo")(C, R, RC, RR, beta=0.5, label_smoothing=0.1), 0.4132617)
    # rdpo, ε = 0.1: (0.9·0.3132617 − 0.1·1.3132617)/0.8 = 0.1506094/0.8 = 0.1882617
    close(pref("rdpo")(C, R, RC, RR, beta=0.5, flip_rate=0.1), 0.1882617)
    close(pref("robust")(C, R, RC, RR, beta=0.5, flip_rate=0.1), 0.1882617)
    # hinge: max(0, 1 − 0.5·2) = 0 (on the margin); β = 0.25: 1 − 0.5 = 0.5
    close(pref("hinge")(C, R, RC, RR, beta=0.5), 0.0)
    close(pref("hinge")(C, R, RC, RR, beta=0.25), 0.5)
    # rpo, per-sequence NLL (irpo): dpo + 1·NLL, NLL = −(−1)/2 = 0.5 → 0.8132617
    close(pref("rpo")(C, R, RC, RR, chosen_len=LEN_W, beta=0.5, nll_coef=1.0, nll_norm="sequence"), 0.8132617)
    # discopop, τ = 1: μ = σ(1) = 0.7310586; (1−μ)·0.3132617 + μ·e^{−1} = 0.0842490 + 0.2689414 = 0.3531904
    close(pref("discopop")(C, R, RC, RR, beta=0.5, tau=1.0), 0.3531904)
    # exo, ε = 0.1: q_w = σ(1) = 0.7310586, q_l = 0.2689414;
    # 0.7310586·(−0.3132617 − log 0.9) + 0.2689414·(−1.3132617 − log 0.1) = −0.1519879 + 0.2660700 = 0.1140821
    close(pref("exo_pair")(C, R, RC, RR, beta=0.5, label_smoothing=0.1), 0.1140821)


def test_rpo_nll_is_a_batch_token_mean_by_default():
    # Two pairs at policy = reference (Δ = 0, DPO part log 2), chosen summed log-probs −1 and −6 over 2 and 4 tokens.
    # TRL's sft term: (1 + 6)/(2 + 4) = 7/6 over the batch; per pair −logp/L̄ with L̄ = 3: (1/3, 2), mean 7/6.
    # Per-sequence means: (1/2, 3/2), mean 1 (they differ because the lengths differ).
    c, lens = t(-1.0, -6.0), t(2.0, 4.0)
    batch = pref("rpo")(c, c - 1, c, c - 1, chosen_len=lens, beta=0.5, nll_coef=1.0)
    close(batch, [LOG2 + 1 / 3, LOG2 + 2.0])
    torch.testing.assert_close(batch.mean(), torch.tensor(LOG2 + 7 / 6, dtype=D))
    seq = pref("rpo")(c, c - 1, c, c - 1, chosen_len=lens, beta=0.5, nll_coef=1.0, nll_norm="sequence")
    close(seq, [LOG2 + 0.5, LOG2 + 1.5])
    # the trainer passes the whole step's mean length, so a micro-batch of the first pair alone gives the same term
    close(
        pref("rpo")(c[:1], c[:1] - 1, c[:1], c[:1] - 1, chosen_len=lens[:1], chosen_len_mean=t(3.0)), LOG2 + 0.005 / 3
    )
    # defaults: the paper's β = 0.01 and NLL weight 0.005 (as TRL applies them)
    assert algos.entry("preference", "rpo").params == {"beta": 0.01, "nll_coef": 0.005, "nll_norm": "batch_tokens"}


def test_squared_and_anchored_hand_values():
    # ipo, summed: β = 0.5 → (2 − 1)² = 1; β = 1 → (2 − 0.5)² = 2.25
    close(pref("ipo")(C, R, RC, RR, beta=0.5, length_norm=False), 1.0)
    close(pref("ipo")(C, R, RC, RR, beta=1.0, length_norm=False), 2.25)
    # ipo, TRL length-normalised: Δ̄ = 1/2 − (−1/4) = 0.75; β = 1 → (0.75 − 0.5)² = 0.0625
    close(pref("ipo")(C, R, RC, RR, chosen_len=LEN_W, rejected_len=LEN_L, beta=1.0), 0.0625)
    # sppo_hard: β = 0.5 → target 1: (1 − 1)² + (−1 + 1)² = 0; β = 1 → (0.5)² + (−0.5)² = 0.5
    close(pref("sppo_hard")(C, R, RC, RR, beta=0.5), 0.0)
    close(pref("sppo_hard")(C, R, RC, RR, beta=1.0), 0.5)
    # apo_zero: (1 − σ(0.5)) + σ(−0.5) = 2·0.3775407 = 0.7550813
    close(pref("apo_zero")(C, R, RC, RR, beta=0.5), 0.7550813)
    # apo_down: σ(0.5) + 1 − σ(1) = 0.6224593 + 1 − 0.7310586 = 0.8914007
    close(pref("apo_down")(C, R, RC, RR, beta=0.5), 0.8914007)
    # nca: −log σ(0.5) − ½ log σ(−0.5) − ½ log σ(0.5) = 1.5·0.4740770 + 0.5·0.9740770 = 1.1981540
    close(pref("nca_pair")(C, R, RC, RR, beta=0.5), 1.1981540)
    # bco: −log σ(0.5) − log σ(0.5) = 0.9481540; with δ = 0.5: −log σ(0) − log σ(1) = 0.6931472 + 0.3132617
    close(pref("bco_pair")(C, R, RC, RR, beta=0.5), 0.9481540)
    close(pref("bco_pair")(C, R, RC, RR, beta=0.5, reward_shift=t(0.5)), 1.0064089)


def test_reference_free_hand_values():
    kw = {"chosen_len": LEN_W, "rejected_len": LEN_L}
    # simpo: ℓ̄_w − ℓ̄_l = 0.25; β = 2, γ = 0.5 → z = 0 → log 2; γ = 0 → −log σ(0.5) = 0.4740770
    close(pref("simpo")(C, R, RC, RR, **kw, beta=2.0, gamma=0.5), LOG2)
    close(pref("simpo")(C, R, RC, RR, **kw, beta=2.0, gamma=0.0), 0.4740770)
    # alphapo, α = 1: r = 1 − e^{−ℓ̄}: r_w = 1 − e^{.5} = −.6487213, r_l = 1 − e^{.75} = −1.1170000;
    # z = 2·.4682787 − .5 = .4365575 → −log σ(z) = .4985044
    close(pref("alphapo")(C, R, RC, RR, **kw, alpha=1.0, beta=2.0, gamma=0.5), 0.4985044)
    # α → 0 is simpo
    close(pref("alphapo")(C, R, RC, RR, **kw, alpha=1e-7, beta=2.0, gamma=0.0), 0.4740770)
    # cpo: −log σ(0.5·(−1 + 3)) + NLL 0.5 = 0.8132617; length_norm: −log σ(0.5·0.25) + 0.5 = 0.6325990 + 0.5
    close(pref("cpo")(C, R, RC, RR, **kw, beta=0.5), 0.8132617)
    close(pref("cpo")(C, R, RC, RR, **kw, beta=0.5, length_norm=True), 1.1325990)
    # orpo: lo_w = −0.5 − log(1 − e^{−0.5}) = 0.4327521; lo_l = −0.75 − log(1 − e^{−0.75}) = −0.1106501;
    # −log σ(0.5434022) = 0.4579120; L = 0.5 + 0.1·0.4579120 = 0.5457912
    close(pref("orpo")(C, R, RC, RR, **kw, beta=0.1), 0.5457912)
    # cpl, β = 1, λ = 0.5: −log σ(−1 − 0.5·(−3)) = −log σ(0.5) = 0.4740770 (reference ignored)
    close(pref("cpl")(C, R, RC + 5, RR - 5, beta=1.0, conservative_bias=0.5), 0.4740770)


def test_kto_hand_values():
    # desirable h = 1, undesirable h = −1, β = 0.5, z₀ = 0: 1 − σ(0.5) = 0.3775407 for both
    close(pref("kto")(C, R, RC, RR, beta=0.5), [0.3775407, 0.3775407])
    # mismatched h(y′) = [0.2, 0.6] → z₀ = 0.4: 1 − σ(0.5·0.6) = 0.4255575; 1 − σ(0.5·1.4) = 0.3318122;
    # λ_D = 2 doubles the desirable term
    kl = {"kl_logp": t(-1.8, -1.4), "ref_kl_logp": t(-2.0, -2.0)}
    close(pref("kto")(C, R, RC, RR, **kl, beta=0.5, desirable_weight=2.0), [0.8511150, 0.3318122])
    # a negative mean KL is clamped to z₀ = 0; counts may differ (2 desirable, 1 undesirable)
    kl = {"kl_logp": t(-3.0), "ref_kl_logp": t(-2.0)}
    out = pref("kto")(t(-1.0, -2.0), R, t(-2.0, -2.0), RR, **kl, beta=0.5)
    close(out, [0.3775407, 0.5, 0.3775407])


def test_aot_hand_values():
    # policy log-ratios logp_w − logp_l = [2, −1], reference [0, 1]; sorted: [−1, 2] − [0, 1] = [−1, 1]
    c, r, rc, rr = t(-1.0, -2.0), t(-3.0, -1.0), t(-2.0, -2.0), t(-2.0, -3.0)
    close(pref("aot")(c, r, rc, rr, beta=1.0), [1.3132617, 0.3132617])
    # unpaired: h_w = [1, 0], h_l = [−1, 2]; sorted: [0, 1] − [−1, 2] = [1, −1]
    close(pref("aot_unpaired")(c, r, rc, rr, beta=1.0), [0.3132617, 1.3132617])


def test_reward_aware_hand_values():
    # copg: R_w − R_l = 1, βΔ = 0.5·2 = 1 → residual 0; R_w = 2 → (2 − 1)²/(2·0.5) = 1
    close(pref("copg")(C, R, RC, RR, chosen_rewards=t(1.0), rejected_rewards=t(0.0), beta=0.5), 0.0)
    close(pref("copg")(C, R, RC, RR, chosen_rewards=t(2.0), rejected_rewards=t(0.0), beta=0.5), 1.0)
    # hypo: dpo 0.3132617 + 0.1·h(y), h(y) = −1.5 − (−2) = 0.5 → 0.3632617; ∂/∂ sample_logp = 0.1·0.5 = 0.05
    sample = t(-1.5).requires_grad_()
    loss = pref("hypo")(C, R, RC, RR, sample_logp=sample, ref_sample_logp=t(-2.0), beta=0.5, kl_coef=0.1)
    close(loss, 0.3632617)
    loss.sum().backward()
    close(sample.grad, 0.05)
    # hypo, k = 3 samples: h = (.5, 1, 3), value mean 1.5 → 0.3132617 + 0.15; leave-one-out means (2, 1.75, .75), so
    # the gradient on sample j is λ·(h_j − LOO_j)/k = 0.1·(−1.5, −.75, 2.25)/3 = (−.05, −.025, .075)
    sample = t(-1.5, -1.0, 1.0).reshape(1, 3).requires_grad_()
    loss = pref("hypo")(C, R, RC, RR, sample_logp=sample, ref_sample_logp=t(-2.0, -2.0, -2.0).reshape(1, 3),
                        beta=0.5, kl_coef=0.1)  # fmt: skip
    close(loss, 0.3132617 + 0.15)
    loss.sum().backward()
    close(sample.grad, [[-0.05, -0.025, 0.075]])
    # lipo: ψ = [2, 1, 0], s all 0 → ranks by position [1, 2, 3]; G = [3, 1, 0]; 1/D = [1, 1/log₂3, 1/2].
    # weights: 2·(1 − 0.6309298) + 3·(1 − 0.5) + 1·(0.6309298 − 0.5) = 0.7381405 + 1.5 + 0.1309298 = 2.3690702;
    # every pair loss is log 2 → 2.3690702·0.6931472 = 1.6421145
    logp = t(-1.0, -2.0, -3.0).reshape(1, 3)
    close(pref("lipo_lambda")(logp, logp, scores=t(2.0, 1.0, 0.0).reshape(1, 3)), 1.6421145)


def test_tgdpo_weights_tokens_by_the_guides_rewards():
    # β = 1, α = 0.5. chosen: h = [0.5, 0.5], r̂ = guide − ref = [0.5, −1] → weights 1 + α·r̂ = [1.25, 0.5] → 0.875;
    # rejected: h = [−1, pad], r̂ = [−2] → weight 1 − α·r̂ = 2 → −2; margin 2.875 → −log σ(2.875) = log(1 + e^−2.875)
    c, rc = t(-1.0, -2.0).reshape(1, 2), t(-1.5, -2.5).reshape(1, 2)
    r, rr = t(-2.0, -9.0).reshape(1, 2), t(-1.0, 0.0).reshape(1, 2)
    kw = {"chosen_mask": t(1, 1).reshape(1, 2), "rejected_mask": t(1, 0).reshape(1, 2),
          "guide_chosen_logp": t(-1.0, -3.5).reshape(1, 2),
          "guide_rejected_logp": t(-3.0, 7.0).reshape(1, 2)}  # fmt: skip
    close(pref("tgdpo")(c, r, rc, rr, **kw, beta=1.0, alpha=0.5), math.log1p(math.exp(-2.875)))
    # β = 0.5 scales the guide's rewards too: r̂ = 0.5·[0.5, −1] = [0.25, −0.5] → chosen weights 0.5·[1.125, 0.75],
    # Σ = 0.46875; rejected r̂ = −1 → weight 0.5·1.5 = 0.75, Σ = −0.75; margin 1.21875 (without β in r̂: 1.4375)
    close(pref("tgdpo")(c, r, rc, rr, **kw, beta=0.5, alpha=0.5), math.log1p(math.exp(-1.21875)))
    # α = 0 is DPO on the summed log-ratios: margin β·(1 − (−1)) = 2 at β = 1
    close(pref("tgdpo")(c, r, rc, rr, **kw, beta=1.0, alpha=0.0), math.log1p(math.exp(-2.0)))
    assert "tgdpo_recon" not in algos.names("preference")  # superseded by the published rule


def test_bad_hyperparameters_and_missing_inputs_raise():
    with pytest.raises(ValueError, match="chosen_len"):
        pref("ipo")(C, R, RC, RR)
    with pytest.raises(ValueError, match="flip_rate"):
        pref("rdpo")(C, R, RC, RR, flip_rate=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        pref("exo_pair")(C, R, RC, RR, label_smoothing=0.0)
    with pytest.raises(ValueError, match="same shape|one shape"):
        pref("dpo")(t(1.0, 2.0), R, RC, RR)


def test_reference_is_a_constant():
    c, r = C.clone().requires_grad_(), R.clone().requires_grad_()
    rc, rr = RC.clone().requires_grad_(), RR.clone().requires_grad_()
    # ∂(−log σ(βΔ))/∂logp_w = −β·σ(−βΔ) = −0.5·0.2689414; the reference gets no gradient
    pref("dpo")(c, r, rc, rr, beta=0.5).sum().backward()
    close(c.grad, -0.5 * 0.2689414)
    close(r.grad, 0.5 * 0.2689414)
    assert rc.grad is None and rr.grad is None


# ---------------------------------------------------------------------------------------- policy = reference


def _zero_margin_values(beta):
    # Value of each loss at h_w = h_l = 0 (policy = reference).
    return {
        "dpo": LOG2,
        "cdpo": LOG2,
        "rdpo": LOG2,  # ((1−ε) − ε)·log 2 / (1 − 2ε)
        "robust": LOG2,
        "aot": LOG2,
        "aot_unpaired": LOG2,
        "hinge": 1.0,
        "ipo": 1.0 / (4 * beta**2),
        "sppo_hard": 2.0 / (4 * beta**2),
        "apo_zero": 1.0,
        "apo_down": 1.0,
        "nca_pair": 2 * LOG2,
        "bco_pair": 2 * LOG2,
        "discopop": 0.5 * LOG2 + 0.5,  # μ = ½, exp(0) = 1
        "f_dpo": LOG2,
        "dpop": LOG2,
        # q = (½, ½) against (1 − 1e-3, 1e-3): ½·log(½/0.999) + ½·log(½/0.001)
        "exo_pair": 0.5 * math.log(0.5 / 0.999) + 0.5 * math.log(0.5 / 0.001),
    }


@SETTINGS
@given(
    logp=st.lists(st.floats(-30.0, -0.1), min_size=2, max_size=6),
    beta=st.sampled_from([0.05, 0.1, 0.5, 2.0]),
)
def test_policy_equal_reference_gives_zero_margin_value(logp, beta):
    n = len(logp) // 2
    c, r = t(*logp[:n]), t(*logp[n : 2 * n])
    for name, value in _zero_margin_values(beta).items():
        kw = {"length_norm": False} if name == "ipo" else {}
        out = pref(name)(c, r, c.clone(), r.clone(), beta=beta, **kw)
        close(out, torch.full((n,), value, dtype=D))
    lens = {"chosen_len": torch.full((n,), 3.0, dtype=D), "rejected_len": torch.full((n,), 5.0, dtype=D)}
    close(pref("ipo")(c, r, c, r, **lens, beta=beta), torch.full((n,), 1.0 / (4 * beta**2), dtype=D))
    # kto: each term is λ·(1 − σ(0)) = λ/2
    close(pref("kto")(c, r, c, r, beta=beta, desirable_weight=3.0), torch.tensor([1.5] * n + [0.5] * n, dtype=D))
    # copg with equal rewards is 0; hypo with the sample at the reference is dpo = log 2
    zeros = torch.zeros(n, dtype=D)
    close(pref("copg")(c, r, c, r, chosen_rewards=zeros, rejected_rewards=zeros, beta=beta), zeros)
    close(pref("hypo")(c, r, c, r, sample_logp=c, ref_sample_logp=c, beta=beta), torch.full((n,), LOG2, dtype=D))
    # tgdpo per token: every token's log-ratio is 0, whatever the guide says
    tok_c, tok_r = c[:, None].repeat(1, 3), r[:, None].repeat(1, 3)
    ones, guide = torch.ones(n, 3, dtype=D), torch.full((n, 3), -0.5, dtype=D)
    tg = pref("tgdpo")(tok_c, tok_r, tok_c, tok_r, chosen_mask=ones, rejected_mask=ones, guide_chosen_logp=guide,
                       guide_rejected_logp=guide, beta=beta)  # fmt: skip
    close(tg, torch.full((n,), LOG2, dtype=D))


# --------------------------------------------------------------------------------------------------- §13 P1–P6


def _pair_indices(k):
    i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    off = i != j
    return i[off], j[off]


def _minimise(objective, k, steps=200):
    theta = torch.zeros(k, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = objective(torch.log_softmax(theta, -1))
        loss.backward()
        return loss

    opt.step(closure)
    return torch.log_softmax(theta.detach(), -1)


def _target(ref_logp, r, beta):
    return torch.log_softmax(ref_logp + r / beta, -1)


def test_p1_dpo_tabular_bandit_reaches_kl_regularised_optimum():
    # K = 4 single-token responses; every ordered pair (i, j) labelled i ≻ j with soft BT probability σ(r_i − r_j).
    # The population DPO minimiser has β·(h_i − h_j) = r_i − r_j, i.e. π ∝ π_ref·exp(r/β).
    k, beta = 4, 0.5
    ref_logp = torch.log_softmax(t(0.3, -0.2, 0.5, -0.6), -1)
    r = t(0.4, -0.3, 0.1, 0.25)
    i, j = _pair_indices(k)
    label = torch.sigmoid(r[i] - r[j])

    def objective(logp):
        return (label * pref("dpo")(logp[i], logp[j], ref_logp[i], ref_logp[j], beta=beta)).sum()

    # at init (π_θ = π_ref) every pair's loss is log 2
    close(pref("dpo")(ref_logp[i], ref_logp[j], ref_logp[i], ref_logp[j], beta=beta), torch.full_like(label, LOG2))
    torch.testing.assert_close(_minimise(objective, k), _target(ref_logp, r, beta), atol=1e-3, rtol=0)


def test_p1_kl_regularised_policy_gradient_reaches_the_dpo_optimum():
    # §13 P1's policy-gradient half, through the registered RL components: with exact expectations over y ∼ π_θ
    # (weights sg(π_θ(y))), the `reinforce` loss with A = r plus β·`k2` (whose on-policy gradient is ∇KL) descends
    # −E r + β·KL(π‖π_ref), stationary exactly at π ∝ π_ref·exp(r/β), the DPO minimiser of the test above
    k, beta = 4, 0.5
    ref_logp = torch.log_softmax(t(0.3, -0.2, 0.5, -0.6), -1)
    r = t(0.4, -0.3, 0.1, 0.25)
    theta = torch.zeros(k, dtype=D, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.5)
    pg, k2 = algos.get("policy_loss", "reinforce"), algos.get("kl", "k2")
    for _ in range(3000):
        logp = torch.log_softmax(theta, -1)[:, None]  # K "sequences" of one token
        term, _ = pg(logp, logp.detach(), r, torch.ones_like(logp))
        loss = term + beta * k2(logp, ref_logp[:, None])
        opt.zero_grad()
        (logp.exp().detach() * loss).sum().backward()
        opt.step()
    torch.testing.assert_close(torch.log_softmax(theta.detach(), -1), _target(ref_logp, r, beta), atol=1e-9, rtol=0)


def test_p2_ipo_minimiser_matches_closed_form():
    # Pairs ~ μ×μ with the RPS-like P; IPO minimiser: h_i − h_j = (P(i≻μ) − P(j≻μ))/β (Azar et al. 2023, Prop. 4).
    beta = 0.5
    p = t(0.5, 0.1, 0.7, 0.9, 0.5, 0.4, 0.3, 0.6, 0.5).reshape(3, 3)
    mu = t(0.5, 0.3, 0.2)
    ref_logp = torch.log_softmax(t(0.2, -0.1, 0.4), -1)
    i, j = _pair_indices(3)
    weight = mu[i] * mu[j] * p[i, j]  # pair (i, j) sampled from μ×μ and labelled i ≻ j

    def objective(logp):
        return (weight * pref("ipo")(logp[i], logp[j], ref_logp[i], ref_logp[j], beta=beta, length_norm=False)).sum()

    close(pref("ipo")(ref_logp[i], ref_logp[j], ref_logp[i], ref_logp[j], beta=beta, length_norm=False)[0], 1.0)
    win_vs_mu = p @ mu  # P(i ≻ μ)
    torch.testing.assert_close(_minimise(objective, 3), _target(ref_logp, win_vs_mu, beta), atol=1e-3, rtol=0)


@SETTINGS
@given(
    h=st.lists(st.floats(-20.0, 20.0), min_size=2, max_size=2),
    eps=st.floats(0.0, 0.45),
    beta=st.sampled_from([0.1, 1.0]),
)
def test_p3_rdpo_cdpo_identities(h, eps, beta):
    c, r, ref = t(h[0]), t(h[1]), t(0.0)
    clean, flipped = pref("dpo")(c, r, ref, ref, beta=beta), pref("dpo")(r, c, ref, ref, beta=beta)
    # E over a label flip with probability ε of the rdpo loss is the clean dpo loss, exactly
    expected = (1 - eps) * pref("rdpo")(c, r, ref, ref, beta=beta, flip_rate=eps) + eps * pref("rdpo")(
        r, c, ref, ref, beta=beta, flip_rate=eps
    )
    close(expected, clean)
    # cdpo is dpo against the soft label (1 − ε, ε)
    close(pref("cdpo")(c, r, ref, ref, beta=beta, label_smoothing=eps), (1 - eps) * clean + eps * flipped)
    # ε = 0: rdpo = cdpo = dpo; aot with batch size 1 = dpo
    close(pref("rdpo")(c, r, ref, ref, beta=beta, flip_rate=0.0), clean)
    close(pref("cdpo")(c, r, ref, ref, beta=beta, label_smoothing=0.0), clean)
    close(pref("aot")(c, r, ref, ref, beta=beta), clean)


def test_p4_sppo_hard_minimiser():
    # minimise over free log-ratios: h_w → 1/(2β) = 2.5, h_l → −2.5 (β = 0.2)
    h = torch.zeros(2, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([h], max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = pref("sppo_hard")(h[:1], h[1:], t(0.0), t(0.0), beta=0.2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(h.detach(), t(2.5, -2.5))


@SETTINGS
@given(
    logp=st.lists(st.floats(-40.0, -0.05), min_size=4, max_size=4),
    lens=st.lists(st.integers(1, 50), min_size=2, max_size=2),
    beta=st.sampled_from([0.1, 1.0, 2.5]),
    lam=st.floats(0.0, 3.0),
)
def test_p5_identities(logp, lens, beta, lam):
    c, r, rc, rr = (t(x) for x in logp)
    kw = {"chosen_len": t(float(lens[0])), "rejected_len": t(float(lens[1]))}
    # each kto term lies in [0, λ]
    out = pref("kto")(c, r, rc, rr, beta=beta, desirable_weight=lam, undesirable_weight=lam)
    assert bool(((out >= 0) & (out <= lam)).all())
    # simpo(γ = 0, ε = 0) = cpo(sigmoid, mean token log-prob, α_cpo = 0)
    close(
        pref("simpo")(c, r, rc, rr, **kw, beta=beta, gamma=0.0),
        pref("cpo")(c, r, rc, rr, **kw, beta=beta, nll_coef=0.0, length_norm=True),
    )
    # orpo with β = 0 is SFT: mean-token NLL of y_w
    close(pref("orpo")(c, r, rc, rr, **kw, beta=0.0), -c / lens[0])
    # lipo_lambda with K = 2 and ψ = (1, 0) = dpo × |G₁ − G₂|·(1 − 1/log₂3) = dpo × 0.3690702
    lipo = pref("lipo_lambda")(torch.stack([c, r], -1), torch.stack([rc, rr], -1), scores=t(1.0, 0.0)[None], beta=beta)
    close(lipo, pref("dpo")(c, r, rc, rr, beta=beta) * (1 - 1 / math.log2(3)))


def test_p6_copg_off_policy_minimiser():
    # arbitrary full-support pair distribution μ over ordered pairs (not π_θ): minimiser π ∝ π_ref·exp(R/β)
    k, beta = 4, 0.5
    ref_logp = torch.log_softmax(t(-0.4, 0.1, 0.3, 0.0), -1)
    rewards = t(1.0, 0.0, 0.5, -0.2)
    i, j = _pair_indices(k)
    mu = torch.linspace(0.2, 1.0, i.numel(), dtype=D)

    def objective(logp):
        loss = pref("copg")(
            logp[i],
            logp[j],
            ref_logp[i],
            ref_logp[j],
            chosen_rewards=rewards[i],
            rejected_rewards=rewards[j],
            beta=beta,
        )
        return (mu * loss).sum()

    torch.testing.assert_close(_minimise(objective, k), _target(ref_logp, rewards, beta), atol=1e-3, rtol=0)


def test_every_pairwise_loss_returns_one_value_per_pair():
    b = 3
    g = torch.Generator().manual_seed(0)
    c, r, rc, rr = (-torch.rand(b, generator=g, dtype=D) * 5 - 0.1 for _ in range(4))
    lens = {"chosen_len": t(2.0, 3.0, 4.0), "rejected_len": t(5.0, 1.0, 2.0)}
    extra = {
        "rpo": {"chosen_len": lens["chosen_len"]},
        "ipo": lens,
        "simpo": lens,
        "alphapo": {**lens, "alpha": 0.25},
        "tpo": {**lens, "gold_logp": c, "gold_len": lens["chosen_len"]},
        "slic_hf": {"gold_logp": c},
        "cpo": lens,
        "orpo": lens,
        "copg": {"chosen_rewards": t(1.0, 0.0, 1.0), "rejected_rewards": t(0.0, 0.0, 1.0)},
        "hypo": {"sample_logp": c, "ref_sample_logp": rc},
        "sigmoid_norm": lens,
        "lr_dpo": lens,
        "sft": {"chosen_len": lens["chosen_len"]},
        "wpo": {**lens, "chosen_log_sum_pi_squared": c - 1, "rejected_log_sum_pi_squared": r - 2},
        "spo_aux_recon": {"degree_logits": torch.zeros(b, 3, 3, dtype=D), "degree_labels": torch.zeros(b, 3)},
    }
    skip = {
        "lipo_lambda",
        "dro_offline",
        "brain_recon",
        "tgdpo",
        "ld_dpo",
        "kto",
        "apo_zero_unpaired",
    }  # listwise / per-token / unpaired: above
    for name in sorted(set(algos.names("preference")) - skip):
        out = pref(name)(c, r, rc, rr, **extra.get(name, {}))
        assert out.shape == (b,) and bool(torch.isfinite(out).all()), name


@pytest.mark.parametrize("k", [2, 3])
def test_p7_hypo_rloo_kl_gradient_is_unbiased_by_enumeration(k):
    """ALGORITHMS.md §13 P7: on a tabular policy over 3 responses, the expectation over every k-tuple of samples
    y_1..y_k ∼ π_θ of hypo's KL-term gradient equals ∇KL(π_θ‖π_ref) exactly."""
    import itertools

    logits = torch.tensor([0.3, -0.5, 1.1], dtype=D, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.0, 0.4, -0.2], dtype=D), -1)
    zero = torch.zeros(1, dtype=D)
    expected = torch.zeros(3, dtype=D)
    for ys in itertools.product(range(3), repeat=k):
        logp = torch.log_softmax(logits, -1)
        idx = torch.tensor(ys)
        weight = logp.detach()[idx].sum().exp()  # Π_j π(y_j)
        term = pref("hypo")(zero, zero, zero, zero, sample_logp=logp[idx][None], ref_sample_logp=ref[idx][None],
                            kl_coef=1.0)  # fmt: skip
        (grad,) = torch.autograd.grad(term.sum(), logits)
        expected += weight * grad
    logp = torch.log_softmax(logits, -1)
    (exact,) = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), logits)
    torch.testing.assert_close(expected, exact, atol=1e-12, rtol=0)


def test_dpo_variants_hand_values():
    # The shared pair: h_w = 1, h_l = −1, Δ = 2, |y_w| = 2, |y_l| = 4, β = 0.5 (βΔ = 1, −log σ(1) = 0.3132617).
    # sigmoid_norm: β·(1/2 − (−1/4)) = 0.375 → −log σ(0.375) = 0.5231233
    close(pref("sigmoid_norm")(C, R, RC, RR, chosen_len=LEN_W, rejected_len=LEN_L, beta=0.5), 0.5231233)
    # f_dpo: js: z = 2 − (softplus(1) − softplus(−1)) = 2 − 1 = 1, βz = 0.5 → −log σ(0.5) = 0.4740770;
    # forward_kl: z = e^{1} − e^{−1} = 2.3504024 → −log σ(1.1752012) = 0.2690777
    close(pref("f_dpo")(C, R, RC, RR, beta=0.5, divergence="js"), 0.4740770)
    close(pref("f_dpo")(C, R, RC, RR, beta=0.5, divergence="forward_kl"), 0.2690777)
    close(pref("f_dpo")(C, R, RC, RR, beta=0.5, divergence="alpha", alpha=1.0), 0.2690777)  # TRL's α = 1
    # dpop, λ = 1: h_w = 1 > 0, no penalty → dpo; with the chosen below the reference (h_w = −1, h_l = −3, Δ = 2):
    # β·(2 − 1·1) = 0.5 → −log σ(0.5) = 0.4740770
    close(pref("dpop")(C, R, RC, RR, beta=0.5, lam=1.0), 0.3132617)
    close(pref("dpop")(C - 2, R - 2, RC, RR, beta=0.5, lam=1.0), 0.4740770)
    # lr_dpo, α = 0.25: βΔ − α·(2 − 4) = 1 + 0.5 = 1.5 → −log σ(1.5) = 0.2014133
    close(pref("lr_dpo")(C, R, RC, RR, chosen_len=LEN_W, rejected_len=LEN_L, beta=0.5, alpha=0.25), 0.2014133)
    # sft: −logp_w / mean |y_w|: chosen −1 over 2 tokens → 0.5
    close(pref("sft")(C, R, RC, RR, chosen_len=LEN_W), 0.5)
    # apo_zero_unpaired on the pair: desirable 1 − σ(0.5) = 0.3775407, undesirable σ(−0.5) = 0.3775407
    close(pref("apo_zero_unpaired")(C, R, RC, RR, beta=0.5), [0.3775407, 0.3775407])


def test_wpo_hand_values_p4_and_its_gradient():
    # the shared pair (βΔ = 1, DPO 0.3132617); Σ_t log Σπ² chosen so that ℓ_w = (−1 − S_w)/2 = −0.3 and
    # ℓ_l = (−3 − S_l)/4 = −0.2: ω = exp(−0.5) → 0.6065307 · 0.3132617 = 0.1900028
    lens = {"chosen_len": LEN_W, "rejected_len": LEN_L}
    s_w, s_l = C + 2 * 0.3, R + 4 * 0.2
    wpo = pref("wpo")
    close(wpo(C, R, RC, RR, chosen_log_sum_pi_squared=s_w, rejected_log_sum_pi_squared=s_l, **lens, beta=0.5),
          0.1900028)  # fmt: skip
    # ℓ_w + ℓ_l > 0 is clamped: ω = 1, DPO (§13 P4: weighting off ⇔ ω ≡ 1)
    close(wpo(C, R, RC, RR, chosen_log_sum_pi_squared=C - 2, rejected_log_sum_pi_squared=R, **lens, beta=0.5),
          0.3132617)  # fmt: skip
    # ω is a constant of the step: the gradient is ω times DPO's
    c = C.clone().requires_grad_(True)
    (g_wpo,) = torch.autograd.grad(
        wpo(c, R, RC, RR, chosen_log_sum_pi_squared=s_w, rejected_log_sum_pi_squared=s_l, **lens, beta=0.5), c
    )
    (g_dpo,) = torch.autograd.grad(pref("dpo")(c, R, RC, RR, beta=0.5), c)
    close(g_wpo, math.exp(-0.5) * g_dpo)


def test_ld_dpo_weights_the_surplus_tokens():
    # y_w has 2 tokens (log-ratios 0.5, 0.5), y_l has 3 (−0.2, −0.2, −0.6): ℓ* = 2. With α = 0.5:
    # h_w = 1, h_l = −0.4 − 0.5·0.6 = −0.7, β = 1 → −log σ(1.7) = 0.1677860. α = 1 is DPO: Δ = 2 → 0.1269280.
    mask_w, mask_l = torch.tensor([[1, 1, 0]]), torch.tensor([[1, 1, 1]])
    logp_w, logp_l = t(-1.0, -1.0, 0.0).reshape(1, 3), t(-1.2, -1.2, -1.6).reshape(1, 3)
    ref = torch.full((1, 3), -1.5, dtype=D)
    ref_l = torch.full((1, 3), -1.0, dtype=D)
    kw = {"chosen_mask": mask_w, "rejected_mask": mask_l, "beta": 1.0}
    close(pref("ld_dpo")(logp_w, logp_l, ref, ref_l, **kw, ld_alpha=0.5), 0.1677860)
    close(pref("ld_dpo")(logp_w, logp_l, ref, ref_l, **kw, ld_alpha=1.0), 0.1269280)


@SETTINGS
@given(logp=st.lists(st.floats(-30.0, -0.1), min_size=4, max_size=8), beta=st.sampled_from([0.05, 0.1, 0.5]))
def test_p4_dpo_variants_reduce_to_dpo(logp, beta):
    """ALGORITHMS.md §13 P4: f_dpo(reverse_kl) = DPO and α → 0 of TRL's α-divergence falls back to it; ld_alpha = 1,
    dpop's λ = 0 and lr_dpo's α = 0 give DPO; apo_zero_unpaired on pairs is half of apo_zero per response."""
    n = len(logp) // 4
    c, r, rc, rr = (t(*logp[i * n : (i + 1) * n]) for i in range(4))
    dpo = pref("dpo")(c, r, rc, rr, beta=beta)
    close(pref("f_dpo")(c, r, rc, rr, beta=beta), dpo)
    torch.testing.assert_close(pref("f_dpo")(c, r, rc, rr, beta=beta, divergence="alpha", alpha=1e-7), dpo,
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    close(pref("dpop")(c, r, rc, rr, beta=beta, lam=0.0), dpo)
    lens = {"chosen_len": torch.full((n,), 3.0, dtype=D), "rejected_len": torch.full((n,), 7.0, dtype=D)}
    close(pref("lr_dpo")(c, r, rc, rr, **lens, beta=beta, alpha=0.0), dpo)
    per_token = {k: v[:, None].expand(n, 2) / 2 for k, v in {"c": c, "r": r, "rc": rc, "rr": rr}.items()}
    masks = {"chosen_mask": torch.ones(n, 2), "rejected_mask": torch.ones(n, 2)}
    args = (per_token["c"], per_token["r"], per_token["rc"], per_token["rr"])
    close(pref("ld_dpo")(*args, **masks, beta=beta, ld_alpha=1.0), dpo)
    close(
        pref("apo_zero_unpaired")(c, r, rc, rr, beta=beta).view(2, n).sum(0), pref("apo_zero")(c, r, rc, rr, beta=beta)
    )


@pytest.mark.parametrize("alpha", [0.25, -0.5, 1.0])
def test_alphapo_equals_trls_cpo_loss(alpha):
    # TRL 1.16's CPOTrainer.cpo_loss with loss_type="alphapo" (→ simpo, cpo_alpha 0) on length-averaged log-probs
    from types import SimpleNamespace

    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    g = torch.Generator().manual_seed(3)
    c, r = -torch.rand(4, generator=g, dtype=D) * 6, -torch.rand(4, generator=g, dtype=D) * 6
    lw, ll = t(2.0, 3.0, 5.0, 1.0), t(4.0, 1.0, 2.0, 3.0)
    trl = SimpleNamespace(alpha=alpha, beta=2.0, loss_type="simpo", simpo_gamma=0.5, label_smoothing=0.1,
                          accelerator=SimpleNamespace(device="cpu"))  # fmt: skip
    expected, _, _ = cpo.CPOTrainer.cpo_loss(trl, c / lw, r / ll)
    ours = pref("alphapo")(c, r, c, r, chosen_len=lw, rejected_len=ll, alpha=alpha, beta=2.0, gamma=0.5,
                           label_smoothing=0.1)  # fmt: skip
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)


def test_tpo_and_slic_hf_hand_values():
    kw = {"chosen_len": LEN_W, "rejected_len": LEN_L, "gold_logp": t(-3.0), "gold_len": t(3.0)}
    # tpo sigmoid, β = .5, α = 1: −log σ(.5·(−1 + 3)) + 3/3 = .3132617 + 1
    close(pref("tpo")(C, R, RC + 9, RR, **kw, beta=0.5), 1.3132617)
    # hinge: max(0, 1 − .5·2) = 0 ; ipo on token means (−.5 + .75 = .25): (.25 − 1)² = .5625 ; with α = .5: + .5
    close(pref("tpo")(C, R, RC, RR, **kw, beta=0.5, loss_type="hinge", alpha=0.0), 0.0)
    close(pref("tpo")(C, R, RC, RR, **kw, beta=0.5, loss_type="ipo", alpha=0.5), 1.0625)
    # tpo-l: −log σ(2·.25 − .5) = log 2
    close(pref("tpo")(C, R, RC, RR, **kw, beta=2.0, loss_type="tpo-l", gamma=0.5, alpha=0.0), LOG2)
    # the NLL averages over every gold token of the step: per pair −gold / L̄
    out = pref("tpo")(t(-1.0, -1.0), t(-1.0, -1.0), t(0.0, 0.0), t(0.0, 0.0), chosen_len=t(1.0, 1.0),
                      rejected_len=t(1.0, 1.0), gold_logp=t(-2.0, -6.0), gold_len=t(1.0, 3.0), beta=1.0)  # fmt: skip
    close(out.mean() - LOG2, (2.0 + 6.0) / (1.0 + 3.0))
    # slic_hf: max(0, 1 − (−1) + (−3)) = 0 − .5·(−3) = 1.5 ; δ = 3: 1 + 1.5
    close(pref("slic_hf")(C, R, RC, RR, gold_logp=t(-3.0)), 1.5)
    close(pref("slic_hf")(C, R, RC, RR, gold_logp=t(-3.0), delta=3.0), 2.5)


def test_brain_recon_by_hand_and_its_fixed_point_is_the_reward_conditioned_posterior():
    # scores (1, 0, .5), r̄ = .5: α̂ ∝ σ(.5), σ(−.5), σ(0) = (.41497, .25169, .33333); log π − log π_ref = −7 everywhere,
    # so the baseline β̂ is uniform; logp (−1, −2, −3): −Σ (α̂ − β̂)·logp = −(−.08164 + .16328) = −.0816396
    logp, scores = t(-1.0, -2.0, -3.0)[None], t(1.0, 0.0, 0.5)[None]
    close(pref("brain_recon")(logp, logp + 7, scores=scores), -0.0816396)
    # the list is the whole support of a tabular policy: descending the estimator reaches π ∝ π_ref·σ(r − r̄), where
    # α̂ = β̂ and the gradient vanishes (without the baseline it would go to the reward-weighted list, ignoring π_ref)
    ref = torch.log_softmax(t(0.8, -0.4, 0.1), -1)[None]
    logits = torch.zeros(1, 3, dtype=D, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(2000):
        opt.zero_grad()
        pref("brain_recon")(torch.log_softmax(logits, -1), ref, scores=scores).sum().backward()
        opt.step()
    posterior = torch.softmax(ref + torch.nn.functional.logsigmoid(scores - 0.5), -1)
    torch.testing.assert_close(torch.softmax(logits, -1).detach(), posterior, atol=1e-9, rtol=0)


def test_dro_offline_hand_values_and_gradients():
    # β = 0.5, h = logp − ref = (0.5, −1); residuals r − V − βh = 1 − 0.2 − 0.25 = 0.55 and 0 − 0.2 + 0.5 = 0.3;
    # loss ½·mean(0.55², 0.3²) = ½·(0.3025 + 0.09)/2 = 0.098125; ∂/∂V = −mean(residual) = −0.425;
    # ∂/∂logp_i = −β·residual_i/2 = (−0.1375, −0.075); the reference is a constant
    logp = t(-1.0, -2.0).reshape(1, 2).requires_grad_()
    value, ref = t(0.2).requires_grad_(), t(-1.5, -1.0).reshape(1, 2).requires_grad_()
    loss = pref("dro_offline")(logp, ref, scores=t(1.0, 0.0).reshape(1, 2), value=value, beta=0.5)
    close(loss, [0.098125])
    loss.sum().backward()
    close(value.grad, [-0.425])
    close(logp.grad, [[-0.1375, -0.075]])
    assert ref.grad is None or float(ref.grad.abs().sum()) == 0.0


def test_dro_offline_minimiser_is_the_kl_regularised_optimum():
    # one prompt, every response listed with its reward: the joint minimiser over a softmax policy and V is
    # π* ∝ π_ref·exp(r/β) with V* = β·log Σ π_ref·exp(r/β), where the loss is exactly 0
    beta, r = 0.5, t(1.0, 0.0, 0.5, -1.0).reshape(1, 4)
    ref = torch.log_softmax(t(0.3, -0.2, 0.1, 0.0), -1).reshape(1, 4)
    logits, value = torch.zeros(4, dtype=D, requires_grad=True), torch.zeros(1, dtype=D, requires_grad=True)
    opt = torch.optim.Adam([logits, value], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        pref("dro_offline")(torch.log_softmax(logits, -1).reshape(1, 4), ref, scores=r, value=value,
                            beta=beta).sum().backward()  # fmt: skip
        opt.step()
    target = torch.log_softmax(ref + r / beta, -1)
    torch.testing.assert_close(torch.log_softmax(logits, -1).reshape(1, 4), target, atol=1e-4, rtol=0)
    torch.testing.assert_close(value, beta * torch.logsumexp(ref + r / beta, -1), atol=1e-4, rtol=0)


def test_discopop_loss_rises_with_the_margin_at_the_reference():
    # L(x) = (1 − σ(x/τ))·(−log σ(x)) + σ(x/τ)·e^{−x}, x = βΔ: L'(0) = (1 − ln 2)/(4τ) − 3/4, positive for τ < 0.102, so
    # gradient descent from π = π_ref first lowers the margin (tests/recipes/test_learning.py exempts the recipe).
    # β = 0.1, τ = 0.05: ∂L/∂Δ = 0.1·(0.30685282/0.2 − 0.75) = 0.0784264
    chosen = t(0.0).requires_grad_()
    pref("discopop")(chosen, t(0.0), t(0.0), t(0.0), beta=0.1, tau=0.05).sum().backward()
    close(chosen.grad, 0.1 * ((1 - math.log(2)) / 0.2 - 0.75))
    assert float(chosen.grad) > 0


def test_spo_aux_recon_by_hand_and_its_degree_gradient():
    # Δ = 2 (the shared pair): DPO's −log σ(0.1·2). K = 1, two copies: logits (0, ln 3) with label 1 cost
    # −ln(3/4); (0, 0) with label 0 costs ln 2; their mean times λ = 0.5 is 0.25·ln(8/3)
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]], dtype=D, requires_grad=True)
    labels = torch.tensor([[1, 0]])
    loss = pref("spo_aux_recon")(C, R, RC, RR, degree_logits=logits, degree_labels=labels, weight=0.5, max_removed=1)
    close(loss, NLS(0.2) + 0.25 * math.log(8 / 3))
    loss.sum().backward()
    # λ/(K + 1)·(softmax − one-hot): 0.25·((1/4, 3/4) − (0, 1)) and 0.25·((1/2, 1/2) − (1, 0))
    close(logits.grad, [[[1 / 16, -1 / 16], [-1 / 8, 1 / 8]]])
    with pytest.raises(ValueError, match=r"max_removed=2 needs \[B, 3, 3\] degree_logits"):
        pref("spo_aux_recon")(C, R, RC, RR, degree_logits=logits, degree_labels=labels)
