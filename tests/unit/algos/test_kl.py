"""KL estimators: hand-worked values, clamps, and the §13 K1 facts by exact enumeration."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos.controllers import adaptive_kl_coef

F64 = torch.float64
KLS = {name: algos.get("kl", name) for name in ("k1", "k2", "k3")}
LN2 = math.log(2.0)


def t(values):
    return torch.tensor(values, dtype=F64)


def test_estimators_by_hand():
    # δ = logp - ref_logp = (0, ln 2, -ln 2)
    logp, ref = t([[0.0, LN2, -LN2]]), torch.zeros(1, 3, dtype=F64)
    torch.testing.assert_close(KLS["k1"](logp, ref), t([[0.0, LN2, -LN2]]))
    # ½·(ln 2)² ≈ 0.240227 on both sides
    torch.testing.assert_close(KLS["k2"](logp, ref), t([[0.0, 0.5 * LN2**2, 0.5 * LN2**2]]))
    # e^{-δ} + δ - 1: δ = ln 2 -> .5 + .693147 - 1 = .193147; δ = -ln 2 -> 2 - .693147 - 1 = .306853
    torch.testing.assert_close(KLS["k3"](logp, ref), t([[0.0, LN2 - 0.5, 1.0 - LN2]]))


def test_k3_clamps_like_verl():
    # δ = 30 -> clamped to 20: e^-20 + 19 ≈ 19 -> clamped to 10. δ = -30 -> -20: e^20 - 21 -> 10.
    # δ = 5: e^-5 + 4 ≈ 4.006738 stays.
    out = KLS["k3"](t([[30.0, -30.0, 5.0]]), torch.zeros(1, 3, dtype=F64))
    torch.testing.assert_close(out, t([[10.0, 10.0, math.exp(-5.0) + 4.0]]))


PROPS = settings(max_examples=30, deadline=None, derandomize=True)


@PROPS
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**16))
def test_zero_at_reference_and_nonnegative(n, t_, seed):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t_, generator=gen, dtype=F64) * 5
    ref = logp + 2 * torch.randn(n, t_, generator=gen, dtype=F64)
    for name, fn in KLS.items():
        torch.testing.assert_close(fn(logp, logp.clone()), torch.zeros_like(logp), msg=name)
    assert bool((KLS["k2"](logp, ref) >= 0).all())
    assert bool((KLS["k3"](logp, ref) >= 0).all())


@PROPS
@given(st.integers(2, 6), st.integers(0, 2**16))
def test_k1_k3_unbiased_and_k2_gradient_by_enumeration(v, seed):
    # exact expectation over a categorical: E_{y~p}[f(y)] = Σ_y p(y)·f(y). Logits in [0, 1) keep |δ| < 2, so
    # k3 < e² - 3 ≈ 4.4 stays inside verl's [-10, 10] clamp (the clamp biases k3 only beyond it).
    gen = torch.Generator().manual_seed(seed)
    theta = torch.rand(v, generator=gen, dtype=F64).requires_grad_(True)
    logq = torch.log_softmax(torch.rand(v, generator=gen, dtype=F64), 0)
    logp = torch.log_softmax(theta, 0)
    p = logp.exp()
    kl = (p * (logp - logq)).sum()
    for name in ("k1", "k3"):
        est = (p.detach() * KLS[name](logp[None], logq[None])[0]).sum()
        torch.testing.assert_close(est, kl.detach(), msg=name)
    # E_{y~p}[∇k2(y)] (pathwise, samples held fixed) = ∇KL(p‖q)
    (g_kl,) = torch.autograd.grad(kl, theta, retain_graph=True)
    (g_k2,) = torch.autograd.grad((p.detach() * KLS["k2"](logp[None], logq[None])[0]).sum(), theta)
    torch.testing.assert_close(g_k2, g_kl)


kl_abs = algos.get("kl", "kl_abs")
kl_full = algos.get("kl", "kl_full")
k1_st = algos.get("kl", "k1+")
k3_st = algos.get("kl", "k3+")
kl_bias_corrected = algos.get("kl", "kl_bias_corrected")
ST = {"k1+": (k1_st, KLS["k1"]), "k3+": (k3_st, KLS["k3"])}


def test_kl_abs_and_straight_through_by_hand():
    # δ = (0, ln 2, -ln 2): |δ| = (0, .693, .693)
    logp, ref = t([[0.0, LN2, -LN2]]), torch.zeros(1, 3, dtype=F64)
    torch.testing.assert_close(kl_abs(logp, ref), t([[0.0, LN2, LN2]]))
    for name, (st_fn, base) in ST.items():
        x = logp.clone().requires_grad_(True)
        value = st_fn(x, ref)
        torch.testing.assert_close(value, base(logp, ref), msg=name)  # the value of k1 / k3
        (grad,) = torch.autograd.grad(value.sum(), x)
        torch.testing.assert_close(grad, t([[0.0, LN2, -LN2]]), msg=name)  # d(½δ²)/dlogp = δ


def test_kl_full_by_hand():
    # one position, V = 2: p = (½, ½) (logits 0, 0), q = (¾, ¼): KL = ½·ln(⅔) + ½·ln 2 = ½·ln(4/3) ≈ 0.143841
    logits = torch.zeros(1, 1, 2, dtype=F64)
    ref_logits = torch.log(t([[[0.75, 0.25]]]))
    lp = torch.zeros(1, 1, dtype=F64)
    torch.testing.assert_close(kl_full(lp, lp, logits=logits, ref_logits=ref_logits), t([[0.5 * math.log(4 / 3)]]))
    with pytest.raises(ValueError, match="logits"):
        kl_full(lp, lp)


def test_kl_bias_corrected_by_hand():
    # δ = logp - ref = ln 2 -> k3 = ln 2 - ½ ≈ 0.193147; ρ = exp(logp - old) = exp(ln 2) = 2 -> 2·k3 ≈ 0.386294.
    # Gradient: d(ρ·k3)/dlogp = ρ·k3 + ρ·(1 - e^{-δ}) = ρ·δ = 2·ln 2 (the importance-weighted k2 gradient).
    logp = t([[LN2 - 1.0]]).requires_grad_(True)
    ref, old = t([[-1.0]]), t([[-1.0]])
    value = kl_bias_corrected(logp, ref, old_logp=old)
    torch.testing.assert_close(value, t([[2 * (LN2 - 0.5)]]))
    (grad,) = torch.autograd.grad(value.sum(), logp)
    torch.testing.assert_close(grad, t([[2 * LN2]]))


def test_adaptive_kl_coef_by_hand():
    # KL_obs = target: e = 0 -> β unchanged (§13 K2)
    assert adaptive_kl_coef(0.1, 0.05, target=0.05, horizon=10000, n_steps=256) == pytest.approx(0.1)
    # KL_obs/target - 1 = 1 -> clipped to 0.2; β·(1 + 0.2·100/1000) = 0.1·1.02 = 0.102
    assert adaptive_kl_coef(0.1, 0.2, target=0.1, horizon=1000, n_steps=100) == pytest.approx(0.102)
    # KL_obs = 0 -> e = -1 -> -0.2; 0.1·(1 - 0.2·100/1000) = 0.098; a tensor stays a tensor
    torch.testing.assert_close(
        adaptive_kl_coef(0.1, t(0.0), target=0.1, horizon=1000, n_steps=100), t(0.098), check_dtype=False
    )
    with pytest.raises(ValueError):
        adaptive_kl_coef(0.1, 0.1, target=0.0, horizon=1.0, n_steps=1)
    assert (
        "adaptive_kl_coef" not in algos.names("kl") and algos.get("controller", "kl_adaptive_ctrl") is adaptive_kl_coef
    )


@PROPS
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**16))
def test_new_estimators_zero_at_reference_and_bias_correction_at_rho_one(n, t_, seed):
    # §13 K1 (zero at π_θ = π_q) and K2 (kl_bias_corrected = k3 at ρ = 1)
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t_, generator=gen, dtype=F64) * 5
    ref = logp + 2 * torch.randn(n, t_, generator=gen, dtype=F64)
    for fn in (kl_abs, k1_st, k3_st, kl_bias_corrected):
        torch.testing.assert_close(fn(logp, logp.clone()), torch.zeros_like(logp))
    torch.testing.assert_close(kl_bias_corrected(logp, ref, old_logp=logp.clone()), KLS["k3"](logp, ref))
    torch.testing.assert_close(kl_bias_corrected(logp, ref), KLS["k3"](logp, ref))
    assert bool((kl_abs(logp, ref) >= 0).all()) and bool((k3_st(logp, ref) >= 0).all())


@PROPS
@given(st.integers(2, 6), st.integers(0, 2**16))
def test_straight_through_and_full_kl_by_enumeration(v, seed):
    # §13 K1 on a categorical: E[k1_st] = E[k3_st] = KL, E[∇k*_st] = ∇KL (k2's pathwise gradient), and kl_full is the
    # exact KL with the exact gradient.
    gen = torch.Generator().manual_seed(seed)
    theta = torch.rand(v, generator=gen, dtype=F64).requires_grad_(True)
    ref_logits = torch.rand(v, generator=gen, dtype=F64)
    logq = torch.log_softmax(ref_logits, 0)
    logp = torch.log_softmax(theta, 0)
    p = logp.exp()
    kl = (p * (logp - logq)).sum()
    (g_kl,) = torch.autograd.grad(kl, theta, retain_graph=True)
    for name, (st_fn, _) in ST.items():
        est = (p.detach() * st_fn(logp[None], logq[None])[0]).sum()
        torch.testing.assert_close(est.detach(), kl.detach(), msg=name)
        (g,) = torch.autograd.grad(est, theta, retain_graph=True)
        torch.testing.assert_close(g, g_kl, msg=name)
    full = kl_full(logp[None, :1], logq[None, :1], logits=theta[None, None], ref_logits=ref_logits[None, None])
    torch.testing.assert_close(full[0, 0], kl)
    torch.testing.assert_close(torch.autograd.grad(full.sum(), theta)[0], g_kl)


@PROPS
@given(st.integers(2, 6), st.integers(0, 2**16))
def test_bias_corrected_is_unbiased_off_policy(v, seed):
    # samples from π_old: E_{π_old}[ρ·k3] = E_{π_θ}[k3] = KL(π_θ‖π_ref) (exact enumeration)
    gen = torch.Generator().manual_seed(seed)
    logp, logq, log_old = (torch.log_softmax(torch.rand(v, generator=gen, dtype=F64), 0) for _ in range(3))
    kl = (logp.exp() * (logp - logq)).sum()
    est = (log_old.exp() * kl_bias_corrected(logp[None], logq[None], old_logp=log_old[None])[0]).sum()
    torch.testing.assert_close(est, kl)
