"""Per-token KL estimators (ALGORITHMS.md §4.1).

Signature of the family: ``fn(logp, ref_logp, *, <keyword tensors>=None) -> [N, T]``, with δ = logp − ref_logp on
the sampled tokens. On samples y ~ π_θ they estimate KL(π_θ‖π_ref). Source: J. Schulman 2020, "Approximating KL
Divergence", http://joschu.net/blog/kl-approx.html; the guards follow verl ``kl_penalty``. Extra inputs are
keyword tensors that the trainer supplies only when the signature asks: ``old_logp`` (``kl_bias_corrected``),
``logits`` / ``ref_logits`` (``kl_full``).

``ref_logp`` is a constant here (detached), so a caller that passes the same tensor twice gets a zero gradient
rather than a silently doubled one. The estimators do not mask: the trainer aggregates them with the loss mask.

The adaptive coefficient controller of Ziegler et al. (``kl_adaptive_ctrl``) updates β between optimiser steps, so
it lives in ``unipo.algos.controllers`` (kind ``controller``).
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register

_PAPER = "Schulman 2020, Approximating KL Divergence, http://joschu.net/blog/kl-approx.html"


def _delta(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape; got {tuple(logp.shape)}, {tuple(ref_logp.shape)}"
        )
    return logp - ref_logp.detach()


@register("kl", "k1", paper=_PAPER, tag="checked: verl")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 KL estimator (Schulman 2020, http://joschu.net/blog/kl-approx.html; verl "kl").

    k1 = δ = logp − ref_logp. Unbiased for KL(π_θ‖π_ref) under y ~ π_θ, can be negative, high variance.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    return _delta(logp, ref_logp)


@register("kl", "k2", paper=_PAPER, tag="checked: verl")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 KL estimator (Schulman 2020, http://joschu.net/blog/kl-approx.html; verl "mse").

    k2 = ½·δ². Non-negative and biased in value; its pathwise gradient δ·∇logp has expectation ∇KL on-policy.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    return 0.5 * _delta(logp, ref_logp) ** 2


@register("kl", "k3", paper=_PAPER, tag="checked: TRL, verl")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 KL estimator (Schulman 2020, http://joschu.net/blog/kl-approx.html; verl "low_var_kl", TRL GRPO).

    k3 = exp(−δ) + δ − 1 = π_ref/π_θ − log(π_ref/π_θ) − 1, with δ clamped to [−20, 20] and the result to
    [−10, 10] (verl). Non-negative, unbiased in value, low variance.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    delta = torch.clamp(_delta(logp, ref_logp), -20.0, 20.0)
    return torch.clamp(torch.exp(-delta) + delta - 1.0, -10.0, 10.0)


@register(
    "kl",
    "kl_abs",
    paper="Cui et al. 2025, The Entropy Mechanism of RL for Reasoning LMs, arXiv:2505.22617",
    tag="checked: verl",
)
def kl_abs(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Absolute log-ratio |δ| (verl "abs"; the KL-Cov penalty of Cui et al. 2025, arXiv:2505.22617, eq. 11).

    kl_abs = |logp − ref_logp|. Not an unbiased KL estimate; used as a proximity penalty (KL-Cov, ``kl_cov``).

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref (or π_old) of the same tokens.

    Returns:
        [N, T] per-token value ≥ 0.
    """
    return _delta(logp, ref_logp).abs()


@register("kl", "kl_full", paper=_PAPER, tag="memory")
def kl_full(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact per-position KL over the vocabulary (Schulman 2020, http://joschu.net/blog/kl-approx.html).

    KL_t = Σ_v π_θ(v∣s_t)·(log π_θ(v∣s_t) − log π_ref(v∣s_t)), from full logits; no sampling noise.

    Args:
        logp: [N, T] sampled-token log-probs (only their shape is checked; the value comes from the logits).
        ref_logp: [N, T] reference log-probs of the same tokens (shape check only).
        logits: [N, T, V] policy logits at the completion positions, already divided by the sampling
            temperature exactly as for ``logp``. The trainer must supply them: this costs an [N, T, V] tensor that
            the sampled-token estimators never need (verl does not implement it).
        ref_logits: [N, T, V] reference logits, same convention (detached here).

    Returns:
        [N, T] exact KL(π_θ‖π_ref) per position, ≥ 0, differentiable through ``logits``.
    """
    if logits is None or ref_logits is None:
        raise ValueError("kl 'kl_full' needs the keyword tensors logits and ref_logits ([N, T, V])")
    if logits.shape != ref_logits.shape or logits.shape[:-1] != logp.shape or logp.shape != ref_logp.shape:
        raise ValueError(
            f"need logits and ref_logits [N, T, V] over logp, ref_logp [N, T]; got {tuple(logits.shape)}, "
            f"{tuple(ref_logits.shape)}, {tuple(logp.shape)}, {tuple(ref_logp.shape)}"
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 log-softmax differences are too coarse
    log_p = torch.log_softmax(logits.to(dtype), dim=-1)
    log_q = torch.log_softmax(ref_logits.detach().to(dtype), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)  # (N, T, V) -> (N, T)


def _straight_through(value: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    surrogate = k2(logp, ref_logp)
    return surrogate - surrogate.detach() + value.detach()


@register("kl", "k1+", paper=_PAPER, tag="checked: verl")  # verl's name; ALGORITHMS.md calls it k1_st
def k1_st(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Straight-through k1 (verl "k1+"; estimators of Schulman 2020, http://joschu.net/blog/kl-approx.html).

    k1_st = k2 − sg(k2) + sg(k1): the value of k1 (unbiased), the gradient of k2 (δ·∇logp, whose expectation is
    ∇KL on-policy).

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    return _straight_through(k1(logp, ref_logp), logp, ref_logp)


@register("kl", "k3+", paper=_PAPER, tag="checked: verl")  # verl's name; ALGORITHMS.md calls it k3_st
def k3_st(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Straight-through k3 (verl "k3+"; estimators of Schulman 2020, http://joschu.net/blog/kl-approx.html).

    k3_st = k2 − sg(k2) + sg(k3): the value of k3 (unbiased, ≥ 0, clamped as ``k3``), the gradient of k2.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    return _straight_through(k3(logp, ref_logp), logp, ref_logp)


@register(
    "kl",
    "kl_bias_corrected",
    paper="DeepSeek-AI 2025, DeepSeek-V3.2, arXiv:2512.02556",
    tag="checked: TRL",
)
def kl_bias_corrected(
    logp: torch.Tensor, ref_logp: torch.Tensor, *, old_logp: torch.Tensor | None = None
) -> torch.Tensor:
    """Importance-corrected k3 (DeepSeek-AI 2025, DeepSeek-V3.2, arXiv:2512.02556; TRL ``use_bias_correction_kl``).

    KL_t = ρ_t·k3_t with ρ_t = π_θ/π_old kept in the graph (TRL), so samples from π_old estimate KL(π_θ‖π_ref)
    without bias; its gradient is ρ·δ·∇logp (the importance-weighted k2 gradient).

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.
        old_logp: [N, T] log π_old of the tokens (constant); None means on-policy (ρ = 1 in value, as TRL does).

    Returns:
        [N, T] per-token estimate.
    """
    old = logp.detach() if old_logp is None else old_logp.detach()
    if old.shape != logp.shape:
        raise ValueError(f"old_logp must have logp's shape {tuple(logp.shape)}; got {tuple(old.shape)}")
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    return ratio * k3(logp, ref_logp)
