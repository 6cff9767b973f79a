"""Properties of every registered policy loss: ALGORITHMS.md §13 U1–U9 and D1, masking, metrics, errors, R2."""

import inspect
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos import registry
from unipo.algos.policy_losses import bapo_candidates

F64 = torch.float64
PROPS = settings(max_examples=30, deadline=None, derandomize=True)
shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
EXTRAS = ("rollout_logp", "ref_logp", "tempered_old_logp", "rewards", "group_ids")


def make_batch(n, t_, seed, spread=1.0, token_adv=True):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t_, generator=gen, dtype=F64) * 3 - 0.05
    logp = old + spread * torch.randn(n, t_, generator=gen, dtype=F64)
    adv = torch.randn(*((n, t_) if token_adv else (n,)), generator=gen, dtype=F64)
    mask = torch.rand(n, t_, generator=gen) < 0.7
    mask[:, 0] = True  # every row has a token, so sequence quantities are defined
    b = SimpleNamespace(logp=logp, old=old, adv=adv, mask=mask)
    b.A = adv if token_adv else adv[:, None].expand(n, t_)
    b.lr, b.rho = logp - old, torch.exp(logp - old)
    b.rewards = (torch.rand(n, generator=gen) < 0.5).to(F64)
    b.group_ids = torch.randint(0, 3, (n,), generator=gen)
    b.rollout_logp = old + 0.3 * torch.randn(n, t_, generator=gen, dtype=F64)
    b.ref_logp = old + 0.5 * torch.randn(n, t_, generator=gen, dtype=F64)
    b.tempered_old_logp = old + 0.5 * torch.randn(n, t_, generator=gen, dtype=F64)
    return b


def call(name, b, logp, old=None, agg="token_sum", **kw):
    """Run a registered loss the way the trainer does: extra tensors only where the signature asks for them."""
    fn = algos.get("policy_loss", name)
    params = inspect.signature(fn).parameters
    extras = {k: getattr(b, k) for k in EXTRAS if k in params and k not in kw}
    loss, metrics = fn(logp, b.old if old is None else old, b.adv, b.mask, **extras, **kw)
    return loss, metrics, algos.get("aggregation", agg)(loss, b.mask)


def grad(name, b, old=None, agg="token_sum", **kw):
    x = b.logp.clone().requires_grad_(True)
    loss, metrics, value = call(name, b, x, old, agg, **kw)
    (g,) = torch.autograd.grad(value, x)
    return loss.detach(), metrics, g


def mmean(x, mask):
    """(N, T) -> (N, 1) masked row mean, written out independently of unipo.algos.ops."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)


def kept(rho, a, lo, hi):
    return ~(((a > 0) & (rho > hi)) | ((a < 0) & (rho < lo)))


def ppo_coef(b, lo=0.8, hi=1.2):
    return -b.rho * kept(b.rho, b.A, lo, hi) * b.A


def group_stats(b):
    """(r̂ clamped group accuracy, population reward variance) per row, by a plain loop over groups."""
    acc, var = torch.zeros_like(b.rewards), torch.zeros_like(b.rewards)
    for g in b.group_ids.unique():
        idx = b.group_ids == g
        r = b.rewards[idx]
        acc[idx] = (r > 0.5).to(F64).mean()
        var[idx] = ((r - r.mean()) ** 2).mean()
    return acc.clamp(0.02, 0.98)[:, None], var[:, None]


def sapo_coef(b):
    tau = torch.where(b.A > 0, 1.0, 1.05).to(F64)
    s = torch.sigmoid(tau * (b.rho - 1))
    return -b.rho * 4 * s * (1 - s) * b.A


def seq_coef(b):
    s = torch.exp(mmean(b.lr, b.mask))
    return -s * kept(s, b.A, 0.8, 1.2) * b.A


def gmpo_coef(b, eps=0.4):
    sign = torch.sign(b.A)
    lt = sign * torch.minimum(sign * b.lr, sign * b.lr.clamp(-eps, eps))
    clipped = ((b.A > 0) & (b.lr > eps)) | ((b.A < 0) & (b.lr < -eps))
    return -mmean(b.A, b.mask) * torch.exp(mmean(lt, b.mask)) * ~clipped


def vespo_coef(b):
    log_roll = (b.old - b.rollout_logp).clamp(math.log(1e-8), 20)
    log_w = ((b.lr + log_roll) * b.mask).sum(-1, keepdim=True).clamp(math.log(1e-8), 20)
    k = torch.where(b.A >= 0, 2.0, 3.0).to(F64)
    lam = torch.where(b.A >= 0, 3.0, 2.0).to(F64)
    return -torch.exp(lam + k * log_w - lam * torch.exp(log_w)) * b.A


def nft_coef(b):
    rate, _ = group_stats(b)
    correct = (b.rewards > 0.5)[:, None]
    big_r = torch.exp(b.lr)
    proxy = (1 - rate * big_r) / (1 - rate)
    # normalize=1: z = 1 - r̂. Correct: -z; wrong: z·r̂·R/((1 - r̂)·max(proxy, c₋ = 1)) = r̂·R/max(proxy, 1).
    return torch.where(correct, -(1 - rate), rate * big_r / proxy.clamp(min=1.0))


def rec_coef(b):
    keep = ~(((b.A >= 0) & (b.rho > 1.2)) | ((b.A <= 0) & (b.rho < 0.8)))
    return -b.rho * keep * b.A


def dppo_coef(b):
    diff = torch.exp(b.logp) - torch.exp(b.old)
    valid = torch.where(b.A > 0, diff <= 0.15, diff >= -0.15)
    return -b.rho.clamp(max=1e4) * valid * b.A


def bapo_reference(rho, a, mask, target=0.4):
    """Algorithm 1 of BAPO as a plain loop (floats accumulate, unlike the implementation's integer steps)."""

    def share(lo, hi):
        term = torch.minimum(rho * a, rho.clamp(lo, hi) * a).abs() * mask
        total = term.sum()
        return float((term * (a > 0)).sum() / total) if total > 0 else 0.0

    lo, hi = 0.6, 1.2
    p = share(lo, hi)
    while p < target and lo + 0.02 <= 0.9 + 1e-9:
        if hi + 0.05 <= 3.0 + 1e-9:
            hi += 0.05
        else:
            lo += 0.02
        p = share(lo, hi)
    return lo, hi, p


def bapo_coef(b):
    lo, hi, _ = bapo_reference(b.rho, b.A, b.mask)
    return -b.rho * kept(b.rho, b.A, lo, hi) * b.A


def opsm_coef(b):
    kl = mmean(b.rollout_logp - b.logp, b.mask)
    return ((b.A >= 0) | (kl <= 0.05)) * ppo_coef(b)


def flash_coef(b, delta=3e-3):
    p, q = torch.exp(b.rollout_logp).clamp(1e-6, 1 - 1e-6), torch.exp(b.logp).clamp(1e-6, 1 - 1e-6)
    kl = mmean(p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q)), b.mask).clamp(min=0)
    return -(kl <= delta).to(b.A.dtype) * torch.exp(b.logp - b.rollout_logp) * b.A


def etr_coef(b):
    _, var = group_stats(b)
    scale = (1 + 0.5 * b.A.abs().clamp(max=2)) * (1 + 0.5 * (4 * var).clamp(max=1))
    return -b.rho * kept(b.rho, b.A, 1 - 0.2 * scale, 1 + 0.2 * scale) * b.A


def dispo_coef(b):
    correct = (b.rewards > 0.5)[:, None]
    lo = torch.where(correct, 0.8, 0.9).to(F64)
    hi = torch.where(correct, 1.28, 1.5).to(F64)
    return -torch.minimum(torch.maximum(b.rho, lo), hi) * b.A


# Every registered policy loss: (hyperparameters, expected d token_sum(ℓ)/d logp = -W·A per token, §0.4).
SPECS = {
    "reinforce": ({}, lambda b: -b.A),
    "ppo_clip": ({}, ppo_coef),
    "clip_higher": ({}, lambda b: ppo_coef(b, 0.8, 1.28)),
    "dual_clip": ({}, lambda b: ppo_coef(b) * ~((b.A < 0) & (b.rho > 3))),
    "ratio_cap_delta": ({}, lambda b: ppo_coef(b) * ~((b.A < 0) & (b.rho > 4))),
    "cispo": ({}, lambda b: -b.rho.clamp(max=5) * b.A),
    "sapo": ({}, sapo_coef),
    "gspo": ({"clip_low": 0.2, "clip_high": 0.2}, seq_coef),
    "gspo_token": ({"clip_low": 0.2, "clip_high": 0.2}, seq_coef),
    "luspo": ({"clip_low": 0.2, "clip_high": 0.2}, seq_coef),
    "gmpo": ({}, gmpo_coef),
    "vespo": ({}, vespo_coef),
    "nft": ({}, nft_coef),
    "rec": ({"clip_mode": "one_side", "weight": "ratio"}, rec_coef),
    "mdpo": ({}, lambda b: -(b.rho * b.A - b.rho * b.lr)),
    "dro": ({}, lambda b: -(b.A - 0.1 * b.lr)),
    "dppo_tv": ({}, dppo_coef),
    "bapo": ({}, bapo_coef),
    "rollout_is": ({}, lambda b: torch.exp(b.old - b.rollout_logp).clamp(max=2) * ppo_coef(b)),
    "opsm": ({}, opsm_coef),
    "flash_reinforce": ({}, flash_coef),
    "etr_recon": ({}, etr_coef),
    "dispo_recon": ({"clip_low_incorrect": 0.1, "clip_high_incorrect": 0.5}, dispo_coef),
    "r2vpo_recon": ({}, lambda b: -(b.rho * b.A - 2 * 0.1 * b.rho * (b.rho - 1))),
    "dcpo_dist_recon": (
        {},
        lambda b: -b.rho * (kept(b.rho, b.A, 0.8, 1.2) + 0.1 * torch.exp(b.tempered_old_logp - b.old)) * b.A,
    ),
}


def refuel_coef(b, eta=1.0):
    """REFUEL under token_sum: pair (i, j) contributes (n_i + n_j)·ℓ, ℓ = ((s_i − s_j) − η·(r_i − r_j))², s the summed
    log-ratio and n the token count of each branch; ∂/∂logp_{i,t} = 2·(n_i + n_j)·((s_i − s_j) − η·(r_i − r_j))."""

    def other(x):  # the partner of each row
        return x.view(-1, 2).flip(-1).reshape(-1)

    s, n = (b.lr * b.mask).sum(-1), b.mask.sum(-1).to(F64)
    return (2 * (n + other(n)) * ((s - other(s)) - eta * (b.rewards - other(b.rewards))))[:, None]


PAIRED = {"refuel": ({}, refuel_coef)}
"""Losses over pairs of samples: checked on batches whose groups are pairs (rows 2k and 2k + 1)."""


def test_every_registered_policy_loss_has_a_w_spec():
    # A new policy loss must declare its effective weight here (§0.4 library contract).
    assert set(algos.names("policy_loss")) == set(SPECS) | set(PAIRED) and not set(SPECS) & set(PAIRED)


@PROPS
@given(shapes)
def test_pair_losses_gradient_padding_and_metrics(shape):
    n, t_, seed = shape
    b = make_batch(2 * n, t_, seed)
    b.group_ids = torch.arange(2 * n) // 2
    pad = ~b.mask
    for name, (kw, coef) in PAIRED.items():
        loss, metrics, g = grad(name, b, **kw)
        torch.testing.assert_close(g, coef(b) * b.mask, msg=name)
        assert {"clip/frac", "clip/frac_low", "clip/frac_high", "ratio/mean"} <= set(metrics), name
        assert all(v.shape == (2 * n, t_) and not v.requires_grad for v in metrics.values()), name
        c = SimpleNamespace(**vars(b))
        c.logp, c.old = b.logp.masked_fill(pad, -math.inf), b.old.masked_fill(pad, -math.inf)
        loss_inf, _, g_inf = grad(name, c, **kw)  # -inf at padded positions is inert
        torch.testing.assert_close(loss_inf, loss, msg=name)
        torch.testing.assert_close(g_inf, g, msg=name)


@PROPS
@given(shapes, st.booleans())
def test_u1_gradient_is_minus_w_times_a(shape, token_adv):
    b = make_batch(*shape, token_adv=token_adv)
    for name, (kw, coef) in SPECS.items():
        _, _, g = grad(name, b, **kw)
        torch.testing.assert_close(g, coef(b) * b.mask, msg=name)


AT_RHO_1 = [
    ("ppo_clip", {}),
    ("clip_higher", {}),
    ("dual_clip", {}),
    ("ratio_cap_delta", {}),
    ("cispo", {}),
    ("cispo", {"cap_mode": "relative"}),
    ("sapo", {}),
    ("rec", {"weight": "ratio"}),
    ("rec", {"clip_mode": "two_side", "weight": "ratio"}),
    ("vespo", {}),
    ("bapo", {}),
    ("dppo_tv", {}),
    ("mdpo", {}),
    ("dro", {}),
    ("rollout_is", {}),
    ("opsm", {}),
    ("flash_reinforce", {}),
    ("etr_recon", {}),
    ("dispo_recon", {}),
    ("r2vpo_recon", {}),
]
SEQUENCE_AT_RHO_1 = [("gspo", "seq_mean_token_mean"), ("gmpo", "seq_mean_token_mean"), ("luspo", "seq_mean_token_sum")]


@PROPS
@given(shapes, st.booleans())
def test_u1_at_ratio_one_losses_give_the_reinforce_gradient(shape, token_adv):
    # logp_old = sg(logp_θ) (and π_roll = π_old), so ρ ≡ 1: W = 1 for the token losses; gspo/gmpo give reinforce
    # under seq_mean_token_mean (per-sequence 1/|y_i|), luspo under seq_mean_token_sum. gmpo uses the sequence's
    # mean advantage Ā_i (verl geo_mean): with [N, T] advantages it matches reinforce with Ā_i broadcast.
    b = make_batch(*shape, token_adv=token_adv)
    b.rollout_logp = b.logp
    for agg in ("token_sum", "seq_mean_token_mean", "seq_mean_token_sum"):
        _, _, ref = grad("reinforce", b, old=b.logp, agg=agg)
        seq_adv = SimpleNamespace(**{**vars(b), "adv": mmean(b.A, b.mask).expand_as(b.A)})
        _, _, gmpo_ref = grad("reinforce", seq_adv, old=b.logp, agg=agg)
        for name, kw in AT_RHO_1 if agg == "token_sum" else []:
            _, _, g = grad(name, b, old=b.logp, **kw)
            torch.testing.assert_close(g, ref, msg=f"{name} {kw}")
        for name, seq_agg in SEQUENCE_AT_RHO_1:
            if seq_agg == agg:
                _, _, g = grad(name, b, old=b.logp, agg=agg)
                torch.testing.assert_close(g, gmpo_ref if name == "gmpo" else ref, msg=name)


@PROPS
@given(shapes)
def test_u2_clipped_gradient_is_zero_exactly_on_clipped_tokens(shape):
    b = make_batch(*shape, spread=1.5)
    valid = b.mask & (b.A != 0)
    for name, hi in (("ppo_clip", 1.2), ("clip_higher", 1.28), ("dual_clip", 1.2)):
        loss, metrics, g = grad(name, b)
        clipped = ~kept(b.rho, b.A, 0.8, hi)
        if name == "dual_clip":
            dual = (b.A < 0) & (b.rho > 3)
            clipped = clipped | dual
            torch.testing.assert_close(loss[dual & b.mask], (-3 * b.A)[dual & b.mask])
        assert torch.equal((g == 0)[valid], clipped[valid]), name
        assert torch.equal(metrics["clip/frac"].bool()[valid], clipped[valid]), name


@PROPS
@given(shapes)
def test_u3_cispo_keeps_a_capped_gradient_where_ppo_has_none(shape):
    b = make_batch(*shape, spread=1.5)
    _, _, g_ppo = grad("ppo_clip", b)
    _, _, g_rel = grad("cispo", b, cap_mode="relative")
    cut = (g_ppo == 0) & b.mask & (b.A != 0)
    w = -g_rel[cut] / b.A[cut]
    assert bool(((w - 0.8).abs() < 1e-12).logical_or((w - 1.2).abs() < 1e-12).all())
    _, _, g_abs = grad("cispo", b, cap=1.5)
    over = (b.rho > 1.5) & b.mask
    torch.testing.assert_close(g_abs[over], (-1.5 * b.A)[over])


@PROPS
@given(shapes)
def test_u4_sapo_weight_is_at_most_rho_and_tends_to_the_unclipped_gradient(shape):
    b = make_batch(*shape)
    _, _, g = grad("sapo", b)
    assert bool((g.abs() <= (b.rho * b.A.abs() + 1e-12) * b.mask).all())
    _, metrics, g_small = grad("sapo", b, tau_pos=1e-4, tau_neg=1e-4)
    torch.testing.assert_close(g_small, -b.rho * b.A * b.mask, rtol=1e-3, atol=1e-6)
    assert bool((metrics["sapo/gate"] <= 1).all())


@PROPS
@given(shapes)
def test_u5_gmpo_and_gspo_agree_without_clipping(shape):
    # ε → ∞: both are the unclipped sequence surrogate -A_i·exp(mean_t log ρ) under seq_mean_token_mean.
    b = make_batch(*shape, spread=0.5, token_adv=False)
    wide = {"clip_low": 1e6, "clip_high": 1e6}
    values, grads = [], []
    for name in ("gmpo", "gspo"):
        x = b.logp.clone().requires_grad_(True)
        _, _, value = call(name, b, x, agg="seq_mean_token_mean", **wide)
        values.append(value)
        grads.append(torch.autograd.grad(value, x)[0])
    x = b.logp.clone().requires_grad_(True)
    direct = (-b.adv * torch.exp(mmean(x - b.old, b.mask)[:, 0])).mean()
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], direct)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], torch.autograd.grad(direct, x)[0] * b.mask)


@PROPS
@given(shapes)
def test_u6_nft_on_policy_is_reinforce_with_mean_centred_advantages(shape):
    # R = 1, 0/1 rewards, normalize=1, neg_weight=1: A₊ = 1 - r̂, A₋ = -r̂ under token_sum (r̂ clamped to [.02, .98]).
    b = make_batch(*shape)
    _, _, g = grad("nft", b, old=b.logp)
    rate, _ = group_stats(b)
    a = torch.where((b.rewards > 0.5)[:, None], 1 - rate, -rate).expand_as(b.logp)
    torch.testing.assert_close(g, -a * b.mask)


@PROPS
@given(shapes, st.booleans())
def test_u7_rec_without_mask_or_weight_is_reinforce(shape, token_adv):
    b = make_batch(*shape, token_adv=token_adv)
    loss, _, g = grad("rec", b)
    loss_ref, _, g_ref = grad("reinforce", b)
    torch.testing.assert_close(loss * b.mask, loss_ref * b.mask)
    torch.testing.assert_close(g, g_ref)


def test_u8_bapo_candidate_path():
    pairs = bapo_candidates(0.6, 0.9, 1.2, 3.0, 0.02, 0.05)
    # 36 steps of δ₁ = .05 take c_high from 1.2 to 3.0, then 15 steps of δ₂ = .02 take c_low from .6 to .9.
    assert len(pairs) == 1 + 36 + 15
    assert pairs[0] == (0.6, 1.2)
    assert math.isclose(pairs[36][1], 3.0) and pairs[36][0] == 0.6
    assert math.isclose(pairs[-1][0], 0.9) and math.isclose(pairs[-1][1], 3.0)


@PROPS
@given(shapes, st.booleans())
def test_u8_bapo_bounds_follow_algorithm_1(shape, all_positive):
    b = make_batch(*shape, spread=1.5)
    if all_positive:
        b.adv = b.A = b.adv.abs() + 0.1
    _, metrics, _ = grad("bapo", b)
    lo, hi = metrics["bapo/clip_low"].flatten()[0].item(), metrics["bapo/clip_high"].flatten()[0].item()
    share = metrics["bapo/pos_share"].flatten()[0].item()
    ref_lo, ref_hi, ref_share = bapo_reference(b.rho, b.A, b.mask)
    assert math.isclose(lo, ref_lo, abs_tol=1e-9) and math.isclose(hi, ref_hi, abs_tol=1e-9)
    assert math.isclose(share, ref_share, abs_tol=1e-9)
    assert 0.6 - 1e-9 <= lo <= 0.9 + 1e-9 and 1.2 - 1e-9 <= hi <= 3.0 + 1e-9
    assert share >= 0.4 or (math.isclose(lo, 0.9) and math.isclose(hi, 3.0))
    if all_positive:
        assert (lo, hi) == (0.6, 1.2)


@PROPS
@given(shapes)
def test_u9_rollout_is_and_opsm_are_identities_when_the_engine_matches(shape):
    b = make_batch(*shape)
    loss_ppo, _, _ = grad("ppo_clip", b)
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "geo_rs"):
        loss, metrics, _ = grad("rollout_is", b, rollout_logp=b.old, mode=mode, cap_min=0.5)
        assert bool((metrics["rollout_is/weight"][b.mask] == 1).all()), mode
        torch.testing.assert_close(loss * b.mask, loss_ppo * b.mask, msg=mode)
    loss, metrics, _ = grad("opsm", b, rollout_logp=b.logp)
    assert not metrics["opsm/dropped"].any()
    torch.testing.assert_close(loss, loss_ppo)


@PROPS
@given(shapes, st.floats(0.5, 4.0))
def test_u9_weight_bounds_and_masks(shape, cap):
    b = make_batch(*shape)
    _, metrics, _ = grad("rollout_is", b, cap=cap)
    assert bool((metrics["rollout_is/weight"] <= cap).all())
    _, metrics, _ = grad("opsm", b, threshold=0.0)
    nonneg = (b.A >= 0) & b.mask
    assert not metrics["opsm/dropped"].bool()[nonneg].any()


@pytest.mark.parametrize("log_c, kept_expected", [(0.0005, True), (0.01, False), (-0.01, False)])
def test_u9_geo_rs_is_length_invariant(log_c, kept_expected):
    # a constant per-token mismatch c gives a geometric mean of c whatever the length; the product c^|y| is not.
    old = torch.zeros(3, 6, dtype=F64)
    mask = torch.tensor([[1] * 1 + [0] * 5, [1] * 3 + [0] * 3, [1] * 6])
    b = SimpleNamespace(logp=old.clone(), old=old, adv=torch.ones(3, dtype=F64), mask=mask)
    w = algos.policy_losses.rollout_is_weights(old, old - log_c, mask, mode="geo_rs")
    assert bool((w[mask.bool()] == float(kept_expected)).all())
    _, metrics, _ = grad("rollout_is", b, rollout_logp=old - 0.3, mode="sequence_mask", cap=2.0)
    # e^.3 = 1.35 ≤ 2 for one token, e^.9 = 2.46 > 2 for three: the sequence product depends on length
    assert metrics["rollout_is/weight"][0, 0] > 0 and metrics["rollout_is/weight"][1, 0] == 0


@PROPS
@given(shapes)
def test_d1_upge_and_rec_identities(shape):
    b = make_batch(*shape)
    # Â = 1 and π_den = sg(π_θ): reinforce is the NLL gradient.
    b.adv = torch.ones_like(b.adv)
    x = b.logp.clone().requires_grad_(True)
    loss, _, value = call("reinforce", b, x)
    torch.testing.assert_close(value, -(x * b.mask).sum())
    torch.testing.assert_close(torch.autograd.grad(value, x)[0], -b.mask.to(F64))
    # rec(w=ρ, keep=two_side) has ppo_clip's gradient on in-range tokens (and none outside).
    b = make_batch(*shape)
    _, _, g_rec = grad("rec", b, clip_mode="two_side", weight="ratio")
    _, _, g_ppo = grad("ppo_clip", b)
    inside = (b.rho >= 0.8) & (b.rho <= 1.2)
    torch.testing.assert_close(g_rec[inside], g_ppo[inside])
    assert bool((g_rec[~inside] == 0).all())


@PROPS
@given(shapes)
def test_padding_with_minus_inf_is_inert_for_every_loss(shape):
    # Masked positions carry -inf in every log-prob input; the valid tokens must see exactly what they see with
    # finite garbage there, the loss must stay finite and the masked gradient must be 0.
    b = make_batch(*shape)
    pad = ~b.mask

    def padded(value):
        c = SimpleNamespace(**vars(b))
        for key in ("logp", "old", "rollout_logp", "ref_logp", "tempered_old_logp"):
            x = getattr(b, key).clone()
            x[pad] = value
            setattr(c, key, x)
        return c

    for name, (kw, _) in SPECS.items():
        loss_inf, metrics, g_inf = grad(name, padded(-math.inf), **kw)
        loss_fin, _, g_fin = grad(name, padded(-0.7), **kw)
        assert torch.isfinite(loss_inf).all() and torch.isfinite(g_inf).all(), name
        assert bool((g_inf[pad] == 0).all()), name
        assert all(torch.isfinite(v).all() for v in metrics.values()), name
        torch.testing.assert_close(loss_inf[b.mask], loss_fin[b.mask], msg=name)
        torch.testing.assert_close(g_inf, g_fin, msg=name)


def test_metrics_are_detached_per_token_floats_for_every_loss():
    b = make_batch(3, 4, 0)
    for name, (kw, _) in SPECS.items():
        _, metrics, _ = call(name, b, b.logp.clone().requires_grad_(True), **kw)
        assert {"clip/frac", "clip/frac_low", "clip/frac_high", "ratio/mean"} <= set(metrics), name
        for key, value in metrics.items():
            assert value.shape == (3, 4) and value.is_floating_point() and not value.requires_grad, (name, key)


def test_reconstructions_warn_once_and_say_so():
    b = make_batch(3, 4, 1)
    recon = [n for n in algos.names("policy_loss") if n.endswith("_recon")]
    assert recon == ["dcpo_dist_recon", "dispo_recon", "etr_recon", "r2vpo_recon"]
    for plain in ("etr", "dispo", "r2vpo", "dcpo_dist", "dppo_kl"):
        assert plain not in algos.names("policy_loss")  # R3: never a stub under the plain id
    registry._WARNED.clear()
    logger = logging.getLogger("unipo.algos")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        for name in recon:
            for _ in range(2):
                call(name, b, b.logp)
    finally:
        logger.removeHandler(handler)
    assert [r.args[0] for r in records] == recon
    assert all("not the published rule" in r.getMessage() for r in records)
    for name in recon:
        entry = algos.entry("policy_loss", name)
        assert entry.fn.__doc__.startswith("Reconstruction of ") and "not the published rule" in entry.fn.__doc__
        assert "reconstructed" in entry.tag
