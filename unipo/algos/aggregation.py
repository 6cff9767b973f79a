"""Loss aggregation rules (ALGORITHMS.md §3.1).

Signature of the family: ``fn(per_token_loss [N, T], mask [N, T], *, num_tokens=None, num_seqs=None, **hparams)
-> scalar``.

``num_tokens`` and ``num_seqs`` are the GLOBAL counts of the optimisation batch (summed over every micro-batch
and data-parallel rank before the backward pass). With them, summing the results of the micro-batches gives the
full-batch loss and gradient, whatever the split. When None, this call's own counts are used, which is right only
when the call sees the whole batch.

Counting conventions (the trainer must count global totals the same way):
- num_tokens = Σ mask.
- num_seqs = number of rows with at least one valid token, ``mask.any(-1).sum()`` (verl excludes fully masked
  rows; TRL's ``.mean()`` would count them).

Counts below 1 are raised to 1, so an empty (micro-)batch gives 0 rather than NaN. Masked tokens are dropped
with ``torch.where``, so a NaN/inf loss on a padded token gives neither a NaN value nor a gradient.
"""

from __future__ import annotations

import torch

from unipo.algos.ops import masked_sum
from unipo.algos.registry import register

Count = float | int | torch.Tensor | None


def _denominator(count: Count, local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    total = local if count is None else torch.as_tensor(count, device=like.device)
    return total.to(like.dtype).clamp(min=1)  # counts are integers; an empty batch gives loss 0, not NaN


def _check(per_token_loss: torch.Tensor, mask: torch.Tensor) -> None:
    if per_token_loss.dim() != 2 or per_token_loss.shape != mask.shape:
        raise ValueError(
            f"per_token_loss and mask must both be [N, T]; got {tuple(per_token_loss.shape)}, {tuple(mask.shape)}"
        )


def _local_num_seqs(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool().any(-1).sum()


@register(
    "aggregation",
    "token_mean",
    paper="Yu et al. 2025, DAPO: An Open-Source LLM RL System at Scale, arXiv:2503.14476",
    tag="checked: TRL, verl",
)
def token_mean(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
) -> torch.Tensor:
    """Token-level mean over the whole batch (Yu et al. 2025, DAPO, arXiv:2503.14476).

    L = Σ_{i,t} m·ℓ / num_tokens. Every token weighs the same, whatever its sequence's length.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: global Σ mask over the optimisation batch; None uses this call's Σ mask.
        num_seqs: unused; accepted for the family signature.

    Returns:
        Scalar loss.
    """
    _check(per_token_loss, mask)
    return masked_sum(per_token_loss, mask) / _denominator(num_tokens, mask.sum(), per_token_loss)


@register(
    "aggregation",
    "token_sum",
    paper="Sheng et al. 2024, HybridFlow (verl), arXiv:2409.19256",
    tag="checked: verl",
)
def token_sum(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
) -> torch.Tensor:
    """Plain sum over valid tokens (verl ``token-sum``; Sheng et al. 2024, HybridFlow, arXiv:2409.19256).

    L = Σ_{i,t} m·ℓ. Its scale grows with the batch size.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: unused; accepted for the family signature.
        num_seqs: unused; accepted for the family signature.

    Returns:
        Scalar loss.
    """
    _check(per_token_loss, mask)
    return masked_sum(per_token_loss, mask)


@register(
    "aggregation",
    "seq_mean_token_mean",
    paper="Shao et al. 2024, DeepSeekMath (GRPO), arXiv:2402.03300",
    tag="checked: TRL, verl",
)
def seq_mean_token_mean(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (Shao et al. 2024, GRPO, arXiv:2402.03300, eq. 3).

    L = (1/num_seqs)·Σ_i (1/|y_i|)·Σ_t m·ℓ; a row with |y_i| = 0 contributes 0.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: unused; accepted for the family signature.
        num_seqs: global number of sequences with at least one valid token; None counts this call's rows.

    Returns:
        Scalar loss.

    Note:
        Each token weighs 1/|y_i|, the length bias that Dr. GRPO and DAPO remove.
    """
    _check(per_token_loss, mask)
    lengths = mask.to(per_token_loss.dtype).sum(-1).clamp(min=1)
    per_seq = masked_sum(per_token_loss, mask, dim=-1) / lengths  # (N, T) -> (N,)
    return per_seq.sum() / _denominator(num_seqs, _local_num_seqs(mask), per_token_loss)


@register(
    "aggregation",
    "seq_mean_token_sum",
    paper="Sheng et al. 2024, HybridFlow (verl), arXiv:2409.19256",
    tag="checked: verl",
)
def seq_mean_token_sum(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
) -> torch.Tensor:
    """Mean over sequences of each sequence's token sum (verl ``seq-mean-token-sum``; arXiv:2409.19256).

    L = (1/num_seqs)·Σ_{i,t} m·ℓ.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: unused; accepted for the family signature.
        num_seqs: global number of sequences with at least one valid token; None counts this call's rows.

    Returns:
        Scalar loss.
    """
    _check(per_token_loss, mask)
    return masked_sum(per_token_loss, mask) / _denominator(num_seqs, _local_num_seqs(mask), per_token_loss)


@register(
    "aggregation",
    "seq_sum_constant",
    paper="Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO), arXiv:2503.20783",
    tag="checked: TRL, verl",
)
def seq_sum_constant(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    constant: float | None = None,
) -> torch.Tensor:
    """Token sum over a constant normaliser (Liu et al. 2025, Dr. GRPO, arXiv:2503.20783).

    L = Σ_{i,t} m·ℓ / (num_seqs·constant). No 1/|y_i| and no 1/Σm, so neither length nor batch token count
    reweights tokens (TRL ``loss_type="dr_grpo"``; verl ``seq-mean-token-sum-norm``).

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: unused; accepted for the family signature.
        num_seqs: global number of sequences with at least one valid token; None counts this call's rows.
        constant: L_max. None uses T = per_token_loss.shape[1]; the trainer pins it to ``max_new_tokens`` so
            that a micro-batch padded to its own length does not change the loss.

    Returns:
        Scalar loss.
    """
    _check(per_token_loss, mask)
    length = float(per_token_loss.shape[1]) if constant is None else constant
    if length <= 0:
        raise ValueError(f"constant must be > 0; got {length}")
    denom = _denominator(num_seqs, _local_num_seqs(mask), per_token_loss) * length
    return masked_sum(per_token_loss, mask) / denom


@register(
    "aggregation",
    "token_mean_local",
    paper="von Werra et al. 2020, TRL (GRPOTrainer loss_type='bnpo'), https://github.com/huggingface/trl",
    tag="checked: TRL",
)
def token_mean_local(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    grad_accum: int = 1,
) -> torch.Tensor:
    """Per-micro-batch token mean ÷ accumulation steps (TRL ``loss_type="bnpo"``, https://github.com/huggingface/trl).

    L_k = (Σ_{i,t∈k} m·ℓ / Σ_{i,t∈k} m) / grad_accum for each micro-batch k; the update sums the L_k.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: ignored on purpose: the normaliser is this call's own Σ mask.
        num_seqs: unused; accepted for the family signature.
        grad_accum: number of micro-batches whose losses are summed into one update (accumulation steps, times
            data-parallel ranks when their gradients are summed rather than averaged).

    Returns:
        Scalar loss.

    Note:
        Not invariant to the split (ALGORITHMS.md §13 A1): a token in a short micro-batch weighs more than one in
        a long micro-batch. It equals ``token_mean`` only when every micro-batch holds the same number of tokens.
        Kept for parity with TRL; prefer ``token_mean`` with global counts.
    """
    _check(per_token_loss, mask)
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1; got {grad_accum}")
    return masked_sum(per_token_loss, mask) / _denominator(None, mask.sum(), per_token_loss) / grad_accum


@register(
    "aggregation",
    "seq_len_scaled",
    paper="LUSPO: Length-Unbiased Sequence Policy Optimization, 2026, arXiv:2602.05261",
    tag="checked: TRL",
)
def seq_len_scaled(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
) -> torch.Tensor:
    """Length-scaled sequence mean (LUSPO, arXiv:2602.05261; TRL ``loss_type="luspo"``).

    L = (1/num_seqs)·Σ_i |y_i|·ℓ_i, where ℓ_i = (1/|y_i|)·Σ_t m·ℓ_{i,t} is the sequence loss carried by the
    per-token form (GSPO puts ℓ_i on every token). Algebraically this is ``seq_mean_token_sum``; it has its own id
    so that the LUSPO recipe names the paper's rule.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: unused; accepted for the family signature.
        num_seqs: global number of sequences with at least one valid token; None counts this call's rows.

    Returns:
        Scalar loss.
    """
    _check(per_token_loss, mask)
    lengths = mask.to(per_token_loss.dtype).sum(-1)
    per_seq = masked_sum(per_token_loss, mask, dim=-1) / lengths.clamp(min=1)  # ℓ_i: (N, T) -> (N,)
    return (lengths * per_seq).sum() / _denominator(num_seqs, _local_num_seqs(mask), per_token_loss)


@register(
    "aggregation",
    "const_norm",
    paper="Chen et al. 2025, NFT: Bridging Supervised Learning and RL in Math Reasoning, arXiv:2505.18116",
    tag="checked: NFT code",
)
def const_norm(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    divisor: float = 1000.0,
) -> torch.Tensor:
    """Token sum over a fixed constant (Chen et al. 2025, NFT, arXiv:2505.18116; official NFT code, C = 1000).

    L = Σ_{i,t} m·ℓ / C. No count enters the normaliser, so any micro-batch split sums to the same loss; like
    ``token_sum`` its scale grows with the batch.

    Args:
        per_token_loss: [N, T].
        mask: [N, T] loss mask.
        num_tokens: unused; accepted for the family signature.
        num_seqs: unused; accepted for the family signature.
        divisor: C > 0 (NFT 1000). Not named ``constant``: the trainer pins an aggregation's ``constant`` to
            ``max_new_tokens`` for ``seq_sum_constant``.

    Returns:
        Scalar loss.
    """
    _check(per_token_loss, mask)
    if divisor <= 0:
        raise ValueError(f"divisor must be > 0; got {divisor}")
    return masked_sum(per_token_loss, mask) / divisor
