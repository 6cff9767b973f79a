"""Aggregation rules: hand-worked values, masking and padding, and micro-batch invariance (§13 A1, A2)."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

F64 = torch.float64
GLOBAL = (
    "token_mean",
    "token_sum",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_sum_constant",
    "seq_len_scaled",
    "const_norm",
)
AGGS = {name: algos.get("aggregation", name) for name in GLOBAL}
token_mean = algos.get("aggregation", "token_mean")
seq_mean_token_mean = algos.get("aggregation", "seq_mean_token_mean")
seq_sum_constant = algos.get("aggregation", "seq_sum_constant")
token_mean_local = algos.get("aggregation", "token_mean_local")
seq_len_scaled = algos.get("aggregation", "seq_len_scaled")
seq_mean_token_sum = algos.get("aggregation", "seq_mean_token_sum")
const_norm = algos.get("aggregation", "const_norm")

# Σ m·ℓ = 1 + 2 + 4 = 7 over 3 tokens in 2 sequences (lengths 2 and 1); the third row is fully masked and
# holds NaN on a masked position, which must not reach the value.
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, math.nan, 9.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])


def t(value):
    return torch.tensor(value, dtype=F64)


def test_aggregations_by_hand():
    torch.testing.assert_close(AGGS["token_mean"](LOSS, MASK), t(7 / 3))
    torch.testing.assert_close(AGGS["token_sum"](LOSS, MASK), t(7.0))
    # ((1+2)/2 + 4/1) / 2 sequences = (1.5 + 4) / 2 = 2.75; the empty row is not a sequence.
    torch.testing.assert_close(AGGS["seq_mean_token_mean"](LOSS, MASK), t(2.75))
    torch.testing.assert_close(AGGS["seq_mean_token_sum"](LOSS, MASK), t(3.5))  # 7 / 2
    torch.testing.assert_close(AGGS["seq_sum_constant"](LOSS, MASK), t(7 / 6))  # 7 / (2 seqs · T=3)
    torch.testing.assert_close(AGGS["seq_sum_constant"](LOSS, MASK, constant=4.0), t(7 / 8))  # 7 / (2 · 4)


def test_global_counts_replace_local_ones():
    torch.testing.assert_close(token_mean(LOSS, MASK, num_tokens=10), t(0.7))  # 7 / 10
    torch.testing.assert_close(seq_mean_token_mean(LOSS, MASK, num_seqs=torch.tensor(5.0)), t(1.1))  # 5.5 / 5
    torch.testing.assert_close(seq_sum_constant(LOSS, MASK, num_seqs=7.0, constant=2.0), t(0.5))  # 7 / 14


def test_empty_batch_gives_zero_not_nan():
    mask = torch.zeros(2, 3)
    for name, fn in AGGS.items():
        torch.testing.assert_close(fn(LOSS[:2], mask), t(0.0), msg=name)
        torch.testing.assert_close(fn(LOSS[:2], mask, num_tokens=0, num_seqs=torch.tensor(0)), t(0.0), msg=name)


def test_per_micro_batch_token_mean_is_not_invariant():
    # §13 A1, the expected mismatch: micro-batch 1 = row 0 (tokens 1, 2), micro-batch 2 = row 1 (token 4).
    # Local token means averaged over 2 steps: (1.5 + 4) / 2 = 2.75, not the full-batch 7/3.
    local = (token_mean(LOSS[:1], MASK[:1]) + token_mean(LOSS[1:2], MASK[1:2])) / 2
    torch.testing.assert_close(local, t(2.75))
    assert not torch.isclose(local, t(7 / 3))
    # with the global count: 3/3 + 4/3 = 7/3.
    glob = token_mean(LOSS[:1], MASK[:1], num_tokens=3) + token_mean(LOSS[1:2], MASK[1:2], num_tokens=3)
    torch.testing.assert_close(glob, t(7 / 3))


def test_equal_lengths_make_seq_mean_token_mean_equal_token_mean():
    # §13 A2: every |y_i| = 2 -> both are Σ m·ℓ / 4 = (1 + 2 + 4 + 5) / 4 = 3.
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    torch.testing.assert_close(seq_mean_token_mean(LOSS[:2], mask), t(3.0))
    torch.testing.assert_close(token_mean(LOSS[:2], mask), t(3.0))


PROPS = settings(max_examples=30, deadline=None, derandomize=True)


def _random_batch(n, t_, seed):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(n, t_, generator=gen, dtype=F64)
    lengths = torch.randint(0, t_ + 1, (n,), generator=gen)  # right-padded, some rows may be empty
    mask = torch.arange(t_)[None, :] < lengths[:, None]
    return loss, mask, gen


@PROPS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**16))
def test_masked_tokens_get_zero_gradient_and_padding_is_inert(n, t_, seed):
    loss, mask, gen = _random_batch(n, t_, seed)
    pad = 3
    garbage = torch.randn(n, pad, generator=gen, dtype=F64) * 1e6
    loss_padded = torch.cat([loss, garbage], 1)
    mask_padded = torch.cat([mask, torch.zeros(n, pad, dtype=torch.bool)], 1)
    loss_padded[~mask_padded] = math.inf  # any value on a masked token
    for name, fn in AGGS.items():
        kw = {"constant": float(t_)} if name == "seq_sum_constant" else {}
        x = loss.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x, mask, **kw), x)
        xp = loss_padded.clone().requires_grad_(True)
        value = fn(xp, mask_padded, **kw)
        (gp,) = torch.autograd.grad(value, xp)
        assert bool((gp[~mask_padded] == 0).all()), name
        torch.testing.assert_close(value, fn(loss, mask, **kw), msg=name)
        torch.testing.assert_close(gp[:, :t_], g, msg=name)


@PROPS
@given(st.integers(2, 8), st.integers(1, 5), st.integers(0, 2**16), st.data())
def test_micro_batches_with_global_counts_reproduce_full_batch(n, t_, seed, data):
    loss, mask, _ = _random_batch(n, t_, seed)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3), label="cuts"))
    bounds = [0, *cuts, n]
    num_tokens, num_seqs = mask.sum(), mask.any(-1).sum()  # what the trainer all-reduces
    for name in GLOBAL:
        fn = AGGS[name]
        kw = {"constant": float(t_)} if name == "seq_sum_constant" else {}  # pinned, as the trainer does
        x = loss.clone().requires_grad_(True)
        full = fn(x, mask, **kw)
        (g_full,) = torch.autograd.grad(full, x)
        y = loss.clone().requires_grad_(True)
        total = torch.zeros((), dtype=F64)
        for a, b in itertools.pairwise(bounds):
            width = max(1, int(mask[a:b].sum(-1).max()))  # each micro-batch padded to its own longest row
            total = total + fn(y[a:b, :width], mask[a:b, :width], num_tokens=num_tokens, num_seqs=num_seqs, **kw)
        (g_micro,) = torch.autograd.grad(total, y)
        torch.testing.assert_close(total, full, msg=name)
        torch.testing.assert_close(g_micro, g_full, msg=name)


def test_new_aggregations_by_hand():
    # same LOSS/MASK: Σ m·ℓ = 7, 3 tokens, 2 non-empty rows with lengths 2 and 1
    torch.testing.assert_close(token_mean_local(LOSS, MASK), t(7 / 3))  # one micro-batch, grad_accum 1
    torch.testing.assert_close(token_mean_local(LOSS, MASK, grad_accum=4), t(7 / 12))  # 7/3 ÷ 4
    torch.testing.assert_close(token_mean_local(LOSS, MASK, num_tokens=100), t(7 / 3))  # global count ignored
    # ℓ_1 = 1.5, ℓ_2 = 4: (2·1.5 + 1·4) / 2 seqs = 3.5
    torch.testing.assert_close(seq_len_scaled(LOSS, MASK), t(3.5))
    torch.testing.assert_close(seq_len_scaled(LOSS, MASK, num_seqs=7), t(1.0))  # 7 / 7
    torch.testing.assert_close(const_norm(LOSS, MASK), t(0.007))  # 7 / 1000
    torch.testing.assert_close(const_norm(LOSS, MASK, divisor=7.0), t(1.0))


def test_token_mean_local_is_not_invariant():
    # §13 A1, the expected mismatch, with the registered id: micro-batch 1 = row 0 (tokens 1, 2), micro-batch 2 =
    # row 1 (token 4), grad_accum = 2: (1.5 + 4) / 2 = 2.75, not the full-batch 7/3.
    split = token_mean_local(LOSS[:1], MASK[:1], grad_accum=2) + token_mean_local(LOSS[1:2], MASK[1:2], grad_accum=2)
    torch.testing.assert_close(split, t(2.75))
    assert not torch.isclose(split, token_mean(LOSS, MASK))
    # equal token counts per micro-batch make it agree: rows 0 and 1 both with 2 tokens -> (1.5 + 4.5) / 2 = 3
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    even = token_mean_local(LOSS[:1], mask[:1], grad_accum=2) + token_mean_local(LOSS[1:2], mask[1:2], grad_accum=2)
    torch.testing.assert_close(even, token_mean(LOSS[:2], mask))


def test_equal_lengths_relations():
    # §13 A2 for the length-aware rules: every |y_i| = L = 2, Σ m·ℓ = 1 + 2 + 4 + 5 = 12 over 4 tokens, 2 seqs.
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    torch.testing.assert_close(seq_sum_constant(LOSS[:2], mask, constant=2.0), token_mean(LOSS[:2], mask))  # 12/4
    torch.testing.assert_close(seq_len_scaled(LOSS[:2], mask), 2 * token_mean(LOSS[:2], mask))  # 12/2 = 2·3
    torch.testing.assert_close(token_mean_local(LOSS[:2], mask), t(3.0))


def test_invalid_hyperparameters_raise():
    with pytest.raises(ValueError, match="grad_accum"):
        token_mean_local(LOSS, MASK, grad_accum=0)
    with pytest.raises(ValueError, match="divisor"):
        const_norm(LOSS, MASK, divisor=0.0)


def test_registered_defaults():
    assert algos.entry("aggregation", "token_mean_local").params == {"grad_accum": 1}
    assert algos.entry("aggregation", "const_norm").params == {"divisor": 1000.0}
    assert algos.entry("aggregation", "seq_len_scaled").params == {}


@PROPS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**16))
def test_seq_len_scaled_equals_seq_mean_token_sum(n, t_, seed):
    loss, mask, _ = _random_batch(n, t_, seed)
    x = loss.clone().requires_grad_(True)
    y = loss.clone().requires_grad_(True)
    a, b = seq_len_scaled(x, mask), seq_mean_token_sum(y, mask)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, y)[0])


@PROPS
@given(st.integers(2, 8), st.integers(1, 5), st.integers(0, 2**16), st.data())
def test_token_mean_local_matches_mean_of_micro_batch_means(n, t_, seed, data):
    # reference loop: the update is Σ_k mean_k / K; it equals token_mean iff every micro-batch has the same count
    loss, mask, _ = _random_batch(n, t_, seed)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3), label="cuts"))
    bounds = list(itertools.pairwise([0, *cuts, n]))
    total = sum(token_mean_local(loss[a:b], mask[a:b], grad_accum=len(bounds)) for a, b in bounds)
    ref = 0.0
    for a, b in bounds:
        count = int(mask[a:b].sum())
        ref += (float(loss[a:b][mask[a:b]].sum()) / count if count else 0.0) / len(bounds)
    torch.testing.assert_close(total, t(ref))
