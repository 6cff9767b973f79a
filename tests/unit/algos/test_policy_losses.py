"""Policy surrogates: hand-worked values and gradients, and the §13 U1/U2/U3 properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

ppo_clip = algos.get("policy_loss", "ppo_clip")
dual_clip = algos.get("policy_loss", "dual_clip")
gspo = algos.get("policy_loss", "gspo")
cispo = algos.get("policy_loss", "cispo")
token_sum = algos.get("aggregation", "token_sum")
seq_mean_token_mean = algos.get("aggregation", "seq_mean_token_mean")

F64 = torch.float64
LN = math.log


def t(values):
    return torch.tensor(values, dtype=F64)


def grad_of(loss_fn, logp, old_logp, adv, mask, agg=token_sum, **kw):
    """(per-token loss, metrics, d agg(loss)/d logp)."""
    logp = logp.clone().requires_grad_(True)
    loss, metrics = loss_fn(logp, old_logp, adv, mask, **kw)
    (g,) = torch.autograd.grad(agg(loss, mask), logp)
    return loss.detach(), metrics, g


# old_logp = 0 so that logp = log ρ; row 0 has A = +1, row 1 has A = -1; ratios 1.5, 0.5, 1.1, 0.9.
RATIOS = t([[1.5, 0.5, 1.1, 0.9], [1.5, 0.5, 1.1, 0.9]])
LOGP = RATIOS.log()
OLD = torch.zeros(2, 4, dtype=F64)
ADV = t([1.0, -1.0])
MASK = torch.ones(2, 4)


def test_ppo_clip_by_hand():
    # A=+1: -min(ρ, clip(ρ, .8, 1.2)) -> ρ=1.5 clipped high: -1.2; others unclipped: -.5, -1.1, -.9.
    # A=-1: -min(-ρ, -clip(ρ)) = max(ρ, clip(ρ)) -> 1.5 (unclipped), ρ=.5 clipped low: .8, 1.1, .9.
    # gradient dℓ/dlogp = -A·ρ unless clipped (then 0).
    loss, metrics, g = grad_of(ppo_clip, LOGP, OLD, ADV, MASK)
    torch.testing.assert_close(loss, t([[-1.2, -0.5, -1.1, -0.9], [1.5, 0.8, 1.1, 0.9]]))
    torch.testing.assert_close(g, t([[0.0, -0.5, -1.1, -0.9], [1.5, 0.0, 1.1, 0.9]]))
    torch.testing.assert_close(metrics["clip/frac_high"], t([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
    torch.testing.assert_close(metrics["clip/frac_low"], t([[0.0, 0, 0, 0], [0, 1, 0, 0]]))
    torch.testing.assert_close(metrics["clip/frac"], t([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
    torch.testing.assert_close(metrics["ratio/mean"], RATIOS)


def test_ppo_clip_higher():
    # DAPO clip-higher ε_high = 0.28: ρ=1.5, A=+1 -> -1.28; ρ=1.25 is now inside -> -1.25 with gradient -1.25.
    logp = t([[LN(1.5), LN(1.25)]])
    loss, _, g = grad_of(ppo_clip, logp, torch.zeros(1, 2, dtype=F64), t([1.0]), torch.ones(1, 2), clip_high=0.28)
    torch.testing.assert_close(loss, t([[-1.28, -1.25]]))
    torch.testing.assert_close(g, t([[0.0, -1.25]]))


def test_masked_token_with_minus_inf_logp_is_inert():
    # padded positions often carry logp = -inf; the loss must stay finite and the gradient there exactly 0.
    logp = LOGP.clone()
    logp[0, 3] = -math.inf
    old = OLD.clone()
    old[1, 2] = -math.inf
    mask = MASK.clone()
    mask[0, 3] = mask[1, 2] = 0
    for fn in (ppo_clip, dual_clip, gspo, cispo):
        loss, metrics, g = grad_of(fn, logp, old, ADV, mask)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all(), fn.__name__
        assert g[0, 3] == 0 and g[1, 2] == 0, fn.__name__
        assert all(torch.isfinite(v).all() for v in metrics.values()), fn.__name__
    # the other tokens of ppo_clip are untouched: same values as in the hand test above.
    loss, _, g = grad_of(ppo_clip, logp, old, ADV, mask)
    torch.testing.assert_close(g, t([[0.0, -0.5, -1.1, 0.0], [1.5, 0.0, 0.0, 0.9]]))


def test_dual_clip_by_hand():
    # A=-1, c=3. ρ=4: ℓ_ppo = max(4, 1.2) = 4 > c·|A| = 3 -> 3, gradient 0 (dual clipped).
    # ρ=2: ℓ_ppo = 2 < 3 -> 2, gradient -A·ρ = 2. ρ=.5: clipped low -> .8, gradient 0.
    # A=+1, ρ=4: the dual clip does not apply; ordinary clip -> -1.2, gradient 0.
    logp = t([[LN(4.0), LN(2.0), LN(0.5)], [LN(4.0), 0.0, 0.0]])
    adv = t([-1.0, 1.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, metrics, g = grad_of(dual_clip, logp, torch.zeros(2, 3, dtype=F64), adv, mask)
    torch.testing.assert_close(loss[0], t([3.0, 2.0, 0.8]))
    torch.testing.assert_close(loss[1, 0], t(-1.2))
    torch.testing.assert_close(g, t([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["clip/frac_dual"], t([[1.0, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(metrics["clip/frac"][0], t([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dual_clip_rejects_c_at_most_one(c):
    with pytest.raises(ValueError, match="dual_clip"):
        dual_clip(LOGP, OLD, ADV, MASK, dual_clip=c)


def test_gspo_by_hand():
    # ε = 0.2 both sides. Masked third token holds garbage and must not enter the mean.
    # row 0: log ρ = (.2, .4) -> log s = .3, s = e^.3 ≈ 1.34986; A=+1 -> clipped high: -1.2, gradient 0.
    # row 1: same ratios, A=-1 -> -min(-s, -1.2) = s, unclipped: gradient per token -A·s = e^.3.
    # row 2: log ρ = (-.5, -.3) -> s = e^-.4 ≈ .67032 < .8, A=-1 -> clipped low: .8, gradient 0.
    # row 3: log ρ = (.01, -.01) -> s = 1, A=+1 -> -1, gradient -1 per token.
    log_ratio = t([[0.2, 0.4, 5.0], [0.2, 0.4, 5.0], [-0.5, -0.3, 0.0], [0.01, -0.01, 0.0]])
    old = torch.full((4, 3), -1.0, dtype=F64)
    mask = torch.tensor([[1, 1, 0]] * 4)
    adv = t([1.0, -1.0, -1.0, 1.0])
    loss, metrics, g = grad_of(gspo, old + log_ratio, old, adv, mask, clip_low=0.2, clip_high=0.2)
    s = math.exp(0.3)
    torch.testing.assert_close(loss[:, :2], t([[-1.2, -1.2], [s, s], [0.8, 0.8], [-1.0, -1.0]]))
    torch.testing.assert_close(g[:, :2], t([[0.0, 0.0], [s, s], [0.0, 0.0], [-1.0, -1.0]]))
    assert bool((g[:, 2] == 0).all())
    torch.testing.assert_close(metrics["ratio/mean"][:, 0], t([s, s, math.exp(-0.4), 1.0]))
    torch.testing.assert_close(metrics["clip/frac"][:, 0], t([1.0, 0.0, 1.0, 0.0]))


def test_gspo_token_gives_each_token_its_own_advantage_with_one_clip_decision_per_sequence():
    # row 0: log ρ = (.1, .1) -> s = e^.1 ≈ 1.105 inside [0.8, 1.2]: token t gets gradient -s·A_t = (-2s, +s);
    # row 1: log ρ = (.3, .3) -> s = e^.3 > 1.2; A = (+1, -1): the +1 token is clipped (gradient 0), the -1 token is
    # not (−min(-s, -1.2) = s, gradient +s) — the clip is decided on s_i, the side on each token's own advantage
    gspo_token = algos.get("policy_loss", "gspo_token")
    old = torch.full((2, 2), -1.0, dtype=F64)
    log_ratio = t([[0.1, 0.1], [0.3, 0.3]])
    adv = t([[2.0, -1.0], [1.0, -1.0]])
    loss, _, g = grad_of(gspo_token, old + log_ratio, old, adv, torch.ones(2, 2), clip_low=0.2, clip_high=0.2)
    s1, s3 = math.exp(0.1), math.exp(0.3)
    torch.testing.assert_close(loss, t([[-2 * s1, s1], [-1.2, s3]]))
    torch.testing.assert_close(g, t([[-2 * s1, s1], [0.0, s3]]))
    # one advantage per sequence: GSPO exactly
    seq = grad_of(gspo, old + log_ratio, old, t([1.0, -1.0]), torch.ones(2, 2), clip_low=0.2, clip_high=0.2)
    tok = grad_of(gspo_token, old + log_ratio, old, t([1.0, -1.0]), torch.ones(2, 2), clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(seq[0], tok[0])
    torch.testing.assert_close(seq[2], tok[2])


def _gspo_sequence_objective(logp, old, adv, mask, clip_low, clip_high):
    """GSPO written directly at the sequence level: (1/N)·Σ_i -min(s_i·A_i, clip(s_i)·A_i)."""
    m = mask.to(logp.dtype)
    s = torch.exp(((logp - old) * m).sum(-1) / m.sum(-1))
    per_seq = -torch.minimum(s * adv, torch.clamp(s, 1 - clip_low, 1 + clip_high) * adv)
    return per_seq.mean()


PROPS = settings(max_examples=30, deadline=None, derandomize=True)
shapes = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**16))


def _random_inputs(n, t_, seed, spread=0.5, token_adv=False):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t_, generator=gen, dtype=F64) * 3
    logp = old + spread * torch.randn(n, t_, generator=gen, dtype=F64)
    shape = (n, t_) if token_adv else (n,)
    adv = torch.randn(*shape, generator=gen, dtype=F64)
    mask = torch.rand(n, t_, generator=gen) < 0.7
    mask[:, 0] = True  # every row has a token, so a sequence-level reference is defined
    return logp, old, adv, mask


@PROPS
@given(shapes, st.sampled_from([(0.2, 0.2), (3e-4, 4e-4), (0.1, 0.3)]))
def test_gspo_gradient_equals_sequence_gradient(shape, clips):
    logp, old, adv, mask = _random_inputs(*shape, spread=0.2)
    lo, hi = clips
    x = logp.clone().requires_grad_(True)
    value = seq_mean_token_mean(gspo(x, old, adv, mask, clip_low=lo, clip_high=hi)[0], mask)
    (g,) = torch.autograd.grad(value, x)
    y = logp.clone().requires_grad_(True)
    ref = _gspo_sequence_objective(y, old, adv, mask, lo, hi)
    (g_ref,) = torch.autograd.grad(ref, y)
    torch.testing.assert_close(value, ref)
    torch.testing.assert_close(g, g_ref * mask)


def test_cispo_by_hand():
    # old = (-1, -2), ρ = (1.5, 3), A = +1, so logp = old + log ρ = (-.594535, -.901388).
    # absolute cap 2: ŵ = (1.5, 2) -> ℓ = -ŵ·A·logp = (.891802, 1.802775), gradient -ŵ·A = (-1.5, -2).
    old = t([[-1.0, -2.0]])
    logp = old + t([[LN(1.5), LN(3.0)]])
    loss, metrics, g = grad_of(cispo, logp, old, t([1.0]), torch.ones(1, 2), cap=2.0)
    torch.testing.assert_close(loss, t([[1.5 * (1 - LN(1.5)), 2.0 * (2 - LN(3.0))]]))
    torch.testing.assert_close(g, t([[-1.5, -2.0]]))
    torch.testing.assert_close(metrics["clip/frac_high"], t([[0.0, 1.0]]))
    # relative mode, ε = .2: ŵ = clip(ρ, .8, 1.2) = (1.2, 1.2). Where PPO's gradient is 0 (ρ=3 > 1.2, A>0),
    # CISPO's is -1.2·A (§13 U3).
    loss, metrics, g = grad_of(cispo, logp, old, t([1.0]), torch.ones(1, 2), cap_mode="relative")
    torch.testing.assert_close(g, t([[-1.2, -1.2]]))
    torch.testing.assert_close(metrics["clip/frac"], t([[1.0, 1.0]]))
    # low side: ρ = .5, A = -1 -> ŵ = .8, gradient -ŵ·A = .8 (PPO's would be 0).
    _, metrics, g = grad_of(cispo, t([[LN(0.5)]]), t([[0.0]]), t([-1.0]), torch.ones(1, 1), cap_mode="relative")
    torch.testing.assert_close(g, t([[0.8]]))
    torch.testing.assert_close(metrics["clip/frac_low"], t([[1.0]]))


def test_cispo_rejects_bad_cap_mode():
    with pytest.raises(ValueError, match="cap_mode=.*'absolute'"):
        cispo(LOGP, OLD, ADV, MASK, cap_mode="both")


ON_POLICY_LOSSES = {
    "ppo_clip": (ppo_clip, {}),
    "clip_higher": (ppo_clip, {"clip_high": 0.28}),
    "dual_clip": (dual_clip, {}),
    "cispo_absolute": (cispo, {}),
    "cispo_relative": (cispo, {"cap_mode": "relative"}),
}


@PROPS
@given(shapes, st.booleans())
def test_on_policy_gradient_is_vanilla_policy_gradient(shape, token_adv):
    # §13 U1: at ρ ≡ 1 every surrogate's gradient is -A·∇logp (GSPO: with the 1/|y_i| of seq_mean_token_mean).
    logp, _, adv, mask = _random_inputs(*shape, token_adv=token_adv)
    adv_tok = adv if token_adv else adv[:, None].expand_as(logp)
    for name, (fn, kw) in ON_POLICY_LOSSES.items():
        _, _, g = grad_of(fn, logp, logp, adv, mask, **kw)  # old_logp = logp: detached inside
        torch.testing.assert_close(g, -adv_tok * mask, msg=name)
    x = logp.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(seq_mean_token_mean(gspo(x, logp, adv, mask)[0], mask), x)
    y = logp.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(seq_mean_token_mean(-adv_tok * y, mask), y)
    torch.testing.assert_close(g, g_ref)


@PROPS
@given(shapes)
def test_gradient_is_effective_weight_times_advantage(shape):
    # §0.4: ∇ℓ = -W·A·∇logp with the W documented in each docstring, on random off-policy ratios.
    logp, old, adv, mask = _random_inputs(*shape, spread=1.0, token_adv=True)
    rho = torch.exp(logp - old)
    kept = ~(((adv > 0) & (rho > 1.2)) | ((adv < 0) & (rho < 0.8)))
    weights = {
        "ppo_clip": (ppo_clip, {}, rho * kept),
        "dual_clip": (dual_clip, {"dual_clip": 2.0}, rho * kept * ~((adv < 0) & (rho > 2.0))),
        "cispo_absolute": (cispo, {"cap": 1.5}, rho.clamp(max=1.5)),
        "cispo_relative": (cispo, {"cap_mode": "relative"}, rho.clamp(0.8, 1.2)),
    }
    for name, (fn, kw, w) in weights.items():
        _, _, g = grad_of(fn, logp, old, adv, mask, **kw)
        torch.testing.assert_close(g, -w * adv * mask, msg=name)


def test_metrics_are_detached_per_token_tensors():
    logp = LOGP.clone().requires_grad_(True)
    for fn in (ppo_clip, dual_clip, gspo, cispo):
        _, metrics = fn(logp, OLD, ADV, MASK)
        assert "clip/frac" in metrics
        for key, value in metrics.items():
            assert value.shape == (2, 4) and value.is_floating_point() and not value.requires_grad, (fn, key)
