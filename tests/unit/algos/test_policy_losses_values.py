"""Hand-worked values and gradients of the policy losses added beside ppo_clip/dual_clip/gspo/cispo.

Convention in most tests: old_logp = 0, so logp = log ρ; gradients are d token_sum(ℓ)/d logp, i.e. −W·A per token.
"""

import inspect
import math

import pytest
import torch

from unipo import algos

F64 = torch.float64
LN = math.log


def t(values):
    return torch.tensor(values, dtype=F64)


def get(name):
    return algos.get("policy_loss", name)


def grad_of(name, logp, old_logp, adv, mask, agg="token_sum", **kw):
    """(per-token loss, metrics, d agg(loss)/d logp)."""
    logp = logp.clone().requires_grad_(True)
    loss, metrics = get(name)(logp, old_logp, adv, mask, **kw)
    (g,) = torch.autograd.grad(algos.get("aggregation", agg)(loss, mask), logp)
    return loss.detach(), metrics, g


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# Shared fixture: row 0 has A = +1, row 1 has A = -1; ratios 1.5, 0.5, 1.1, 0.9; the last token of row 1 is masked
# and holds logp = -inf (padding), which must give a finite loss and a zero gradient.
RATIOS = [1.5, 0.5, 1.1, 0.9]
LOGP = t([[LN(r) for r in RATIOS], [LN(r) for r in RATIOS[:3]] + [-math.inf]])
OLD = torch.zeros(2, 4, dtype=F64)
ADV = t([1.0, -1.0])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def check_masked(loss, g):
    assert torch.isfinite(loss).all() and g[1, 3] == 0


def test_reinforce_by_hand():
    # ℓ = -A·logp; A=+1: -ln(1.5, .5, 1.1, .9) = (-.405465, .693147, -.095310, .105361); A=-1: the opposite.
    # gradient -A: -1 on row 0, +1 on row 1 (0 on the masked token).
    loss, metrics, g = grad_of("reinforce", LOGP, OLD, ADV, MASK)
    torch.testing.assert_close(loss[0], t([-0.405465, 0.693147, -0.095310, 0.105361]), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss[1, :3], t([0.405465, -0.693147, 0.095310]), atol=1e-6, rtol=0)
    torch.testing.assert_close(g, t([[-1.0, -1, -1, -1], [1, 1, 1, 0]]))
    check_masked(loss, g)
    assert not metrics["clip/frac"].any()


def test_clip_higher_by_hand():
    # ε_low = .2, ε_high = .28. A=+1: ρ=1.5 > 1.28 -> -1.28, grad 0; ρ=.5 (low side does not bind for A>0) -> -.5,
    # grad -.5; 1.1 -> -1.1; .9 -> -.9. A=-1: ρ=1.5 -> max(1.5, 1.28) = 1.5, grad 1.5; ρ=.5 < .8 -> .8, grad 0.
    loss, metrics, g = grad_of("clip_higher", LOGP, OLD, ADV, MASK)
    torch.testing.assert_close(loss[0], t([-1.28, -0.5, -1.1, -0.9]))
    torch.testing.assert_close(loss[1, :3], t([1.5, 0.8, 1.1]))
    torch.testing.assert_close(g, t([[0.0, -0.5, -1.1, -0.9], [1.5, 0.0, 1.1, 0.0]]))
    torch.testing.assert_close(metrics["clip/frac_high"][0], t([1.0, 0, 0, 0]))
    torch.testing.assert_close(metrics["clip/frac_low"][1], t([0.0, 1, 0, 0]))
    check_masked(loss, g)


def test_ratio_cap_delta_by_hand():
    # δ = 4, ε = .2. A=-1: ρ=5 -> max(min(5, 4), 1.2) = 4, constant -> grad 0 (capped); ρ=2 -> 2, grad -A·ρ = 2;
    # ρ=.5 -> max(.5, .8) = .8, grad 0 (clipped low). A=+1: ρ=5 -> -min(4, 1.2) = -1.2, grad 0; ρ=.9 -> -.9, grad -.9.
    logp = t([[LN(5.0), LN(2.0), LN(0.5)], [LN(5.0), LN(0.9), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, metrics, g = grad_of("ratio_cap_delta", logp, torch.zeros(2, 3, dtype=F64), t([-1.0, 1.0]), mask)
    torch.testing.assert_close(loss[0], t([4.0, 2.0, 0.8]))
    torch.testing.assert_close(loss[1, :2], t([-1.2, -0.9]))
    torch.testing.assert_close(g, t([[0.0, 2.0, 0.0], [0.0, -0.9, 0.0]]))
    torch.testing.assert_close(metrics["clip/frac_cap"], t([[1.0, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(metrics["clip/frac"], t([[1.0, 0, 1], [1, 0, 0]]))


def test_luspo_is_gspo_scaled_by_length():
    # ε = .2. Row 0 (2 valid tokens): log ρ = (.2, .4) -> s = e^.3 = 1.34986 > 1.2, A=+1 -> ℓ_0 = -1.2 (clipped).
    # Row 1 (3 tokens): log ρ = (.1, -.1, 0) -> s = 1, A=-1 -> ℓ_1 = 1 (unclipped).
    # seq_mean_token_sum = (|y_0|·ℓ_0 + |y_1|·ℓ_1)/2 = (2·(-1.2) + 3·1)/2 = .3.
    # gradient: row 0 clipped -> 0; row 1: d(3·s_1/2)/d logp_t = (3/2)·s_1·(1/3) = .5 per token.
    logp = t([[0.2, 0.4, 9.0], [0.1, -0.1, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    kw = {"clip_low": 0.2, "clip_high": 0.2}
    loss, _, g = grad_of("luspo", logp, torch.zeros(2, 3, dtype=F64), t([1.0, -1.0]), mask, "seq_mean_token_sum", **kw)
    value = algos.get("aggregation", "seq_mean_token_sum")(loss, mask)
    torch.testing.assert_close(value, t(0.3))
    torch.testing.assert_close(g, t([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]))


def test_gmpo_by_hand():
    # ε = .4 in log space. Row 0, A=+1, log ρ = (.2, .6): l̃ = (.2, .4) (second clipped high, grad 0),
    #   s̃ = e^.3 = 1.349859, ℓ = -1.349859 on each token; grad (token_sum) = -A·s̃ = -1.349859 on token 0.
    # Row 1, A=-1, log ρ = (-.6, .2): l̃ = max(l, clip(l)) = (-.4, .2) (first clipped low), s̃ = e^-.1 = .904837,
    #   ℓ = .904837; grad .904837 on token 1 only.
    # Row 2, A=+1, log ρ = (-.6, 0): the low side does not bind for A>0, l̃ = l, s̃ = e^-.3 = .740818, both tokens
    #   get -.740818.
    logp = t([[0.2, 0.6], [-0.6, 0.2], [-0.6, 0.0]])
    loss, metrics, g = grad_of("gmpo", logp, torch.zeros(3, 2, dtype=F64), t([1.0, -1.0, 1.0]), torch.ones(3, 2))
    s0, s1, s2 = math.exp(0.3), math.exp(-0.1), math.exp(-0.3)
    torch.testing.assert_close(loss, t([[-s0, -s0], [s1, s1], [-s2, -s2]]))
    torch.testing.assert_close(g, t([[-s0, 0.0], [0.0, s1], [-s2, -s2]]))
    torch.testing.assert_close(metrics["clip/frac_high"], t([[0.0, 1], [0, 0], [0, 0]]))
    torch.testing.assert_close(metrics["clip/frac_low"], t([[0.0, 0], [1, 0], [0, 0]]))
    # under seq_mean_token_mean each token also gets 1/|y_i| = 1/2 (and 1/N = 1/3)
    _, _, g_seq = grad_of(
        "gmpo", logp, torch.zeros(3, 2, dtype=F64), t([1.0, -1.0, 1.0]), torch.ones(3, 2), "seq_mean_token_mean"
    )
    torch.testing.assert_close(g_seq, g / 6)


def test_vespo_by_hand():
    # old = -1, logp = old + log ρ. Row 0, A=+1 (k=2, λ=3): log ρ = (.1, .2) -> log w = .3, w = e^.3 = 1.349859,
    #   φ = exp(3 + 2·.3 - 3·1.349859) = exp(-.449576) = .637888; ℓ = -φ·A·logp = .637888·(.9, .8); grad -φ.
    # Row 1, A=-1 (k=3, λ=2): log ρ = (0, 0) -> w = 1, φ = e^{2 + 0 - 2} = 1; ℓ = logp = (-1, -1); grad +1.
    old = torch.full((2, 2), -1.0, dtype=F64)
    logp = old + t([[0.1, 0.2], [0.0, 0.0]])
    loss, metrics, g = grad_of("vespo", logp, old, t([1.0, -1.0]), torch.ones(2, 2))
    phi = math.exp(3 + 2 * 0.3 - 3 * math.exp(0.3))
    torch.testing.assert_close(loss, t([[phi * 0.9, phi * 0.8], [-1.0, -1.0]]))
    torch.testing.assert_close(g, t([[-phi, -phi], [1.0, 1.0]]))
    torch.testing.assert_close(metrics["ratio/mean"][:, 0], t([math.exp(0.3), 1.0]))
    # rollout_logp = old - .1 per token: log ρ^roll = .1, row 1 log w = .2 -> φ = exp(2 + 3·.2 - 2·e^.2) = 1.170225.
    _, metrics, g = grad_of("vespo", logp, old, t([1.0, -1.0]), torch.ones(2, 2), rollout_logp=old - 0.1)
    phi1 = math.exp(2 + 3 * 0.2 - 2 * math.exp(0.2))
    torch.testing.assert_close(g[1], t([phi1, phi1]))
    torch.testing.assert_close(metrics["vespo/phi"][1], t([phi1, phi1]))


def test_sapo_by_hand():
    # A=+1 (τ=1), ρ=1.5: ℓ = -(4/1)·σ(.5) = -4·.622459 = -2.489836; W = ρ·4σ(1-σ) = 1.5·.940014, grad = -W.
    # A=-1 (τ=1.05), ρ=.5: ℓ = (4/1.05)·σ(-.525) = 3.809524·.371690 = 1.415962; W = .5·4σ(1-σ), grad = +W.
    # ρ=1: σ = .5, ℓ = -2A/τ, W = 1.
    logp = t([[LN(1.5), 0.0], [LN(0.5), 0.0]])
    loss, metrics, g = grad_of("sapo", logp, torch.zeros(2, 2, dtype=F64), t([1.0, -1.0]), torch.ones(2, 2))
    s_pos, s_neg = sigmoid(0.5), sigmoid(-0.525)
    torch.testing.assert_close(loss, t([[-4 * s_pos, -2.0], [4 / 1.05 * s_neg, 2 / 1.05]]))
    torch.testing.assert_close(g, t([[-1.5 * 4 * s_pos * (1 - s_pos), -1.0], [0.5 * 4 * s_neg * (1 - s_neg), 1.0]]))
    torch.testing.assert_close(metrics["sapo/gate"][:, 1], t([1.0, 1.0]))


def test_rec_keep_masks_by_hand():
    # ε = .2 -> range [.8, 1.2]; ring ε' = (.6, 2.0) -> also keeps A≥0 with ρ ≤ .4 and A≤0 with ρ ≥ 3.
    # ratios (3.5, .3, 1.5, .5, 1.1); row 0 A=+1, row 1 A=-1. keep masks:
    #   one_side: A=+1 drops ρ>1.2 -> (0, 1, 0, 1, 1); A=-1 drops ρ<.8 -> (1, 0, 1, 0, 1)
    #   two_side: both rows (0, 0, 0, 0, 1)
    #   ring:     A=+1 -> (0, 1, 0, 0, 1) (ρ=.3 ≤ .4 kept); A=-1 -> (1, 0, 0, 0, 1) (ρ=3.5 ≥ 3 kept)
    # weight "none": gradient = -A·keep; weight "ratio": -ρ·A·keep.
    ratios = [3.5, 0.3, 1.5, 0.5, 1.1]
    logp = t([[LN(r) for r in ratios]] * 2)
    old, adv, mask = torch.zeros(2, 5, dtype=F64), t([1.0, -1.0]), torch.ones(2, 5)
    keeps = {
        "one_side": [[0, 1, 0, 1, 1], [1, 0, 1, 0, 1]],
        "two_side": [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]],
        "ring": [[0, 1, 0, 0, 1], [1, 0, 0, 0, 1]],
        "none": [[1] * 5, [1] * 5],
    }
    for mode, keep in keeps.items():
        loss, metrics, g = grad_of("rec", logp, old, adv, mask, clip_mode=mode)
        torch.testing.assert_close(g, -t(keep) * adv[:, None], msg=mode)
        torch.testing.assert_close(loss, -t(keep) * adv[:, None] * logp, msg=mode)
        torch.testing.assert_close(metrics["clip/frac"], 1 - t(keep), msg=mode)
    _, _, g = grad_of("rec", logp, old, adv, mask, clip_mode="one_side", weight="ratio")
    torch.testing.assert_close(g, -t(keeps["one_side"]) * t([ratios, ratios]) * adv[:, None])


def test_rec_sequence_ratio_by_hand():
    # log ρ = (.2, .4) in both rows -> s = e^.3 = 1.349859. gspo_one_side: A=+1 and s > 1.2 -> whole row dropped;
    # A=-1 -> kept. weight="seq_ratio": w = s on every token, gradient -s·A = +1.349859 on row 1.
    logp = t([[0.2, 0.4], [0.2, 0.4]])
    loss, metrics, g = grad_of(
        "rec",
        logp,
        torch.zeros(2, 2, dtype=F64),
        t([1.0, -1.0]),
        torch.ones(2, 2),
        clip_mode="gspo_one_side",
        weight="seq_ratio",
    )
    s = math.exp(0.3)
    torch.testing.assert_close(g, t([[0.0, 0.0], [s, s]]))
    torch.testing.assert_close(metrics["ratio/mean"], t([[s, s], [s, s]]))


def test_nft_by_hand():
    # group 0 = rows 0-3 with rewards (1, 0, 0, 0): r̂ = .25, normalize=1 multiplies by (1 - r̂) = .75.
    # row 0 (correct), log R = (.2, -.3): ℓ = -log R·.75 = (-.15, .225); grad -(1 - r̂) = -.75 (c₊ = 0 is inert).
    # row 1 (wrong), log R = .2: proxy = (1 - .25·e^.2)/.75 = (1 - .305351)/.75 = .926199 < c₋ = 1, so the value is
    #   -log 1 = 0 and the gradient is -∂proxy/1 · .75 = r̂·R = .305351 (straight-through).
    # row 1, log R = -.2: proxy = (1 - .25·.818731)/.75 = 1.060423 ≥ 1: ℓ = -.75·log 1.060423 = -.044001;
    #   grad = .75·r̂·R/((1 - r̂)·proxy) = r̂·R/proxy = .204683/1.060423 = .193020.
    # group 1 = row 4, all correct: r̂ = 1 clamped to .98 -> ℓ = -log R·.02.
    logp = t([[0.2, -0.3], [0.2, -0.2], [0.0, 0.0], [0.0, 0.0], [0.5, -math.inf]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]])
    rewards, group_ids = t([1.0, 0.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0, 1])
    loss, metrics, g = grad_of(
        "nft", logp, torch.zeros(5, 2, dtype=F64), torch.zeros(5), mask, rewards=rewards, group_ids=group_ids
    )
    r_pos, r_neg = math.exp(0.2), math.exp(-0.2)
    proxy = (1 - 0.25 * r_neg) / 0.75
    torch.testing.assert_close(loss[0], t([-0.15, 0.225]))
    torch.testing.assert_close(loss[1], t([0.0, -0.75 * math.log(proxy)]))
    torch.testing.assert_close(g[0], t([-0.75, -0.75]))
    torch.testing.assert_close(g[1], t([0.25 * r_pos, 0.25 * r_neg / proxy]))
    torch.testing.assert_close(loss[4, 0], t(-0.5 * 0.02))
    torch.testing.assert_close(metrics["nft/correct_rate"][:, 0], t([0.25, 0.25, 0.25, 0.25, 0.98]))
    torch.testing.assert_close(metrics["clip/frac_high"][1], t([1.0, 0.0]))
    assert torch.isfinite(loss).all() and g[4, 1] == 0


def test_bapo_by_hand():
    # tokens (A, ρ): (+1, 2.0), (+1, 1.3), (-4, 1.0). |clipped term| = |min(ρA, clip(ρ, c_low, c_high)A)|.
    # c_high = 1.20: P = (1.2 + 1.2)/(2.4 + 4) = .375 < .4 -> widen; 1.25: 2.5/6.5 = .385; 1.30: 2.6/6.6 = .394;
    # 1.35: (1.35 + 1.3)/(2.65 + 4) = .3985; 1.40: (1.4 + 1.3)/(2.7 + 4) = .40299 ≥ .4 -> stop at (.6, 1.4).
    # loss: -min(2, 1.4) = -1.4 (grad 0); -1.3 (grad -1.3, inside the widened range); -(-4)·1 = 4 (grad 4).
    logp = t([[LN(2.0), LN(1.3), 0.0]])
    loss, metrics, g = grad_of("bapo", logp, torch.zeros(1, 3, dtype=F64), t([[1.0, 1.0, -4.0]]), torch.ones(1, 3))
    torch.testing.assert_close(loss, t([[-1.4, -1.3, 4.0]]))
    torch.testing.assert_close(g, t([[0.0, -1.3, 4.0]]))
    torch.testing.assert_close(metrics["bapo/clip_high"][0, 0], t(1.4))
    torch.testing.assert_close(metrics["bapo/clip_low"][0, 0], t(0.6))
    torch.testing.assert_close(metrics["bapo/pos_share"][0, 0], t(2.7 / 6.7))


def test_bapo_paper_and_official_code_searches_by_hand():
    # ρ = (2.5, 1.3, 5), A = (+1, +1, -1), target P ≥ .5 (the code's pos/neg ≥ 1). The positive tokens can carry at
    # most 2.5 + 1.3 = 3.8 < 5 of the loss, so both searches run to their last bounds.
    # paper (c_high first to 3.0, then c_low to .9): loss (-2.5, -1.3, 5), grad (-2.5, -1.3, 5), no dual clip.
    # code (c_low .6 -> .8, then c_high 1.2 -> 2.0): token 1 clipped at 2 (loss -2, grad 0); token 3 dual-clipped at
    # -c·A = 3 (grad 0).
    logp, old, adv = t([[LN(2.5), LN(1.3), LN(5.0)]]), torch.zeros(1, 3, dtype=F64), t([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, metrics, g = grad_of("bapo", logp, old, adv, mask, target_pos_share=0.5)
    torch.testing.assert_close(loss, t([[-2.5, -1.3, 5.0]]))
    torch.testing.assert_close(g, t([[-2.5, -1.3, 5.0]]))
    assert (metrics["bapo/clip_low"][0, 0].item(), metrics["bapo/clip_high"][0, 0].item()) == pytest.approx((0.9, 3.0))
    code = dict(search="code", target_pos_share=0.5, bound_low_max=0.8, bound_high_max=2.0, step_low=0.05)
    loss, metrics, g = grad_of("bapo", logp, old, adv, mask, **code)
    torch.testing.assert_close(loss, t([[-2.0, -1.3, 3.0]]))
    torch.testing.assert_close(g, t([[0.0, -1.3, 0.0]]))
    assert (metrics["bapo/clip_low"][0, 0].item(), metrics["bapo/clip_high"][0, 0].item()) == pytest.approx((0.8, 2.0))
    # the code's path: c_low first, a last step cut at its maximum, then c_high
    path = algos.policy_losses.trust_region.bapo_code_candidates(0.6, 0.9, 1.2, 1.3, 0.2, 0.05)
    torch.testing.assert_close(t(path), t([[0.6, 1.2], [0.8, 1.2], [0.9, 1.2], [0.9, 1.25], [0.9, 1.3]]))


def test_mdpo_by_hand():
    # β = 1, default estimator ρ·ln ρ − ρ + 1. A=+1, ρ=1.5: ℓ = -1.5 + (1.5·.405465 - .5) = -1.391802;
    #   grad = -(ρA - β·ρ·ln ρ) = -(1.5 - .608198) = -.891802.
    # A=-1, ρ=.5: ℓ = .5 + (.5·(-.693147) + .5) = .653426; grad = -(-.5 - .5·(-.693147)) = .153426.
    # k3 = 1/ρ - 1 + ln ρ: A=+1, ρ=1.5: ℓ = -1.5 + (.666667 - 1 + .405465) = -1.427868;
    #   grad = -(ρA - β(1 - 1/ρ)) = -(1.5 - .333333) = -1.166667.
    # k2 = ½(ln ρ)²: A=+1, ρ=1.5: ℓ = -1.5 + .5·.164402 = -1.417799; grad = -(1.5 - .405465) = -1.094535.
    logp = t([[LN(1.5)], [LN(0.5)]])
    old, adv, mask = torch.zeros(2, 1, dtype=F64), t([1.0, -1.0]), torch.ones(2, 1)
    loss, metrics, g = grad_of("mdpo", logp, old, adv, mask)
    torch.testing.assert_close(loss, t([[-1.391802], [0.653426]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(g, t([[-0.891802], [0.153426]]), atol=1e-6, rtol=0)
    loss, _, g = grad_of("mdpo", logp, old, adv, mask, kl_estimator="k3")
    torch.testing.assert_close(loss, t([[-1.5 + 1 / 1.5 - 1 + LN(1.5)], [0.5 + 2 - 1 + LN(0.5)]]))
    torch.testing.assert_close(g, t([[-(1.5 - (1 - 1 / 1.5))], [-0.5]]))
    loss, _, g = grad_of("mdpo", logp, old, adv, mask, kl_estimator="k2")
    torch.testing.assert_close(loss[0], t([-1.5 + 0.5 * LN(1.5) ** 2]))
    torch.testing.assert_close(g[0], t([-(1.5 - LN(1.5))]))


def test_mdpo_token_estimator_is_exact_under_old_policy():
    """ALGORITHMS.md §13 C1 (token estimator): by exact enumeration over a 5-action categorical under π_old,
    E[ρ·log ρ − ρ + 1] = KL(π_θ‖π_old) and its expected gradient is ∇KL(π_θ‖π_old); k3 fails both away from ρ = 1."""
    torch.manual_seed(0)
    old_logits = torch.randn(5, dtype=F64)
    logits = (old_logits + 0.5 * torch.randn(5, dtype=F64)).requires_grad_(True)
    old = torch.log_softmax(old_logits, -1)
    p_old = old.exp()

    def expected(estimator):
        logp = torch.log_softmax(logits, -1)
        # every action as a one-token "sequence" sampled from π_old, weighted by its probability; A = 0.
        loss, _ = get("mdpo")(
            logp[:, None], old[:, None], torch.zeros(5, dtype=F64), torch.ones(5, 1), kl_estimator=estimator
        )
        value = (p_old * loss[:, 0]).sum()
        return value, torch.autograd.grad(value, logits)[0]

    logp = torch.log_softmax(logits, -1)
    exact = (logp.exp() * (logp - old)).sum()
    exact_grad = torch.autograd.grad(exact, logits)[0]
    value, grad = expected("rho_log_rho")
    torch.testing.assert_close(value, exact.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(grad, exact_grad, atol=1e-12, rtol=0)
    value, grad = expected("k3")
    assert abs(value - exact).item() > 1e-3 and (grad - exact_grad).abs().max().item() > 1e-3


def test_dro_by_hand():
    # β = .1, anchor π_old: old = -1. A=+1, logp = -.5 (diff .5): ℓ = -(-.5 - .05·.25) = .5125; grad -(1 - .05) = -.95.
    # A=-1, logp = -1.5 (diff -.5): ℓ = -(1.5 - .0125) = -1.4875; grad = -(-1 - .1·(-.5)) = .95.
    # anchor="ref", ref = -2, logp = -1.5, A = 0: ℓ = ½·.1·.25 = .0125; grad = β·diff = .05.
    old = t([[-1.0], [-1.0]])
    loss, _, g = grad_of("dro", t([[-0.5], [-1.5]]), old, t([1.0, -1.0]), torch.ones(2, 1))
    torch.testing.assert_close(loss, t([[0.5125], [-1.4875]]))
    torch.testing.assert_close(g, t([[-0.95], [0.95]]))
    loss, _, g = grad_of(
        "dro", t([[-1.5]]), t([[-9.0]]), t([0.0]), torch.ones(1, 1), anchor="ref", ref_logp=t([[-2.0]])
    )
    torch.testing.assert_close(loss, t([[0.0125]]))
    torch.testing.assert_close(g, t([[0.05]]))


def test_dppo_tv_by_hand():
    # δ = .2 on π_θ - π_old. A=+1: p .5 -> .8 (diff .3 > .2): invalid, ℓ = 0, grad 0; p .5 -> .6 (diff .1): w = ρ = 1.2,
    #   ℓ = -1.2·ln .6 = .612991, grad -1.2; p .001 -> .1 (diff .099, valid): ρ = 100 capped at C = 20, grad -20.
    # A=-1: p .5 -> .2 (diff -.3 < -.2): invalid; p .05 -> .01 (diff -.04, valid although ρ = .2 is far outside
    #   PPO's range): w = .2, ℓ = .2·ln .01 = -.921034, grad .2.
    logp = t([[LN(0.8), LN(0.6), LN(0.1)], [LN(0.2), LN(0.01), 0.0]])
    old = t([[LN(0.5), LN(0.5), LN(0.001)], [LN(0.5), LN(0.05), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, metrics, g = grad_of("dppo_tv", logp, old, t([1.0, -1.0]), mask, clip_low=0.2, clip_high=0.2, ratio_cap=20)
    torch.testing.assert_close(loss[0], t([0.0, -1.2 * LN(0.6), -20 * LN(0.1)]))
    torch.testing.assert_close(loss[1, :2], t([0.0, 0.2 * LN(0.01)]))
    torch.testing.assert_close(g, t([[0.0, -1.2, -20.0], [0.0, 0.2, 0.0]]))
    torch.testing.assert_close(metrics["clip/frac_high"][0], t([1.0, 0, 0]))
    torch.testing.assert_close(metrics["clip/frac_low"][1], t([1.0, 0, 0]))
    torch.testing.assert_close(metrics["clip/frac_cap"][0], t([0.0, 0, 1]))


def test_dppo_tv_and_luspo_defaults_are_the_papers():
    """DPPO example (the paper's recommendation): δ = 0.15, C = 1e4 (no truncation in practice); LUSPO §5.1:
    ε = 2e-3 / 2.5e-3. At ρ = 100 under A > 0 with π_θ − π_old = .099 < .15 the weight is ρ itself (uncapped)."""
    assert algos.entry("policy_loss", "dppo_tv").params == {"clip_low": 0.15, "clip_high": 0.15, "ratio_cap": 1e4}
    assert algos.entry("policy_loss", "luspo").params == {"clip_low": 2e-3, "clip_high": 2.5e-3}
    _, _, g = grad_of("dppo_tv", t([[LN(0.1)]]), t([[LN(0.001)]]), t([1.0]), torch.ones(1, 1))
    torch.testing.assert_close(g, t([[-100.0]]))


def test_rollout_is_modes_by_hand():
    # logp = old, so ρ = 1 and ℓ_ppo = -A = -1; ρ^roll = π_old/π_roll per token = (3, .5, 1), last token masked.
    #   token_truncate (C=2): w = (2, .5, 1)        token_mask (C=2, C_min=.6): w = (0, 0, 1)
    #   sequence_truncate: Π = 3·.5·1 = 1.5 -> 1.5  sequence_mask (C=1.4): 1.5 > 1.4 -> 0
    #   geo_rs: (1.5)^(1/3) = 1.1447 outside (.999, 1.001) -> 0
    # loss = w·ℓ_ppo = -w, gradient -w·ρ·A = -w.
    old = t([[-1.0, -1.0, -1.0, -1.0]])
    rollout = old - t([[LN(3.0), LN(0.5), 0.0, 0.0]])
    rollout[0, 3] = -math.inf
    mask = torch.tensor([[1, 1, 1, 0]])
    cases = {
        ("token_truncate", ()): [2.0, 0.5, 1.0],
        ("token_mask", (("cap_min", 0.6),)): [0.0, 0.0, 1.0],
        ("sequence_truncate", ()): [1.5, 1.5, 1.5],
        ("sequence_mask", (("cap", 1.4),)): [0.0, 0.0, 0.0],
        ("geo_rs", ()): [0.0, 0.0, 0.0],
    }
    for (mode, extra), w in cases.items():
        loss, metrics, g = grad_of(
            "rollout_is", old, old, t([1.0]), mask, rollout_logp=rollout, mode=mode, **dict(extra)
        )
        torch.testing.assert_close(g[0, :3], -t(w), msg=mode)
        torch.testing.assert_close(loss[0, :3], -t(w), msg=mode)
        torch.testing.assert_close(metrics["rollout_is/weight"][0, :3], t(w), msg=mode)
        assert torch.isfinite(loss).all() and g[0, 3] == 0, mode


def test_rollout_is_batch_normalisation_averages_sequences_in_sequence_modes():
    # ALGORITHMS.md §13 U9. Row 0: one token, ρ^roll = 2; row 1: three tokens, Π ρ^roll = .5 (last column of row 0
    # padding). sequence_truncate (C = 3): w = (2; .5, .5, .5); the mean over sequences is 1.25 (verl), so the
    # normalised weights are (1.6; .4, .4, .4). A token mean, (2 + 1.5)/4 = .875, would give (2.2857; .5714, ...).
    # token_truncate: w = (2; 1, 1, .5) -> token mean 4.5/4 = 1.125 -> (1.7778; .8889, .8889, .4444).
    old = torch.full((2, 3), -1.0, dtype=F64)
    rollout = old - t([[LN(2.0), 0.0, 0.0], [0.0, 0.0, LN(0.5)]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    w = algos.policy_losses.offpolicy.rollout_is_weights
    seq = w(old, rollout, mask, mode="sequence_truncate", cap=3.0, normalize=True)
    torch.testing.assert_close(seq, t([[1.6, 0, 0], [0.4, 0.4, 0.4]]))
    per_seq = seq.sum(-1) / mask.sum(-1)
    torch.testing.assert_close(per_seq.mean(), t(1.0))
    tok = w(old, rollout, mask, mode="token_truncate", cap=3.0, normalize=True)
    torch.testing.assert_close(tok, t([[2 / 1.125, 0, 0], [1 / 1.125, 1 / 1.125, 0.5 / 1.125]]))


def test_flash_reinforce_loss_by_hand():
    # π_b (rollout) → π_θ per token. Row 0 (A = +1): .5 → .5 on two tokens, KL̄ = 0, admitted, ρ_b = 1: grad -1 each.
    # Row 1 (A = +1): .5 → .6, KL = .5·ln(.5/.6) + .5·ln(.5/.4) = .020411 > δ = 3e-3: gated out, grad 0, and no ratio
    #   computed. Row 2 (A = -1): .5 → .52, KL = .5·ln(.5/.52) + .5·ln(.5/.48) = .00080043 ≤ δ: ρ_b = 1.04, grad +1.04.
    # Under seq_mean_token_mean every row keeps its slot: the mean over 3 rows of per-row token means.
    logp = t([[LN(0.5), LN(0.5)], [LN(0.6), 0.0], [LN(0.52), 0.0]])
    behaviour = t([[LN(0.5), LN(0.5)], [LN(0.5), 0.0], [LN(0.5), 0.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    adv = t([1.0, 1.0, -1.0])
    loss, metrics, g = grad_of("flash_reinforce", logp, logp.detach(), adv, mask, rollout_logp=behaviour)
    torch.testing.assert_close(g, t([[-1.0, -1.0], [0.0, 0.0], [1.04, 0.0]]))
    torch.testing.assert_close(
        metrics["flash_reinforce/seq_kl"][:, 0], t([0.0, 0.020411, 0.00080043]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(metrics["flash_reinforce/admitted"][:, 0], t([1.0, 0.0, 1.0]))
    _, _, g = grad_of(
        "flash_reinforce", logp, logp.detach(), adv, mask, rollout_logp=behaviour, agg="seq_mean_token_mean"
    )
    torch.testing.assert_close(g, t([[-1 / 6, -1 / 6], [0.0, 0.0], [1.04 / 3, 0.0]]))
    # δ = inf admits every sequence
    _, _, g = grad_of("flash_reinforce", logp, logp.detach(), adv, mask, rollout_logp=behaviour, delta=math.inf)
    torch.testing.assert_close(g[1], t([-1.2, 0.0]))


def test_opsm_by_hand():
    # δ = .05; KL_i = mean_t(log π_roll - log π_θ). logp = old (ρ = 1, ℓ_ppo = -A).
    # row 0: KL = .1 > δ and A = -1 -> dropped: loss 0, grad 0. row 1: same KL but A = +1 -> kept: grad -1.
    # row 2: KL = .01 ≤ δ, A = -1 -> kept: grad +1.
    logp = torch.full((3, 2), -1.0, dtype=F64)
    rollout = logp + t([[0.1], [0.1], [0.01]])
    loss, metrics, g = grad_of("opsm", logp, logp, t([-1.0, 1.0, -1.0]), torch.ones(3, 2), rollout_logp=rollout)
    torch.testing.assert_close(g, t([[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(loss, t([[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(metrics["opsm/dropped"][:, 0], t([1.0, 0.0, 0.0]))
    # A = 0 counts as A ≥ 0: kept whatever the KL (§13 U9)
    _, metrics, _ = grad_of("opsm", logp[:1], logp[:1], t([0.0]), torch.ones(1, 2), rollout_logp=rollout[:1])
    assert not metrics["opsm/dropped"].any()


def test_etr_recon_by_hand():
    # var_coef = 0: ε = .2·(1 + .5·min(|A|, 2)). A=+1 -> scale 1.5, range [.7, 1.3]: ρ=1.25 -> -1.25 (grad -1.25);
    # ρ=1.5 -> -1.3 (grad 0). A=-3 -> scale 2, range [.6, 1.4]: ρ=.5 -> 3·.6 = 1.8 (grad 0); ρ=.7 -> 2.1 (grad 2.1).
    logp = t([[LN(1.25), LN(1.5)], [LN(0.5), LN(0.7)]])
    old, adv, mask = torch.zeros(2, 2, dtype=F64), t([1.0, -3.0]), torch.ones(2, 2)
    loss, metrics, g = grad_of("etr_recon", logp, old, adv, mask, var_coef=0.0)
    torch.testing.assert_close(loss, t([[-1.25, -1.3], [1.8, 2.1]]))
    torch.testing.assert_close(g, t([[-1.25, 0.0], [0.0, 2.1]]))
    # with the variance term: group rewards (1, 0) -> p = .5, 4p(1-p) = 1 -> h = 1 + .5 = 1.5 for both rows;
    # row 0 scale 1.5·1.5 = 2.25 -> ε_high = .45 -> ρ = 1.5 is clipped at 1.45.
    loss, metrics, _ = grad_of("etr_recon", logp, old, adv, mask, rewards=t([1.0, 0.0]), group_ids=torch.tensor([0, 0]))
    torch.testing.assert_close(loss[0], t([-1.25, -1.45]))
    torch.testing.assert_close(metrics["etr/scale"][:, 0], t([2.25, 3.0]))


def test_dispo_recon_by_hand():
    # correct rows: ε = (.2, .28) -> [.8, 1.28]; incorrect rows: ε = (.1, .5) -> [.9, 1.5].
    # cap:  correct A=+1, ρ = (1.5, .5) -> w = (1.28, .8), grad -w;
    #       incorrect A=-1, ρ = (1.6, .5) -> w = (1.5, .9), grad +w.
    # mask: correct A=+1: ρ=1.5 dropped, ρ=.5 kept with w = ρ (low side does not bind for A>0) -> (0, -.5);
    #       incorrect A=-1: ρ=1.6 kept (w 1.6), ρ=.5 < .9 dropped -> (1.6, 0).
    logp = t([[LN(1.5), LN(0.5)], [LN(1.6), LN(0.5)]])
    old, adv, mask = torch.zeros(2, 2, dtype=F64), t([1.0, -1.0]), torch.ones(2, 2)
    kw = {"rewards": t([1.0, 0.0]), "clip_low_incorrect": 0.1, "clip_high_incorrect": 0.5}
    _, _, g = grad_of("dispo_recon", logp, old, adv, mask, **kw)
    torch.testing.assert_close(g, t([[-1.28, -0.8], [1.5, 0.9]]))
    _, _, g = grad_of("dispo_recon", logp, old, adv, mask, out_of_range="mask", **kw)
    torch.testing.assert_close(g, t([[0.0, -0.5], [1.6, 0.0]]))


def test_r2vpo_recon_by_hand():
    # λ = .1, δ = .01. A=+1, ρ=1.5: ℓ = -1.5 + .1·(.25 - .01) = -1.476; grad = -(1.5 - 2·.1·1.5·.5) = -1.35.
    # A=-1, ρ=.5: ℓ = .5 + .1·(.25 - .01) = .524; grad = -(-.5 - 2·.1·.5·(-.5)) = .45.
    logp = t([[LN(1.5)], [LN(0.5)]])
    loss, metrics, g = grad_of("r2vpo_recon", logp, torch.zeros(2, 1, dtype=F64), t([1.0, -1.0]), torch.ones(2, 1))
    torch.testing.assert_close(loss, t([[-1.476], [0.524]]))
    torch.testing.assert_close(g, t([[-1.35], [0.45]]))
    torch.testing.assert_close(metrics["ratio/sq_dev"], t([[0.25], [0.25]]))
    # dual step λ ← max(0, λ + η(v - δ)): .1 + .1·(.05 - .01) = .104; .001 + .1·(0 - .01) = 0 -> 0.
    dual = algos.controllers.r2vpo_dual_update
    assert math.isclose(dual(0.1, 0.05, var_target=0.01, dual_lr=0.1), 0.104)
    assert dual(0.001, 0.0, var_target=0.01, dual_lr=0.1) == 0.0
    torch.testing.assert_close(dual(t(0.0), t(0.0)), t(0.0))


def test_dcpo_dist_recon_by_hand():
    # λ = .1, ρ^T = π^T_old/π_old = 2. A=+1, ρ=1.5: ℓ_ppo = -1.2 (clipped), ℓ = -1.2 - .1·2·1.5 = -1.5, grad -.3.
    # A=-1, ρ=.9: ℓ_ppo = .9, ℓ = .9 + .1·2·.9 = 1.08; grad = -ρA·(1 + λρ^T) = .9·1.2 = 1.08.
    logp = t([[LN(1.5)], [LN(0.9)]])
    old = torch.zeros(2, 1, dtype=F64)
    loss, metrics, g = grad_of(
        "dcpo_dist_recon", logp, old, t([1.0, -1.0]), torch.ones(2, 1), tempered_old_logp=old + LN(2.0)
    )
    torch.testing.assert_close(loss, t([[-1.5], [1.08]]))
    torch.testing.assert_close(g, t([[-0.3], [1.08]]))
    torch.testing.assert_close(metrics["dcpo/tempered_ratio"], t([[2.0], [2.0]]))


BAD_CALLS = [
    ("nft", {"rewards": None}, "rewards"),
    ("nft", {"group_ids": None}, "group_ids"),
    ("nft", {"normalize": 3}, "normalize"),
    ("nft", {"clamp_negative": 0.0}, "clamp_negative"),
    ("rollout_is", {"rollout_logp": None}, "rollout_logp"),
    ("rollout_is", {"mode": "seq"}, "mode"),
    ("rollout_is", {"cap_min": 3.0}, "cap_min"),
    ("opsm", {"rollout_logp": None}, "rollout_logp"),
    ("dro", {"anchor": "ref", "ref_logp": None}, "ref_logp"),
    ("dro", {"anchor": "sft"}, "anchor"),
    ("dcpo_dist_recon", {"tempered_old_logp": None}, "tempered_old_logp"),
    ("etr_recon", {"rewards": None}, "rewards"),
    ("rec", {"clip_mode": "three_side"}, "clip_mode"),
    ("rec", {"weight": "exp"}, "weight"),
    ("mdpo", {"kl_estimator": "k1"}, "kl_estimator"),
    ("dispo_recon", {"out_of_range": "drop"}, "out_of_range"),
    ("ratio_cap_delta", {"delta": 1.1}, "delta"),
    ("sapo", {"tau_neg": 0.0}, "tau_neg"),
    ("vespo", {"lambda_pos": -1.0}, "lambda_pos"),
    ("bapo", {"bound_low_max": 1.5}, "bound_low_max"),
    ("vespo", {"rollout_logp": torch.zeros(2, 2)}, "rollout_logp"),
]


@pytest.mark.parametrize("name, kw, match", BAD_CALLS)
def test_bad_inputs_raise_value_error_naming_the_argument(name, kw, match):
    # every extra tensor is supplied unless the case overrides it with None or a wrong shape
    logp = -torch.rand(3, 4, dtype=F64)
    extras = {
        "rollout_logp": logp,
        "ref_logp": logp,
        "tempered_old_logp": logp,
        "rewards": t([1.0, 0.0, 1.0]),
        "group_ids": torch.tensor([0, 0, 1]),
    }
    fn = get(name)
    params = inspect.signature(fn).parameters
    extras = {k: v for k, v in extras.items() if k in params}
    with pytest.raises(ValueError, match=match):
        fn(logp, logp, t([1.0, -1.0, 0.5]), torch.ones(3, 4), **{**extras, **kw})
