"""Token masks and weights: hand-worked values, §13 A3, masking/padding properties, reproducibility."""

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos import registry
from unipo.algos import token_weights as tw

F64 = torch.float64
W = {name: algos.get("token_weight", name) for name in algos.names("token_weight")}
PROPS = settings(max_examples=30, deadline=None, derandomize=True)
LN2 = math.log(2.0)
_f64 = {"dtype": F64}


def t(values):
    return torch.tensor(values, dtype=F64)


def test_registered_ids_and_defaults():
    assert set(W) == {
        "mask_truncated",
        "top_entropy_tokens",
        "clip_cov",
        "gtpo",
        "steer",
        "igpo_hint_mask",
        "d3s_token_recon",
        "positive_amplify_recon",
        "capo_recon",
        "r3l_pivot_recon",
    }
    assert "tw_grpo_weights" not in W and "tw_grpo_weights_recon" not in W  # [unknown] rule: known gap (R3)
    params = {name: algos.entry("token_weight", name).params for name in W}
    assert params["top_entropy_tokens"] == {"keep_frac": 0.2}
    assert params["clip_cov"] == {
        "select_frac": 2e-4,
        "cov_low": 1.0,
        "cov_high": 5.0,
        "clip_low": 0.2,
        "clip_high": 0.2,
    }
    assert params["gtpo"] == {"conflict_weight": 2.0, "divide_by_conflicts": True}
    assert params["steer"] == {"w_min": 0.8, "w_max": 1.2, "mapping": "linear"}
    assert params["igpo_hint_mask"] == {"keep_frac": 0.2}
    assert params["d3s_token_recon"] == {"keep_frac_start": 0.2, "keep_frac_end": 1.0}
    doc = W["d3s_token_recon"].__doc__
    assert doc.startswith("Reconstruction of D³S") and "from its abstract; not the published rule" in doc


def test_missing_inputs_are_named():
    mask = torch.ones(1, 2)
    with pytest.raises(ValueError, match="truncated"):
        W["mask_truncated"](mask)
    with pytest.raises(ValueError, match="entropy"):
        W["top_entropy_tokens"](mask)
    with pytest.raises(ValueError, match="completion_ids"):
        W["gtpo"](mask, advantages=torch.ones(1))


def test_mask_truncated_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w = W["mask_truncated"](mask, truncated=torch.tensor([True, False]))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))


def test_top_entropy_tokens_by_hand():
    # valid entropies 1..10 (row 0: 1..5, row 1: 6..10) plus a masked 99. quantile(0.8) of 1..10 (linear):
    # position 0.8·9 = 7.2 -> 8 + 0.2·(9 - 8) = 8.2, so 9 and 10 are kept: 2 of 10 tokens = 20%.
    entropy = torch.cat([torch.arange(1.0, 11.0, dtype=F64).view(2, 5), t([[99.0], [0.0]])], 1)
    mask = torch.ones(2, 6)
    mask[:, 5] = 0
    w = W["top_entropy_tokens"](mask, entropy=entropy)
    torch.testing.assert_close(w, t([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]]))
    torch.testing.assert_close(W["top_entropy_tokens"](mask, entropy=entropy, keep_frac=1.0), mask.to(F64))
    only_max = W["top_entropy_tokens"](mask, entropy=entropy, keep_frac=0.0)  # quantile(1) = max = 10
    assert only_max.sum() == 1 and only_max[1, 4] == 1
    torch.testing.assert_close(W["top_entropy_tokens"](torch.zeros(2, 6), entropy=entropy), torch.zeros(2, 6, **_f64))


def _cov_batch():
    # A = (+1, -1) per row, logp = (-1, -5) in both rows: mean A = 0, mean logp = -3, so
    # Cov = A·(logp + 3) = [[2, -2], [-2, 2]]; the candidates 1 < Cov < 5 are (0, 0) and (1, 1).
    adv = t([1.0, -1.0])
    logp = t([[-1.0, -5.0], [-1.0, -5.0]])
    return torch.ones(2, 2), adv, logp


def test_clip_cov_by_hand():
    mask, adv, logp = _cov_batch()
    cov = tw.token_covariance(adv, logp, mask)
    torch.testing.assert_close(cov, t([[2.0, -2.0], [-2.0, 2.0]]))
    # r = 0.5: k = ⌊0.5·4⌋ = 2 -> both candidates dropped
    w = W["clip_cov"](mask, advantages=adv, logp=logp, old_logp=logp, select_frac=0.5)
    torch.testing.assert_close(w, t([[0.0, 1.0], [1.0, 0.0]]))
    # (0, 0) is already clipped by ppo_clip: A > 0 and ρ = e^{0.5} ≈ 1.65 > 1.2, so only (1, 1) is a candidate
    old = logp.clone()
    old[0, 0] = -1.5
    w = W["clip_cov"](mask, advantages=adv, logp=logp, old_logp=old, select_frac=0.5)
    torch.testing.assert_close(w, t([[1.0, 1.0], [1.0, 0.0]]))
    # default r = 2e-4: k = max(1, ⌊0.0008⌋) = 1 -> exactly one of the two candidates, chosen at random
    w = W["clip_cov"](mask, advantages=adv, logp=logp, generator=torch.Generator().manual_seed(0))
    assert w.sum() == 3 and (w[0, 0] == 0 or w[1, 1] == 0)


def test_clip_cov_is_reproducible_with_a_generator():
    gen = torch.Generator().manual_seed(1)
    adv = torch.randn(8, generator=gen, dtype=F64)
    logp = -torch.rand(8, 16, generator=gen, dtype=F64) * 8
    mask = torch.ones(8, 16)
    kw = {"advantages": adv, "logp": logp, "select_frac": 0.05, "cov_low": -math.inf, "cov_high": math.inf}
    a = W["clip_cov"](mask, generator=torch.Generator().manual_seed(7), **kw)
    b = W["clip_cov"](mask, generator=torch.Generator().manual_seed(7), **kw)
    c = W["clip_cov"](mask, generator=torch.Generator().manual_seed(8), **kw)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_gtpo_by_hand():
    # group 0: row 0 positive, row 1 negative, row 2 zero advantage; group 1: row 3 negative, alone in its group.
    # Rows 0, 1 share (0:5), (1:6) from the start and (end:8) from the end; position 2 differs (7 vs 9).
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 8], [5, 6, 7, 8], [5, 6, 9, 8]])
    adv = t([1.0, -1.0, 0.0, -1.0])
    mask = torch.ones(4, 4)
    groups = torch.tensor([0, 0, 0, 1])
    raw = W["gtpo"](mask, completion_ids=ids, advantages=adv, group_ids=groups, divide_by_conflicts=False)
    # positive conflicts get 2, negative ones 0, everything else 1; row 3 has no positive partner in its group
    torch.testing.assert_close(raw, torch.tensor([[2, 2, 1, 2], [0, 0, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1.0]]))
    # 3 conflict tokens in rows 0 and 1 -> ÷ 3; rows 2 and 3 have none -> ÷ max(1, 0) = 1
    w = W["gtpo"](mask, completion_ids=ids, advantages=adv, group_ids=groups)
    torch.testing.assert_close(w, raw / torch.tensor([[3.0], [3.0], [1.0], [1.0]]))


def test_gtpo_aligns_the_trailing_run_on_each_rows_end():
    # positive row: 4 2 3 (length 3); negative row: 7 4 2 3 (length 4). Nothing matches by position from the start,
    # but aligned on their ends the last three tokens match: pos gets 2 on all three, neg 0 on its last three.
    ids = torch.tensor([[4, 2, 3, 0], [7, 4, 2, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    w = W["gtpo"](mask, completion_ids=ids, advantages=t([1.0, -1.0]), divide_by_conflicts=False)
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def _omega_batch():
    # p = π_θ = π_old = ½ everywhere, so Ω = A·2·¼·(ln ½ + H) = ½·A·(H − ln 2):
    # H = ln 2 -> Ω = 0; H = ln 2 + 1, A = 1 -> Ω = 0.5; H = ln 2 + 2, A = -1 -> Ω = -1 (|Ω| = 1). Masked: huge.
    logp = torch.full((1, 4), math.log(0.5), dtype=F64)
    entropy = t([[LN2, LN2 + 1.0, LN2 + 2.0, 50.0]])
    adv = t([[1.0, 1.0, -1.0, 100.0]])
    return torch.tensor([[1, 1, 1, 0]]), adv, logp, entropy


def test_steer_by_hand():
    mask, adv, logp, entropy = _omega_batch()
    kw = {"advantages": adv, "logp": logp, "old_logp": logp, "entropy": entropy}
    # linear: w = 1.2 - (|Ω| - 0)·(0.4 / 1) -> 1.2, 1.0, 0.8
    torch.testing.assert_close(W["steer"](mask, **kw), t([[1.2, 1.0, 0.8, 0.0]]))
    # exp: k = -ln 0.8 / max(1, 0.02), w = 0.8^{|Ω|} -> 1, 0.8^0.5 ≈ 0.894427, 0.8
    torch.testing.assert_close(W["steer"](mask, mapping="exp", **kw), t([[1.0, math.sqrt(0.8), 0.8, 0.0]]))
    # constant |Ω| (all tokens Ω = 0) -> the midpoint (0.8 + 1.2) / 2 = 1
    flat = W["steer"](mask, **{**kw, "entropy": torch.full((1, 4), LN2, dtype=F64)})
    torch.testing.assert_close(flat, t([[1.0, 1.0, 1.0, 0.0]]))


def test_igpo_hint_mask_by_hand():
    # row 0: 5 hint tokens with entropy 1..5 and 2 generated ones; keep max(1, ⌊0.2·5⌋) = 1 hint: entropy 5.
    # row 1: no hints, all kept. Row 2: 10 hints -> ⌊0.2·10⌋ = 2 kept (entropies 9 and 10); position 10 masked.
    entropy = torch.zeros(3, 11, dtype=F64)
    entropy[0, :7] = t([3.0, 1.0, 5.0, 2.0, 4.0, 9.0, 9.0])
    entropy[2, :10] = torch.arange(1.0, 11.0, dtype=F64)
    hint = torch.zeros(3, 11, dtype=torch.bool)
    hint[0, :5] = True
    hint[2, :10] = True
    mask = torch.ones(3, 11)
    mask[0, 7:] = 0
    mask[2, 10] = 0
    w = W["igpo_hint_mask"](mask, hint_mask=hint, entropy=entropy)
    expected = mask.clone().to(F64)
    expected[0, :5] = t([0, 0, 1, 0, 0])
    expected[2, :10] = t([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    torch.testing.assert_close(w, expected)


def test_positive_amplify_scales_only_the_successes():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    w = W["positive_amplify_recon"](mask, rewards=torch.tensor([1.0, 0.5, 2.0]), kappa=3.0)
    torch.testing.assert_close(w, torch.tensor([[3.0, 3.0, 0.0], [1.0, 1.0, 1.0], [3.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="kappa"):
        W["positive_amplify_recon"](mask, rewards=torch.ones(3), kappa=0.5)


def test_r3l_pivot_trains_an_attempt_and_its_retry_after_their_common_prefix():
    # pair 4: rows 0 and 2 share [5, 6] and differ at t = 2 -> pivot 2; pair 7: rows 1 and 3 are the same up to the
    # end -> pivot 4 (nothing trained); row 4 is in no pair and keeps its mask
    ids = torch.tensor([[5, 6, 7, 2], [1, 2, 3, 4], [5, 6, 9, 9], [1, 2, 3, 4], [5, 6, 7, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    w = W["r3l_pivot_recon"](mask, completion_ids=ids, retry_pairs=torch.tensor([4, 7, 4, 7, -1]))
    expected = [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=w.dtype))


def test_d3s_token_recon_by_hand_and_warns_once(caplog):
    # score |A|·H = 1..5 on the valid tokens. progress 0: ρ = 0.2 -> quantile(0.8) = 4 + 0.2 = 4.2 -> keep {5}.
    # progress 0.5: ρ = 0.6 -> quantile(0.4): position 1.6 -> 2.6 -> keep {3, 4, 5}. progress 1: ρ = 1 -> all.
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    entropy = t([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0]])
    adv = t([-1.0])
    registry._WARNED.discard("d3s_token_recon")
    with caplog.at_level(logging.WARNING, logger="unipo.algos"):
        w0 = W["d3s_token_recon"](mask, advantages=adv, entropy=entropy)
        w_half = W["d3s_token_recon"](mask, advantages=adv, entropy=entropy, progress=0.5)
        w_end = W["d3s_token_recon"](mask, advantages=adv, entropy=entropy, progress=1.0)
    assert sum("reconstruction" in r.getMessage() for r in caplog.records) == 1  # once, not per call
    torch.testing.assert_close(w0, t([[0, 0, 0, 0, 1, 0]]))
    torch.testing.assert_close(w_half, t([[0, 0, 1, 1, 1, 0]]))
    torch.testing.assert_close(w_end, mask.to(F64))


def _random_inputs(n, t_, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t_ + 1, (n,), generator=gen)
    mask = torch.arange(t_)[None, :] < lengths[:, None]
    return {
        "mask": mask,
        "advantages": torch.randn(n, generator=gen, dtype=F64),
        "entropy": torch.rand(n, t_, generator=gen, dtype=F64) * 3,
        "logp": -torch.rand(n, t_, generator=gen, dtype=F64) * 4,
        "old_logp": -torch.rand(n, t_, generator=gen, dtype=F64) * 4,
        "completion_ids": torch.randint(0, 3, (n, t_), generator=gen),
        "group_ids": torch.randint(0, 2, (n,), generator=gen),
        "truncated": torch.rand(n, generator=gen) < 0.3,
        "hint_mask": torch.rand(n, t_, generator=gen) < 0.5,
        "rewards": (torch.rand(n, generator=gen) < 0.5).to(F64),
    }, gen


def _call(name, inputs, **extra):
    fn = W[name]
    params = set(fn.__code__.co_varnames[: fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount])
    kwargs = {k: v for k, v in inputs.items() if k in params and k != "mask"}
    return fn(inputs["mask"], **kwargs, **extra)


DETERMINISTIC = ("mask_truncated", "top_entropy_tokens", "gtpo", "steer", "igpo_hint_mask", "d3s_token_recon",
                 "positive_amplify_recon")  # fmt: skip


@PROPS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
def test_masked_tokens_get_zero_and_padding_is_inert(n, t_, seed):
    inputs, gen = _random_inputs(n, t_, seed)
    pad = 2
    padded = {}
    for key, value in inputs.items():
        if value.dim() == 2:
            filler = torch.zeros(n, pad, dtype=value.dtype) if key == "mask" else value[:, :1].expand(n, pad) * 7
            padded[key] = torch.cat([value, filler], 1)
        else:
            padded[key] = value
    for name in DETERMINISTIC:
        w = _call(name, inputs)
        wp = _call(name, padded)
        assert not w.requires_grad and bool(torch.isfinite(w).all()), name
        assert bool((w[~inputs["mask"]] == 0).all()) and bool((w >= 0).all()), name
        torch.testing.assert_close(wp[:, :t_], w, msg=name)
        assert bool((wp[:, t_:] == 0).all()), name


@PROPS
@given(st.integers(5, 200), st.floats(0.05, 0.95), st.integers(0, 2**16))
def test_top_entropy_keeps_about_q_of_the_tokens(n_tokens, q, seed):
    # §13 A3: with distinct entropies, kept = n - ⌈(1 - q)(n - 1)⌉, within one token of q·n
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(1, n_tokens, generator=gen, dtype=F64)
    kept = W["top_entropy_tokens"](torch.ones(1, n_tokens), entropy=entropy, keep_frac=q).sum()
    assert abs(float(kept) - q * n_tokens) <= 1.0 + 1e-9


@PROPS
@given(st.integers(1, 8), st.integers(1, 12), st.floats(1e-3, 0.5), st.integers(0, 2**16))
def test_clip_cov_drops_exactly_max_one_floor_r_n(n, t_, r, seed):
    # §13 A3: with every unclipped valid token a candidate, exactly min(max(1, ⌊r·N⌋), #candidates) are dropped
    inputs, _ = _random_inputs(n, t_, seed)
    mask, adv, logp, old = inputs["mask"], inputs["advantages"], inputs["logp"], inputs["old_logp"]
    kw = {"cov_low": -math.inf, "cov_high": math.inf, "select_frac": r, "clip_low": 0.2, "clip_high": 0.2}
    w = W["clip_cov"](
        mask, advantages=adv, logp=logp, old_logp=old, generator=torch.Generator().manual_seed(seed), **kw
    )
    ratio = torch.exp(logp - old)
    a = adv[:, None].expand_as(logp)
    clipped = ((a < 0) & (ratio < 0.8)) | ((a > 0) & (ratio > 1.2))
    candidates = int((mask & ~clipped).sum())
    dropped = int(mask.sum() - w.sum())
    assert dropped == min(max(1, math.floor(r * int(mask.sum()))), candidates)
    assert bool((w[mask & clipped] == 1).all())  # tokens ppo_clip already clips are never dropped


@PROPS
@given(st.integers(2, 8), st.integers(1, 6), st.integers(0, 2**16))
def test_gtpo_without_shared_tokens_is_all_ones(n, t_, seed):
    # §13 A3: positives draw ids from {0..9}, negatives from {10..19}: no (position, token) is shared -> δ ≡ 1
    inputs, gen = _random_inputs(n, t_, seed)
    adv = inputs["advantages"]
    ids = torch.randint(0, 10, (n, t_), generator=gen) + 10 * (adv < 0).long()[:, None]
    w = W["gtpo"](inputs["mask"], completion_ids=ids, advantages=adv, group_ids=inputs["group_ids"])
    torch.testing.assert_close(w, inputs["mask"].to(w.dtype))


@PROPS
@given(st.integers(1, 6), st.integers(2, 8), st.integers(0, 2**16), st.sampled_from(["linear", "exp"]))
def test_steer_weights_bounded_and_non_increasing_in_omega(n, t_, seed, mapping):
    # §13 A3: weights in [0.8, 1.2] and non-increasing in |Ω|
    inputs, _ = _random_inputs(n, t_, seed)
    w = _call("steer", inputs, mapping=mapping)
    valid = inputs["mask"]
    p = inputs["logp"].exp()
    omega = inputs["advantages"][:, None] / inputs["old_logp"].exp() * p * (1 - p) * (p.log() + inputs["entropy"])
    order = torch.argsort(omega.abs()[valid])
    ws = w[valid][order]
    assert bool(((ws >= 0.8 - 1e-12) & (ws <= 1.2 + 1e-12)).all())
    assert bool((ws[1:] <= ws[:-1] + 1e-12).all())


@PROPS
@given(st.integers(1, 6), st.integers(1, 10), st.integers(0, 2**16))
def test_igpo_keeps_every_generated_token_and_top_hints(n, t_, seed):
    inputs, _ = _random_inputs(n, t_, seed)
    mask, hint = inputs["mask"], inputs["hint_mask"]
    w = _call("igpo_hint_mask", inputs)
    assert bool((w[mask & ~hint] == 1).all())
    for i in range(n):
        n_hint = int((mask[i] & hint[i]).sum())
        kept = int(w[i][mask[i] & hint[i]].sum())
        assert kept == (max(1, math.floor(0.2 * n_hint)) if n_hint else 0)
