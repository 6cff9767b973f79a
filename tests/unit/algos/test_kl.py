"""KL estimators: hand-worked values, clamps, and the §13 K1 facts by exact enumeration."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

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
