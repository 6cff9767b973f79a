"""Adaptive normalisation and multi-reward advantages (ALGORITHMS.md §1.2): ``gdpo`` and ``bnpo``.

Both take rewards [N, K], one column per reward function (a 1-D [N] tensor is read as K = 1), and work on all K
columns at once. A NaN entry is left out of its column's statistics and contributes 0.
"""

from __future__ import annotations

import torch

from unipo.algos.advantages._group import (
    check_choice,
    check_multi_rewards,
    check_range,
    group_index,
    group_moments,
    safe_div,
    whiten,
)
from unipo.algos.registry import register

_DECOMP_REDUCE = ("mean", "sum")


@register(
    "advantage",
    "gdpo",
    paper="GDPO: Group reward-Decoupled Normalization Policy Optimization (NVlabs 2026, arXiv:2601.05242 as cited "
    "by verl)",
    tag="checked: official README + reimplementations; TRL normalize_then_sum checked: TRL",
    facts={"group_centred"},
)
def gdpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reward_weights: torch.Tensor | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Per-reward group normalisation, weighted sum, batch normalisation (GDPO, arXiv:2601.05242).

    Ã_{i,k} = (r_{i,k} − mean_G r_k)/(std_G r_k + eps); A_i = Σ_k w_k·Ã_{i,k}; Â_i = (A_i − mean_B A)/(std_B A + eps).

    Args:
        rewards: [N, K] float rewards, one column per reward function; a NaN entry is left out of its column and
            contributes Ã = 0 (TRL nansum); a row whose K rewards are all NaN gets Â = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        reward_weights: [K] weights w_k (default: all 1).
        eps: ε in both normalisers (TRL: 1e-4; verl: 1e-6).

    Returns:
        [N] advantages. Σ_group Â = 0 (each column's Ã sums to 0 per group, so mean_B A = 0).

    Note:
        Normalising before summing keeps distinct reward combinations apart (§13 V3); ``grpo`` on Σ_k w_k·r_k
        does not. The batch std is over valid sequences; verl's version whitens over valid tokens instead.
    """
    check_range("eps", eps, 0.0)
    rewards = check_multi_rewards(rewards, group_ids)
    k = rewards.shape[1]
    if reward_weights is None:
        weights = rewards.new_ones(k)
    elif reward_weights.shape != (k,):
        raise ValueError(f"reward_weights must be [K] = [{k}]; got {tuple(reward_weights.shape)}")
    else:
        weights = reward_weights.detach().to(device=rewards.device, dtype=rewards.dtype)
    inverse, n_groups = group_index(group_ids)
    valid, _, mean, std = group_moments(rewards, inverse, n_groups)
    centred = torch.where(valid, rewards - mean[inverse], torch.zeros_like(rewards))
    summed = (safe_div(centred, std[inverse] + eps) * weights).sum(1)  # (N, K) -> (N,)
    return whiten(summed, valid.any(1), eps=eps)


def _beta_params(p: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Method-of-moments Beta fit over the group means p [G, K] of each column, floored at 1 (BNPO code).
    n = present.to(p.dtype).sum(0)  # (K,)
    mu = (p * present).sum(0) / n.clamp(min=1)
    var = (((p - mu) ** 2) * present).sum(0) / (n - 1).clamp(min=1)
    k = mu * (1 - mu) / torch.where(var > 0, var, torch.ones_like(var)) - 1
    alpha = torch.clamp(1 + k * mu / 3, min=1.0)
    beta = torch.clamp(1 + k * (1 - mu) / 3, min=1.0)
    # Fewer than two groups (the official code then uses mean 0, var 1, which gives α = β = 1) or var = 0
    # (the official code divides by zero): fall back to α = β = 1, i.e. r − p.
    degenerate = (n < 2) | (var <= 0)
    one = torch.ones_like(alpha)
    return torch.where(degenerate, one, alpha), torch.where(degenerate, one, beta)


def _inverse_beta_pdf(p: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, cap: float) -> torch.Tensor:
    # 1 / Beta_pdf(p; α, β), capped. xlogy keeps 0·log 0 = 0, so α = 1 or β = 1 is finite at p ∈ {0, 1}.
    log_b = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    log_pdf = torch.xlogy(alpha - 1, p) + torch.xlogy(beta - 1, 1 - p) - log_b
    return torch.exp(-log_pdf).clamp(max=cap)


@register(
    "advantage",
    "bnpo",
    paper="Xiao et al. 2025, BNPO: Beta Normalization Policy Optimization, arXiv:2506.02864",
    tag="checked: official code bnpo_ray_trainer.py",
)
def bnpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
    max_weight: float = 1e6,
    decomp_reduce: str = "mean",
) -> torch.Tensor:
    """Beta-normalised advantage (Xiao et al. 2025, BNPO, arXiv:2506.02864; official code).

    r ← (r − r_min)/(r_max − r_min); p_q = mean_G r; Beta(a, b) fitted to the batch of p_q by moments,
    α = max(1, 1 + a/3), β = max(1, 1 + b/3); A_i = (r_i − p_q)·min(1/Beta_pdf(p_q; α, β), max_weight).

    Args:
        rewards: [N] or [N, K] float rewards; several columns are BNPO's "advantage decomposition": the estimator
            runs per column and the K results are reduced by ``decomp_reduce``. NaN entries are left out, A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        reward_min: r_min of the affine map to [0, 1] (official ``min_value``, 0). Rewards outside
            [reward_min, reward_max] are clipped into it (the official code asserts instead).
        reward_max: r_max of the same map (official ``max_value``, 1).
        max_weight: cap on 1/pdf (official: 1e6).
        decomp_reduce: "mean" or "sum" over the K columns. ALGORITHMS.md marks the rule unknown; "mean" is what
            the official trainer does (it sums the per-component advantages and divides by their count).

    Returns:
        [N] advantages.

    Note:
        α = β = 1 gives A = r − p_q (REINFORCE with the group-mean baseline); α = β = 3/2 gives
        (π/8)·(r − p_q)/√(p_q(1 − p_q)) = (π/8)·``grpo`` with population std for 0/1 rewards (§13 V2).
        A singleton group gets A = 0; the official code uses p = 0 for it (A = r/pdf(0)). When the p_q have
        zero variance, or there is one group, α = β = 1 (the official code divides by zero in the first case).
        Not TRL's ``loss_type="bnpo"``, which is an aggregation.
    """
    check_choice("decomp_reduce", decomp_reduce, _DECOMP_REDUCE)
    if not reward_max > reward_min:
        raise ValueError(f"reward_max={reward_max!r} must be greater than reward_min={reward_min!r}")
    check_range("max_weight", max_weight, 0.0, open_low=True)
    rewards = check_multi_rewards(rewards, group_ids)
    scaled = ((rewards - reward_min) / (reward_max - reward_min)).clamp(0.0, 1.0)  # NaN stays NaN
    inverse, n_groups = group_index(group_ids)
    valid, count, p, _ = group_moments(scaled, inverse, n_groups)  # p: (G, K)
    alpha, beta = _beta_params(p, count > 0)
    weight = _inverse_beta_pdf(p, alpha, beta, max_weight)  # (G, K)
    adv = torch.where(valid & (count[inverse] > 1), (scaled - p[inverse]) * weight[inverse], torch.zeros_like(scaled))
    return adv.mean(1) if decomp_reduce == "mean" else adv.sum(1)
