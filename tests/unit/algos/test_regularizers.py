"""Regularizers: hand-worked values, §13 K2/K3/U7, composition with ppo_clip, masking properties."""

import logging
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos import controllers as ctl
from unipo.algos import registry
from unipo.algos import regularizers as rg
from unipo.algos.ops import entropy_from_logits

F64 = torch.float64
R = {name: algos.get("regularizer", name) for name in algos.names("regularizer")}
token_mean = algos.get("aggregation", "token_mean")
ppo_clip = algos.get("policy_loss", "ppo_clip")
PROPS = settings(max_examples=30, deadline=None, derandomize=True)
E = math.e


def t(values):
    return torch.tensor(values, dtype=F64)


def test_registered_ids_and_defaults():
    assert set(R) == {
        "entropy_bonus",
        "adaptive_entropy",
        "kl_cov",
        "lp_reg",
        "epo_smooth_recon",
        "opmd",
        "asymre",
        "sft_nll",
        "llds_recon",
        "gtpo_entropy_filter",
        "onpolicy_distill",
        "kepo_gated_distill_recon",
        "tpsft_recon",
        "om_chi2_recon",
    }
    params = {name: algos.entry("regularizer", name).params for name in R}
    assert params["entropy_bonus"] == {"coef": 0.0}
    assert params["adaptive_entropy"] == {"coef": 0.0, "target": 0.2, "delta": 0.005, "min": 0.0, "max": 1.0}
    assert params["kl_cov"] == {"coef": 1.0, "select_frac": 2e-4, "clip_low": 0.2, "clip_high": 0.2}
    assert params["lp_reg"] == {"coef": 1.0, "select_frac": 0.01, "min_p": 0.02, "clip_low": 1.0, "clip_high": 9.0}
    assert params["opmd"] == params["asymre"] == {"coef": 0.0}
    assert params["sft_nll"] == {"coef": 1.0}
    assert params["llds_recon"] == {"coef": 0.1, "nonneg_adv_only": False}
    for name in ("epo_smooth_recon", "llds_recon"):
        doc = R[name].__doc__
        assert doc.startswith("Reconstruction of ") and "from its abstract; not the published rule" in doc, name


def test_entropy_bonus_by_hand():
    # term = -0.1·H; the masked NaN gives 0 and no gradient
    entropy = t([[1.0, 2.0], [3.0, math.nan]]).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]])
    z = torch.zeros(2, 2, dtype=F64)
    term, metrics = R["entropy_bonus"](z, z, mask, entropy=entropy, coef=0.1)
    torch.testing.assert_close(term, t([[-0.1, -0.2], [-0.3, 0.0]]))
    (grad,) = torch.autograd.grad(token_mean(term, mask), entropy)
    torch.testing.assert_close(grad, t([[-0.1, -0.1], [-0.1, 0.0]]) / 3)  # -c_H / num_tokens
    assert set(metrics) == {"entropy/token"}


def test_uniform_policy_entropy_is_log_v():
    # §13 K2: a uniform policy over V = 4 tokens has H = ln 4, so the bonus is -c_H·ln 4 per token
    entropy = entropy_from_logits(torch.zeros(1, 3, 4)).to(F64)  # ops computes in float32
    torch.testing.assert_close(entropy, torch.full((1, 3), math.log(4.0), dtype=F64), rtol=0, atol=1e-6)
    z = torch.zeros(1, 3, dtype=F64)
    term, _ = R["entropy_bonus"](z, z, torch.ones(1, 3), entropy=entropy, coef=0.01)
    torch.testing.assert_close(token_mean(term, torch.ones(1, 3)), t(-0.01 * math.log(4.0)))


def test_adaptive_entropy_by_hand():
    entropy = t([[0.1, 0.2]])
    z = torch.zeros(1, 2, dtype=F64)
    m = torch.ones(1, 2)
    # observed H = 0.1 <= H* = 0.2: the bonus acts, term = -0.5·H
    term, metrics = R["adaptive_entropy"](z, z, m, entropy=entropy, coef=0.5, observed_entropy=0.1)
    torch.testing.assert_close(term, t([[-0.05, -0.1]]))
    torch.testing.assert_close(metrics["entropy/coef_applied"], t([[0.5, 0.5]]))
    # observed H = 0.3 > H*: gated off
    term, _ = R["adaptive_entropy"](z, z, m, entropy=entropy, coef=0.5, observed_entropy=t(0.3))
    torch.testing.assert_close(term, torch.zeros(1, 2, dtype=F64))
    # None: measured on the call, mean 0.15 <= 0.2 -> on
    term, _ = R["adaptive_entropy"](z, z, m, entropy=entropy, coef=0.5)
    torch.testing.assert_close(term, t([[-0.05, -0.1]]))


def test_adaptive_entropy_coef_by_hand():
    update = ctl.adaptive_entropy_coef
    assert update(0.0, 0.1) == pytest.approx(0.005)  # H <= H*: + Δ
    assert update(0.0, 0.5) == 0.0  # H > H*: 0 - Δ clamped to c_min
    assert update(1.0, 0.1) == 1.0  # 1 + Δ clamped to c_max
    assert update(0.3, 0.5, target=1.0, delta=0.1) == pytest.approx(0.4)
    torch.testing.assert_close(update(t(0.3), t(0.5), delta=0.1), t(0.2))  # tensors stay on the device


def _cov_case():
    # A = (+1, -1), logp = [[-1, -5], [-2, -4]]: mean logp = -3, Cov = A·(logp + 3) = [[2, -2], [-1, 1]],
    # so the top-1 token by Cov is (0, 0). old_logp: log ρ = 0.5 at (0, 0) and -0.5 at (1, 0), 0 elsewhere.
    logp = t([[-1.0, -5.0], [-2.0, -4.0]])
    old = t([[-1.5, -5.0], [-1.5, -4.0]])
    return logp, old, t([1.0, -1.0]), torch.ones(2, 2)


def test_kl_cov_by_hand_and_composition():
    logp, old, adv, mask = _cov_case()
    x = logp.clone().requires_grad_(True)
    term, metrics = R["kl_cov"](x, old, mask, advantages=adv)  # k = max(1, ⌊2e-4·4⌋) = 1
    r = math.exp(0.5)
    # (0, 0): A = 1, ρ = e^.5 ≈ 1.6487: ppo_clip = -1.2, KL-Cov = -1.6487 + |0.5| -> term = -1.6487 + 1.2 + 0.5
    # (1, 0): A = -1, ρ = e^-.5 ≈ 0.6065 < 0.8: ppo_clip = 0.8, KL-Cov = 0.6065 (unclipped) -> term = 0.6065 - 0.8
    torch.testing.assert_close(term, t([[-r + 1.2 + 0.5, 0.0], [1.0 / r - 0.8, 0.0]]))
    torch.testing.assert_close(metrics["kl_cov/selected"], t([[1.0, 0.0], [0.0, 0.0]]))
    loss, _ = ppo_clip(x, old, adv, mask)
    composed = loss + term
    torch.testing.assert_close(composed, t([[-r + 0.5, -1.0], [1.0 / r, 1.0]]))  # -A·ρ off the selected token
    # gradient: d/dlogp of -Aρ + κ|log ρ| = -Aρ + sign(log ρ) at (0, 0); -Aρ elsewhere (§13 K3, unclipped)
    (grad,) = torch.autograd.grad(composed.sum(), x)
    torch.testing.assert_close(grad, t([[-r + 1.0, -1.0], [1.0 / r, 1.0]]))


def test_lp_reg_by_hand():
    # one row, A = -1 on all 4 tokens: n_neg = 4, q = 0.5 -> k = 2 lowest log π_θ: t2 (-4) and t0 (-3).
    # proxy = [-2, -2, -5, -inf]: t0 has π_θ < π_proxy (-3 < -2) -> regularised; t2 does not (-4 > -5).
    # ρ = 1: the ppo correction is 0 and k3(δ = -3 - (-2) = -1) = e^1 - 1 - 1 = e - 2 ≈ 0.718282.
    logp = t([[-3.0, -1.0, -4.0, -0.5]])
    proxy = t([[-2.0, -2.0, -5.0, -math.inf]])
    mask, adv = torch.ones(1, 4), t([-1.0])
    term, metrics = R["lp_reg"](logp, logp, mask, advantages=adv, proxy_logp=proxy, select_frac=0.5)
    torch.testing.assert_close(term, t([[E - 2.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["lp_reg/selected"], t([[1.0, 0.0, 0.0, 0.0]]))
    # off-policy at t0 (log ρ = -0.5) with a narrow pairing clip_low = 0.2: A < 0 and ρ ≈ 0.6065 < 0.8, so
    # ppo_clip gives 0.8 and the term first undoes it: 0.6065 - 0.8 + (e - 2)
    old = logp.clone()
    old[0, 0] = -2.5
    term, _ = R["lp_reg"](logp, old, mask, advantages=adv, proxy_logp=proxy, select_frac=0.5, clip_low=0.2)
    torch.testing.assert_close(term[0, 0], t(math.exp(-0.5) - 0.8 + E - 2.0))
    # ⌊q·n_neg⌋ = ⌊0.25·4⌋ = 1 < 2: the official code selects nothing
    term, _ = R["lp_reg"](logp, logp, mask, advantages=adv, proxy_logp=proxy, select_frac=0.25)
    torch.testing.assert_close(term, torch.zeros(1, 4, dtype=F64))


def test_lp_reg_proxy_logp_by_hand():
    # π_old = (0.7, 0.29, 0.01), κ = 0.02: 0.01 < 0.02·0.7 = 0.014 is filtered, the rest renormalised by 0.99
    logits = torch.log(t([[[0.7, 0.29, 0.01]] * 3]))
    labels = torch.tensor([[0, 1, 2]])
    out = rg.lp_reg_proxy_logp(logits, labels, min_p=0.02)
    torch.testing.assert_close(out, t([[math.log(0.7 / 0.99), math.log(0.29 / 0.99), -math.inf]]))
    torch.testing.assert_close(rg.lp_reg_proxy_logp(logits, labels, min_p=0.0), torch.log(t([[0.7, 0.29, 0.01]])))


def test_opmd_asymre_sft_by_hand():
    logp, old = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])
    m = torch.ones(1, 2)
    term, _ = R["opmd"](logp, old, m, coef=2.0)
    torch.testing.assert_close(term, t([[0.5, 2.0]]))  # 2·(0.5², (-1)²)
    term, _ = R["asymre"](logp, old, m, coef=0.1)
    torch.testing.assert_close(term, t([[0.1, 0.2]]))  # -0.1·logp
    logp2 = t([[-1.0, -2.0], [-3.0, -4.0]])
    term, metrics = R["sft_nll"](logp2, logp2, torch.ones(2, 2), coef=0.5, demo_mask=torch.tensor([True, False]))
    torch.testing.assert_close(term, t([[0.5, 1.0], [0.0, 0.0]]))  # 0.5·(-logp) on the demonstration row only
    # a batch of demonstrations under token_mean: η·NLL = 0.5·(1 + 2 + 3 + 4)/4 = 1.25
    term, _ = R["sft_nll"](logp2, logp2, torch.ones(2, 2), coef=0.5)
    torch.testing.assert_close(token_mean(term, torch.ones(2, 2)), t(1.25))


def test_llds_recon_by_hand(caplog):
    # drop = old - logp. row 0: [1, -0.5], mean 0.25 > 0 (the response fell) -> gate t0. row 1: [-0.5, 1] -> gate t1.
    # row 2: [-1, 0.5], mean -0.25 -> the response did not fall, nothing gated.
    logp = t([[-2.0, -1.0], [-1.0, -3.0], [-1.0, -1.0]]).requires_grad_(True)
    old = t([[-1.0, -1.5], [-1.5, -2.0], [-2.0, -0.5]])
    mask = torch.ones(3, 2)
    registry._WARNED.discard("llds_recon")
    with caplog.at_level(logging.WARNING, logger="unipo.algos"):
        term, metrics = R["llds_recon"](logp, old, mask, coef=0.1)
    assert sum("'llds_recon' is a reconstruction" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(term, t([[0.1, 0.0], [0.0, 0.1], [0.0, 0.0]]))
    (grad,) = torch.autograd.grad(term.sum(), logp)
    torch.testing.assert_close(grad, -metrics["llds/gated"] * 0.1)  # pushes log π_θ back up on gated tokens
    gated, _ = R["llds_recon"](logp, old, mask, coef=0.1, advantages=t([1.0, -1.0, 1.0]), nonneg_adv_only=True)
    torch.testing.assert_close(gated, t([[0.1, 0.0], [0.0, 0.0], [0.0, 0.0]]))


def test_epo_smooth_recon_by_hand(caplog):
    # λ = 0.1 + (0 - 0.1)·0.5 = 0.05; H̄ = 2, |2 - 1| - 0.5 = 0.5 -> P = 2·0.5² = 0.5.
    # term = -0.05·H + 0.5 = [0.45, 0.35]; token_mean = -λ·H̄ + P = -0.1 + 0.5 = 0.4.
    # d(token_mean)/dH_j = -λ/2 + 2κ·0.5·sign(H̄ - hist)/2 = -0.025 + 1.0 = 0.975
    entropy = t([[1.0, 3.0]]).requires_grad_(True)
    z, m = torch.zeros(1, 2, dtype=F64), torch.ones(1, 2)
    kw = {"coef_start": 0.1, "coef_end": 0.0, "progress": 0.5, "smooth_coef": 2.0, "band": 0.5}
    registry._WARNED.discard("epo_smooth_recon")
    with caplog.at_level(logging.WARNING, logger="unipo.algos"):
        term, metrics = R["epo_smooth_recon"](z, z, m, entropy=entropy, entropy_hist=1.0, **kw)
    assert sum("'epo_smooth_recon' is a reconstruction" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(term, t([[0.45, 0.35]]))
    value = token_mean(term, m)
    torch.testing.assert_close(value, t(0.4))
    torch.testing.assert_close(torch.autograd.grad(value, entropy)[0], t([[0.975, 0.975]]))
    no_hist, _ = R["epo_smooth_recon"](z, z, m, entropy=entropy, **kw)  # first step: no band penalty
    torch.testing.assert_close(no_hist, t([[-0.05, -0.15]]))
    assert ctl.epo_entropy_hist(None, 2.0) == 2.0
    assert ctl.epo_entropy_hist(1.0, 2.0, momentum=0.9) == pytest.approx(1.1)


def _batch(n, t_, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t_ + 1, (n,), generator=gen)
    mask = torch.arange(t_)[None, :] < lengths[:, None]
    logp = -torch.rand(n, t_, generator=gen, dtype=F64) * 4
    old = logp + 0.3 * torch.randn(n, t_, generator=gen, dtype=F64)
    return {
        "mask": mask,
        "logp": logp,
        "old": old,
        "adv": torch.randn(n, generator=gen, dtype=F64),
        "entropy": torch.rand(n, t_, generator=gen, dtype=F64) * 3,
        "proxy": logp + 0.5 * torch.randn(n, t_, generator=gen, dtype=F64),
    }


def _run(name, b, logp, entropy):
    extra = {
        "entropy_bonus": {"entropy": entropy, "coef": 0.1},
        "adaptive_entropy": {"entropy": entropy, "coef": 0.1, "target": 10.0},
        "kl_cov": {"advantages": b["adv"], "select_frac": 0.2},
        "lp_reg": {"advantages": b["adv"], "proxy_logp": b["proxy"], "select_frac": 0.5},
        "epo_smooth_recon": {"entropy": entropy, "entropy_hist": 0.1},
        "opmd": {"coef": 0.5},
        "asymre": {"coef": 0.5},
        "sft_nll": {},
        "llds_recon": {},
        "gtpo_entropy_filter": {"advantages": b["adv"], "entropy": entropy, "max_entropy": 1.5},
        "onpolicy_distill": {"teacher_logp": torch.where(b["mask"], b["proxy"], math.nan)},
        "kepo_gated_distill_recon": {"teacher_logp": b["proxy"], "rewards": (b["adv"] > 0).float()},
        "tpsft_recon": {"ref_logp": b["proxy"], "demo_mask": b["adv"] > 0},
        "om_chi2_recon": {"ref_logp": torch.where(b["mask"], b["proxy"], math.nan)},
    }[name]
    return R[name](logp, b["old"], b["mask"], **extra)


@PROPS
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**16))
def test_masked_tokens_give_zero_value_and_gradient(n, t_, seed):
    b = _batch(n, t_, seed)
    mask = b["mask"]
    # garbage (inf / NaN) on masked positions must reach neither the term nor any gradient
    logp = torch.where(mask, b["logp"], -math.inf).requires_grad_(True)
    entropy = torch.where(mask, b["entropy"], math.nan).requires_grad_(True)
    b["old"] = torch.where(mask, b["old"], math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in R:
            term, metrics = _run(name, b, logp, entropy)
            assert term.shape == mask.shape and bool(torch.isfinite(term).all()), name
            assert bool((term[~mask] == 0).all()), name
            assert all(v.shape == mask.shape and not v.requires_grad for v in metrics.values()), name
            inputs = [x for x in (logp, entropy) if x.grad_fn is None]
            grads = torch.autograd.grad(token_mean(term, mask), inputs, allow_unused=True)
            for g in grads:
                assert g is None or (bool(torch.isfinite(g).all()) and bool((g[~mask] == 0).all())), name


@PROPS
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**16), st.floats(0.01, 2.0))
def test_u7_asymre_shifts_the_advantage_and_opmd_vanishes_at_old(n, t_, seed, tau):
    # §13 U7: ∇(-A·logp + asymre(τ)) = ∇(-(A + τ)·logp); opmd has zero gradient at θ = θ_old
    b = _batch(n, t_, seed)
    mask, adv = b["mask"], b["adv"][:, None]
    x = b["logp"].clone().requires_grad_(True)
    term, _ = R["asymre"](x, b["old"], mask, coef=tau)
    (g,) = torch.autograd.grad(token_mean(-adv * x + term, mask), x)
    (g_ref,) = torch.autograd.grad(token_mean(-(adv + tau) * x, mask), x)
    torch.testing.assert_close(g, g_ref)
    y = b["logp"].clone().requires_grad_(True)
    term, _ = R["opmd"](y, b["logp"].clone(), mask, coef=tau)
    (g,) = torch.autograd.grad(token_mean(term, mask), y)
    torch.testing.assert_close(g, torch.zeros_like(g))


@PROPS
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**16), st.floats(0.05, 0.5))
def test_kl_cov_plus_ppo_clip_matches_a_reference_loop(n, t_, seed, frac):
    # verl's compute_policy_loss_kl_cov written as a loop: -A·ρ everywhere (unclipped), + κ|log ρ| on the top-k by
    # Cov over the valid tokens; §13 K3: unselected tokens carry exactly -A·ρ. Token-level advantages keep Cov free
    # of ties (a [N] advantage with N = 1 makes every Cov 0, and topk breaks ties arbitrarily).
    b = _batch(n, t_, seed)
    mask, old = b["mask"], b["old"]
    adv = torch.randn(n, t_, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    x = b["logp"].clone().requires_grad_(True)
    term, metrics = R["kl_cov"](x, old, mask, advantages=adv, select_frac=frac, coef=0.7)
    composed = ppo_clip(x, old, adv, mask)[0] + term
    y = b["logp"].clone().requires_grad_(True)
    ratio = torch.exp(y - old)
    a = adv
    valid_idx = mask.nonzero().tolist()
    lp = b["logp"][mask]
    cov = (a[mask] - a[mask].mean()) * (lp - lp.mean())
    top = set(torch.topk(cov, max(1, int(len(valid_idx) * frac))).indices.tolist())
    ref = [[None] * t_ for _ in range(n)]
    for j, (i, k) in enumerate(valid_idx):
        ref[i][k] = -a[i, k] * ratio[i, k] + (0.7 * (y[i, k] - old[i, k]).abs() if j in top else 0.0)
    for j, (i, k) in enumerate(valid_idx):
        assert bool(metrics["kl_cov/selected"][i, k] == (1.0 if j in top else 0.0))
        torch.testing.assert_close(composed[i, k], ref[i][k])
    got = torch.autograd.grad(token_mean(composed, mask), x)[0]
    want = torch.autograd.grad(sum(ref[i][k] for i, k in valid_idx) / len(valid_idx), y)[0]
    torch.testing.assert_close(got, want)


@PROPS
@given(st.integers(1, 5), st.integers(1, 6), st.integers(2, 6), st.integers(0, 2**16))
def test_k3_lp_reg_and_llds_add_nothing_when_nothing_is_displaced(n, t_, v, seed):
    # §13 K3: lp_reg with κ = 0 (proxy = π_old) and π_θ = π_old adds 0; llds_recon adds 0 when log π_θ ≥ log π_old
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t_, v, generator=gen, dtype=F64)
    labels = torch.randint(0, v, (n, t_), generator=gen)
    old = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    proxy = rg.lp_reg_proxy_logp(logits, labels, min_p=0.0)
    torch.testing.assert_close(proxy, old)
    mask = torch.ones(n, t_, dtype=torch.bool)
    adv = -torch.rand(n, generator=gen, dtype=F64)  # all negative, so lp_reg considers every token
    term, _ = R["lp_reg"](old.clone(), old, mask, advantages=adv, proxy_logp=proxy, select_frac=1.0)
    torch.testing.assert_close(term, torch.zeros_like(term))
    higher = old + torch.rand(n, t_, generator=gen, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        term, _ = R["llds_recon"](higher, old, mask)
    torch.testing.assert_close(term, torch.zeros_like(term))


@PROPS
@given(st.floats(0.0, 1.0), st.floats(0.0, 2.0), st.floats(1e-3, 0.2), st.floats(0.0, 1.0))
def test_adaptive_entropy_coef_stays_in_bounds(coef, entropy, delta, target):
    new = ctl.adaptive_entropy_coef(coef, entropy, target=target, delta=delta, min=0.0, max=1.0)
    assert 0.0 <= new <= 1.0
    assert new == pytest.approx(min(coef + delta, 1.0) if entropy <= target else max(coef - delta, 0.0))


@PROPS
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**16), st.floats(0.2, 1.0))
def test_lp_reg_plus_ppo_clip_matches_the_official_loop(n, t_, seed, frac):
    # compute_policy_loss_lp_reg as a loop: clipped loss with [1 - 1, 1 + 9]; among the valid A < 0 tokens the
    # k = int(n_neg·q) lowest log π_θ (only when k > 1) with log π_θ < log π_proxy get -A·ρ + β·k3(logp, proxy)
    b = _batch(n, t_, seed)
    mask, old, proxy = b["mask"], b["old"], b["proxy"]
    adv = torch.randn(n, t_, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    x = b["logp"].clone().requires_grad_(True)
    term, _ = R["lp_reg"](x, old, mask, advantages=adv, proxy_logp=proxy, select_frac=frac, coef=0.5)
    composed = ppo_clip(x, old, adv, mask, clip_low=1.0, clip_high=9.0)[0] + term
    y = b["logp"].clone().requires_grad_(True)
    ratio = torch.exp(y - old)
    ref = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.0, 10.0))
    neg = [(i, k) for i, k in mask.nonzero().tolist() if adv[i, k] < 0]
    n_pick = max(1, int(len(neg) * frac))
    if neg and n_pick > 1:
        picked = sorted(neg, key=lambda ik: float(b["logp"][ik]))[:n_pick]
        for i, k in picked:
            if b["logp"][i, k] < proxy[i, k]:
                kl = torch.exp(proxy[i, k] - y[i, k]) - (proxy[i, k] - y[i, k]) - 1
                ref = ref.index_put((torch.tensor([i]), torch.tensor([k])), -adv[i, k] * ratio[i, k] + 0.5 * kl)
    torch.testing.assert_close(composed[mask], ref[mask])
    got = torch.autograd.grad(token_mean(composed, mask), x)[0]
    want = torch.autograd.grad(token_mean(ref, mask), y)[0]
    torch.testing.assert_close(got, want)


def test_gtpo_entropy_filter_shifts_or_zeroes_each_completions_advantage():
    # H̄ = [0.5, 1.0, 0.2] (second row: 1.0 > 0.7 is filtered); A = [1, -1, -0.5]
    # A' = [1 - 0.1·0.5, 0, -0.5 - 0.1·0.2] = [0.95, 0, -0.52]; term = A - A' = [0.05, -1, 0.02] on valid tokens
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.3], [-1.5, -0.7]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    entropy = torch.tensor([[0.4, 0.6], [1.0, 1.0], [0.2, 9.0]])  # the masked 9.0 is left out of H̄
    adv = torch.tensor([1.0, -1.0, -0.5])
    fn = algos.get("regularizer", "gtpo_entropy_filter")
    term, metrics = fn(logp, logp.detach(), mask, advantages=adv, entropy=entropy)
    torch.testing.assert_close(term.detach(), torch.tensor([[0.05, 0.05], [-1.0, -1.0], [0.02, 0.0]]))
    assert metrics["gtpo/filtered"][:, 0].tolist() == [0.0, 1.0, 0.0]
    # with the on-policy surrogate -A·ρ, the summed gradient is -A'·∇logp on every valid token
    surrogate = -adv[:, None] * torch.exp(logp - logp.detach())
    (((surrogate + term) * mask).sum()).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.95, -0.95], [0.0, 0.0], [0.52, 0.0]]))


def test_onpolicy_distill_value_and_gradient_by_hand():
    distill = algos.get("regularizer", "onpolicy_distill")
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    teacher = torch.tensor([[-1.5, -1.0], [-0.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    term, metrics = distill(logp, logp.detach(), mask, teacher_logp=teacher, coef=2.0)
    # 2 * 0.5 * (logp - teacher)^2 on valid tokens: (0.5)^2, (-1)^2, 0, masked
    torch.testing.assert_close(term, torch.tensor([[0.25, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(metrics["distill/kl"], torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    term.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[1.0, -2.0], [0.0, 0.0]]))  # 2 * (logp - teacher) * mask


def test_onpolicy_distill_expected_gradient_is_the_reverse_kl_gradient():
    # theory: E_{y ~ pi}[grad term(y)] = grad KL(pi || pi_T) for a categorical pi = softmax(z), exactly (enumerated)
    distill = algos.get("regularizer", "onpolicy_distill")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    logp = torch.log_softmax(z, -1)
    terms, _ = distill(logp[None, :], logp[None, :].detach(), torch.ones(1, 5, dtype=torch.float64),
                       teacher_logp=teacher[None, :])  # fmt: skip
    expected_surrogate = (logp.detach().exp() * terms[0]).sum()  # the sampling weights held fixed, as in sampling
    (grad_estimate,) = torch.autograd.grad(expected_surrogate, z, retain_graph=True)
    kl = (logp.exp() * (logp - teacher)).sum()
    (grad_kl,) = torch.autograd.grad(kl, z)
    torch.testing.assert_close(grad_estimate, grad_kl)


def test_kepo_distills_only_the_samples_that_reach_the_reward_gate():
    kepo = algos.get("regularizer", "kepo_gated_distill_recon")
    distill = algos.get("regularizer", "onpolicy_distill")
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0], [-0.2, -0.4]])
    teacher = torch.tensor([[-1.5, -1.0], [-0.5, -9.0], [-1.2, -0.4]])
    mask = torch.ones(3, 2)
    rewards = torch.tensor([1.0, 0.0, 2.0])  # theta = 1: samples 0 and 2
    term, metrics = kepo(logp, logp, mask, teacher_logp=teacher, rewards=rewards, coef=2.0)
    full, _ = distill(logp, logp, mask, teacher_logp=teacher, coef=2.0)
    torch.testing.assert_close(term, full * torch.tensor([[1.0], [0.0], [1.0]]))
    torch.testing.assert_close(term, torch.tensor([[0.25, 1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert metrics["distill/gated_frac"].tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]


def test_tpsft_learns_the_target_tokens_inside_the_trust_region_only():
    # ρ = π_θ/π_ref = (1.25, 1.0): the first token is past 1 + ε = 1.2 (value -1.2, no gradient), the second is
    # learned with gradient -ρ = -1; the row that is not a demonstration gets nothing
    logp = t([[math.log(0.5), math.log(0.2)], [math.log(0.5), math.log(0.2)]]).requires_grad_(True)
    ref = t([[math.log(0.4), math.log(0.2)], [math.log(0.4), math.log(0.2)]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    term, metrics = R["tpsft_recon"](logp, logp.detach(), mask, ref_logp=ref, demo_mask=torch.tensor([True, False]))
    torch.testing.assert_close(term.detach(), t([[-1.2, -1.0], [0.0, 0.0]]))
    (g,) = torch.autograd.grad(term.sum(), logp)
    torch.testing.assert_close(g, t([[0.0, -1.0], [0.0, 0.0]]))
    assert metrics["tpsft/clipped"].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_om_chi2_sums_to_the_sequence_penalty_and_its_gradient():
    # row 0: log r = log 0.5 - log 0.25 = log 2 -> P = λ(2 - 1) = 0.1, spread over its 2 tokens, gradient λ·r = 0.2 per
    # token; row 1: r = 20 is clipped at c = 10 (value λ·9 over 1 token, no gradient)
    logp = t([[math.log(0.5), math.log(0.5)], [math.log(0.5), 0.0]]).requires_grad_(True)
    ref = t([[math.log(0.25), math.log(0.5)], [math.log(0.5 / 20), 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    term, metrics = R["om_chi2_recon"](logp, logp.detach(), mask, ref_logp=ref, coef=0.1, max_ratio=10.0)
    torch.testing.assert_close(term.detach(), t([[0.05, 0.05], [0.9, 0.0]]))
    (g,) = torch.autograd.grad(term.sum(), logp)
    torch.testing.assert_close(g, t([[0.2, 0.2], [0.0, 0.0]]))
    # the per-token gradient is the sequence penalty's: ∂/∂logp_t of λ·(exp(Σ_t logp_t − ref_t) − 1)
    x = logp.detach()[0].clone().requires_grad_(True)
    (g_seq,) = torch.autograd.grad(0.1 * (torch.exp((x - ref[0]).sum()) - 1), x)
    torch.testing.assert_close(g[0], g_seq)
    assert metrics["om_chi2/ratio"][1, 0].item() == pytest.approx(10.0)
