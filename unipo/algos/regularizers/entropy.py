"""Entropy regularizers (ALGORITHMS.md §4.2): a bonus, its adaptive and smoothed forms, and GTPO's entropy filter."""

from __future__ import annotations

import torch

from unipo.algos.ops import masked_mean
from unipo.algos.registry import Controlled, register, warn_reconstruction
from unipo.algos.regularizers._common import Metrics, check_shapes, masked
from unipo.algos.token_weights import (
    require_inputs,
)


@register(
    "regularizer",
    "entropy_bonus",
    paper="Schulman et al. 2017, Proximal Policy Optimization Algorithms, arXiv:1707.06347, eq. 9",
    tag="checked: TRL",
)
def entropy_bonus(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    coef: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Entropy bonus (Schulman et al. 2017, PPO, arXiv:1707.06347, eq. 9; TRL ``entropy_coef``).

    term_t = −c_H·H_t, so the aggregated loss gets −c_H·H̄ with the policy term's normaliser.

    Args:
        logp: [N, T] log π_θ (unused; family signature).
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ, with its gradient.
        coef: c_H (catalogue default 0; HPT uses 0.001).

    Returns:
        (term [N, T], {"entropy/token": H}).
    """
    valid = check_shapes(logp, old_logp, mask)
    require_inputs("regularizer", "entropy_bonus", entropy=entropy)
    return masked(-coef * entropy, valid), {"entropy/token": entropy.detach()}


@register(
    "regularizer",
    "adaptive_entropy",
    paper="He et al. 2025, Skywork Open Reasoner 1 Technical Report, arXiv:2505.22312",
    tag="checked: TRL",
    state=Controlled("coef", "adaptive_entropy_coef", "entropy/token",
                     (("target", "target"), ("delta", "delta"), ("min", "min"), ("max", "max"))),
)  # fmt: skip
def adaptive_entropy(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    observed_entropy: float | torch.Tensor | None = None,
    coef: float = 0.0,
    target: float = 0.2,
    delta: float = 0.005,
    min: float = 0.0,  # c_min and c_max, named as in adaptive_entropy_coef (they shadow the builtins here)
    max: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """Adaptive entropy bonus (He et al. 2025, Skywork-OR1, arXiv:2505.22312; TRL ``use_adaptive_entropy``).

    term_t = −c_H·1[H_obs ≤ H*]·H_t: the bonus acts only while the observed entropy is at or below the target.
    After each optimiser step the trainer sets c_H ← ``adaptive_entropy_coef(c_H, H_obs, ...)``.

    Args:
        logp: [N, T] log π_θ (unused; family signature).
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ, with its gradient.
        observed_entropy: global mean entropy measured at the end of the previous optimiser step (TRL gates on
            it); None measures the detached mean over this call's valid tokens.
        coef: the current c_H (trainer state; the recipe gives its initial value, TRL 0).
        target: H* (TRL 0.2 nats; set it near the entropy seen early in training).
        delta: Δ, read by ``adaptive_entropy_coef`` (TRL 0.005).
        min: c_min, read by ``adaptive_entropy_coef`` (TRL 0).
        max: c_max, read by ``adaptive_entropy_coef`` (TRL 1).

    Returns:
        (term [N, T], {"entropy/token": H, "entropy/coef_applied": the gated c_H on every token}).
    """
    valid = check_shapes(logp, old_logp, mask)
    require_inputs("regularizer", "adaptive_entropy", entropy=entropy)
    h_obs = masked_mean(entropy.detach(), valid) if observed_entropy is None else observed_entropy
    applied = torch.where(torch.as_tensor(h_obs, device=entropy.device) <= target, coef, 0.0).to(entropy.dtype)
    metrics = {"entropy/token": entropy.detach(), "entropy/coef_applied": applied.expand(entropy.shape)}
    return masked(-applied * entropy, valid), metrics


@register(
    "regularizer",
    "epo_smooth_recon",
    paper="Xu et al. 2025, EPO: Entropy-regularized Policy Optimization for LLM Agents, arXiv:2509.22576",
    tag="reconstructed",
    state=Controlled("entropy_hist", "epo_entropy_hist", "entropy/token", (("momentum", "hist_momentum"),)),
)
def epo_smooth_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    entropy_hist: float | None = None,
    progress: float = 0.0,
    coef_start: float = 1e-2,
    coef_end: float = 1e-3,
    smooth_coef: float = 1.0,
    band: float = 0.1,
    hist_momentum: float = 0.9,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of EPO (Xu et al. 2025, arXiv:2509.22576) from its abstract; not the published rule.

    L += −λ_k·H̄ + κ·max(0, |H̄ − H̄_hist| − δ)², λ_k = λ_0 + (λ_1 − λ_0)·progress. term_t = −λ_k·H_t + P on every
    valid token, P being the band penalty of this call's H̄, so any mean-type aggregation gives exactly the formula.

    Args:
        logp: [N, T] log π_θ (unused; family signature).
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ, with its gradient.
        entropy_hist: H̄_hist, the running mean of past steps' entropy (trainer state, ``epo_entropy_hist``);
            None (first step) turns the band penalty off.
        progress: fraction of training done, in [0, 1] (the trainer passes it).
        coef_start: λ_0, early entropy weight (reconstructed 1e-2).
        coef_end: λ_1, late entropy weight (reconstructed 1e-3).
        smooth_coef: κ (reconstructed 1).
        band: δ, the tolerated |H̄ − H̄_hist| in nats (reconstructed 0.1).
        hist_momentum: read by ``epo_entropy_hist`` (reconstructed 0.9).

    Returns:
        (term [N, T], {"entropy/token": H, "epo/band_penalty": P on every token}).
    """
    warn_reconstruction("epo_smooth_recon", "EPO (arXiv:2509.22576)")
    valid = check_shapes(logp, old_logp, mask)
    require_inputs("regularizer", "epo_smooth_recon", entropy=entropy)
    lam = coef_start + (coef_end - coef_start) * min(max(float(progress), 0.0), 1.0)
    penalty = torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    if entropy_hist is not None:
        excess = (masked_mean(entropy, valid) - entropy_hist).abs() - band
        penalty = smooth_coef * torch.clamp(excess, min=0.0) ** 2
    metrics = {"entropy/token": entropy.detach(), "epo/band_penalty": penalty.detach().expand(entropy.shape)}
    return masked(-lam * entropy + penalty, valid), metrics


@register(
    "regularizer",
    "gtpo_entropy_filter",
    paper="Simoni et al. 2025, GTPO: Trajectory-Based Policy Optimization in LLMs, arXiv:2508.03772",
    tag="rule checked: official code gtpo_training.py (ALGORITHMS.md §3.2); written as a loss term: ours",
)
def gtpo_entropy_filter(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    max_entropy: float = 0.7,
    coef: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """GTPO's completion entropy filter (Simoni et al. 2025, arXiv:2508.03772), as a correction term.

    A′_i = 0 if H̄_i > max_entropy, else A_i − coef·H̄_i, with H̄_i the mean token entropy of completion i (detached).
    term_t = (A_i − A′_i)·ρ_t with ρ = exp(log π_θ − sg(log π_θ)) (value 1): added to an on-policy surrogate −A·ρ the
    sum is −A′·ρ, whose gradient is −A′·∇log π_θ; token weights (GTPO's conflict δ) multiply the sum.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        advantages: [N] (or [N, T], reduced to each row's masked mean) advantages A of the surrogate.
        entropy: [N, T] token entropy of π_θ.
        max_entropy: completions with H̄ above this get A′ = 0 (official 0.7).
        coef: the entropy shift of kept completions (official 0.1).

    Returns:
        (term [N, T], {"gtpo/filtered": 1 on the tokens of completions whose advantage was zeroed}).
    """
    valid = check_shapes(logp, old_logp, mask)
    require_inputs("regularizer", "gtpo_entropy_filter", advantages=advantages, entropy=entropy)
    adv = advantages.detach()
    if adv.dim() == 2:
        adv = masked_mean(adv, mask, dim=-1)  # (N, T) -> (N,)
    h = masked_mean(masked(entropy.detach(), valid), mask, dim=-1)  # (N,)
    filtered = h > max_entropy
    shifted = torch.where(filtered, torch.zeros_like(adv), adv - coef * h)
    lp = masked(logp, valid)
    ratio = torch.exp(lp - lp.detach())
    term = (adv - shifted)[:, None] * ratio
    return masked(term, valid), {"gtpo/filtered": filtered[:, None].float().expand_as(logp)}
