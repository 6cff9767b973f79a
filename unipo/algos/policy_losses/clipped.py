"""Token-level clipped surrogates: ppo_clip, clip_higher, dual_clip, ratio_cap_delta (ALGORITHMS.md §2.1)."""

from __future__ import annotations

import torch

from unipo.algos.policy_losses._common import Metrics, check_clip, clipped_surrogate, log_ratio, token_advantages
from unipo.algos.registry import register


@register("policy_loss", "ppo_clip", paper="Schulman et al. 2017, PPO, arXiv:1707.06347", tag="checked: TRL, verl")
def ppo_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate, per token (Schulman et al. 2017, arXiv:1707.06347, eq. 7).

    ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A). W = ρ·1[not clipped], where clipped means
    (A > 0 ∧ ρ > 1+ε_high) or (A < 0 ∧ ρ < 1−ε_low).

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask (1 = token counts).
        clip_low: ε_low.
        clip_high: ε_high. clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476; 0.28).

    Returns:
        (per-token loss [N, T], metrics {"clip/frac", "clip/frac_low", "clip/frac_high", "ratio/mean"}).
    """
    check_clip(clip_low, clip_high)
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    return clipped_surrogate(ratio, token_advantages(advantages, logp), 1.0 - clip_low, 1.0 + clip_high)


@register(
    "policy_loss",
    "clip_higher",
    paper="Yu et al. 2025, DAPO: An Open-Source LLM RL System at Scale (clip-higher), arXiv:2503.14476",
    tag="checked: verl docs, TRL",
)
def clip_higher(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> tuple[torch.Tensor, Metrics]:
    """DAPO decoupled clip, "clip-higher" (Yu et al. 2025, arXiv:2503.14476, eq. 10).

    ``ppo_clip`` with ε_high > ε_low: ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A). W = ρ·1[not clipped].
    The ``dapo`` recipe pairs it with ``token_mean`` aggregation.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        clip_low: ε_low (DAPO 0.2).
        clip_high: ε_high (DAPO 0.28).

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip``).
    """
    return ppo_clip(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)


@register(
    "policy_loss",
    "dual_clip",
    paper="Ye et al. 2020, Mastering Complex Control in MOBA Games with Deep RL (dual-clip PPO), arXiv:1912.09729",
    tag="checked: verl",
)
def dual_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 3.0,
) -> tuple[torch.Tensor, Metrics]:
    """Dual-clip PPO (Ye et al. 2020, arXiv:1912.09729).

    ℓ = min(ℓ_ppo, −c·A) if A < 0, else ℓ_ppo. W = ρ·1[not clipped]·1[not (A < 0 ∧ ρ > c)]: for A < 0 and ρ > c
    the loss is the constant −c·A, which bounds the step on a very off-policy negative token.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        clip_low: ε_low.
        clip_high: ε_high.
        dual_clip: c, the lower bound on the ratio's effect for negative advantages (verl clip_ratio_c); must be > 1.

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "clip/frac_dual").
    """
    if dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1; got {dual_clip}")
    loss_ppo, metrics = ppo_clip(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    adv = token_advantages(advantages, logp)
    bound = -dual_clip * adv
    negative = adv < 0
    loss = torch.where(negative, torch.minimum(loss_ppo, bound), loss_ppo)
    dual = negative & (loss_ppo.detach() > bound)
    metrics["clip/frac_dual"] = dual.to(loss.dtype)
    metrics["clip/frac"] = torch.maximum(metrics["clip/frac"], metrics["clip/frac_dual"])
    return loss, metrics


@register(
    "policy_loss",
    "ratio_cap_delta",
    paper="Prime Intellect 2025, INTELLECT-2: A Reasoning Model Trained Through Globally Decentralized RL "
    "(two-sided clipping), arXiv:2505.07291",
    tag="checked: TRL",
)
def ratio_cap_delta(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    delta: float = 4.0,
) -> tuple[torch.Tensor, Metrics]:
    """INTELLECT-2 two-sided clipping, as TRL's ``delta`` (Prime Intellect 2025, arXiv:2505.07291).

    ℓ = −min(min(ρ, δ)·A, clip(ρ, 1−ε_low, 1+ε_high)·A). W = ρ·1[not clipped]·1[not (A < 0 ∧ ρ > δ)]: the cap
    only binds on negative-advantage tokens, where it acts like ``dual_clip`` with c = δ.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        clip_low: ε_low.
        clip_high: ε_high.
        delta: δ, the cap on the unclipped ratio; must be > 1 + clip_high. INTELLECT-2 used 4 [memory]; TRL leaves
            it off by default, so 4 is the default of this id.

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "clip/frac_cap" (A < 0 ∧ ρ > δ)).
    """
    check_clip(clip_low, clip_high)
    if delta <= 1.0 + clip_high:
        raise ValueError(f"delta must be > 1 + clip_high = {1.0 + clip_high}; got {delta}")
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    adv = token_advantages(advantages, logp)
    unclipped = -adv * torch.clamp(ratio, max=delta)
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    _, metrics = clipped_surrogate(ratio.detach(), adv, 1.0 - clip_low, 1.0 + clip_high)
    cap = (adv < 0) & (ratio.detach() > delta)
    metrics["clip/frac_cap"] = cap.to(loss.dtype)
    metrics["clip/frac"] = torch.maximum(metrics["clip/frac"], metrics["clip/frac_cap"])
    return loss, metrics
