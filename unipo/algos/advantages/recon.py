"""Reconstructed advantage estimators (ALGORITHMS.md §1.2, tag [reconstructed], rule R2).

Each formula here was made up to fit a paper's abstract; none is the paper's method. Each is registered only as
``<id>_recon``, its docstring says so first, and it logs a one-time warning on its first call.
Rewards are [N]; NaN → left out, A = 0.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.advantages._group import (
    STD_MODES,
    check_choice,
    check_range,
    check_rewards,
    group_index,
    group_moments,
    group_sum,
    safe_div,
    tie_counts,
)
from unipo.algos.registry import register, warn_reconstruction

_G2RPO = "OpenVLThinkerV2 / G²RPO (Gaussian GRPO)"
_A_GRAE = "A-GRAE (asymmetric group-relative advantage estimation; implicit advantage symmetry in GRPO)"
_COPO = "COPO: Consistency-Aware Policy Optimization"


@register("advantage", "g2rpo_recon", paper=f"{_G2RPO}, 2025 (seeds_000_001.md 001-53)", tag="reconstructed")
def g2rpo_recon(rewards: torch.Tensor, group_ids: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction of G²RPO (OpenVLThinkerV2) from its abstract; not the published rule.

    A_i = Φ⁻¹((rank_i − ½)/G) within each group: ranks ascend with the reward and tied rewards share their average
    rank, so each group's advantages are matched to N(0, 1) (the 1-D optimal-transport map).

    Args:
        rewards: [N] float sequence rewards; NaN rewards are not ranked and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.

    Returns:
        [N] advantages. A singleton or an all-equal group gets 0. With distinct rewards the sorted advantages are
        the normal quantiles Φ⁻¹((k − ½)/G) and sum to 0 (§13 V7); with ties the sum need not be 0.

    Note:
        Invariant to any strictly increasing transform of the rewards. The paper's task-level length shaping and
        entropy band are unknown and not part of this estimator.
    """
    warn_reconstruction("g2rpo_recon", _G2RPO)
    rewards = check_rewards(rewards, group_ids)
    inverse, n_groups = group_index(group_ids)
    valid, count, _, _ = group_moments(rewards, inverse, n_groups)
    less, equal = tie_counts(rewards, inverse, valid)
    rank = less.to(rewards.dtype) + (equal.to(rewards.dtype) + 1) / 2  # average 1-based rank
    q = (rank - 0.5) / count[inverse].clamp(min=1)
    adv = math.sqrt(2.0) * torch.erfinv(2 * q - 1)  # Φ⁻¹(q)
    return torch.where(valid, adv, torch.zeros_like(adv))


@register("advantage", "a_grae_recon", paper=f"{_A_GRAE}, 2025 (seeds_003_004.md 003-18)", tag="reconstructed")
def a_grae_recon(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    progress: float = 0.0,
    pos_scale: float = 0.8,
    mode_start: float = 0.75,
    mode_end: float = 0.25,
    concentration: float = 2.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Reconstruction of A-GRAE (asymmetric GRAE) from its abstract; not the published rule.

    A_i = w_t(p_q)·λ^{1[A⁰_i > 0]}·A⁰_i, A⁰ the ``grpo`` z-score, p_q = mean_G r (group accuracy), λ = pos_scale < 1,
    w_t(p) = (p/μ_t)^a·((1−p)/(1−μ_t))^b, a = c·μ_t, b = c·(1−μ_t), μ_t = μ_0 + (μ_1 − μ_0)·progress.

    The positive advantages of correct answers are damped (group-level asymmetry), and the prompt weight peaks at
    accuracy μ_t (w = 1 there), moving from easy prompts to hard ones as training progresses (the curriculum).

    Args:
        rewards: [N] float rewards in [0, 1] (p_q is read as a success rate; it is clipped to [0, 1]); NaN → A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        progress: training progress in [0, 1] (e.g. step / max_steps); the trainer passes it each step.
        pos_scale: λ ∈ (0, 1], the factor on positive advantages. Default 0.8 is ours.
        mode_start: μ_0 ∈ (0, 1), the accuracy the weight favours at the start (easy prompts). Default 0.75 is ours.
        mode_end: μ_1 ∈ (0, 1), the accuracy it favours at the end (hard prompts). Default 0.25 is ours.
        concentration: c > 0, the sharpness of the prompt weight (c = 0 would be flat). Default 2.0 is ours.
        eps: ε_A of the base z-score.

    Returns:
        [N] advantages.

    Note:
        The paper's λ_t schedule and weight family are unknown ([reconstructed]); every default above is ours.
    """
    warn_reconstruction("a_grae_recon", _A_GRAE)
    check_range("progress", progress, 0.0, 1.0)
    check_range("pos_scale", pos_scale, 0.0, 1.0, open_low=True)
    check_range("concentration", concentration, 0.0, open_low=True)
    for name, value in (("mode_start", mode_start), ("mode_end", mode_end)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value!r} is out of range; it must lie in (0, 1)")
    check_range("eps", eps, 0.0)
    rewards = check_rewards(rewards, group_ids)
    inverse, n_groups = group_index(group_ids)
    valid, _, mean, std = group_moments(rewards, inverse, n_groups)
    base = torch.where(valid, safe_div(rewards - mean[inverse], std[inverse] + eps), torch.zeros_like(rewards))
    mode = mode_start + (mode_end - mode_start) * progress
    p = mean.clamp(0.0, 1.0)
    a, b = concentration * mode, concentration * (1 - mode)
    weight = (p / mode) ** a * ((1 - p) / (1 - mode)) ** b  # (n_groups,), 1 at p = mode
    return weight[inverse] * torch.where(base > 0, pos_scale * base, base)


@register("advantage", "copo_recon", paper=f"{_COPO}, 2025 (seeds_003_004.md 004-17)", tag="reconstructed")
def copo_recon(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-4,
    std_mode: str = "sample",
) -> torch.Tensor:
    """Reconstruction of COPO (Consistency-Aware Policy Optimization) from its abstract; not the published rule.

    c_q = mean_G r; A^glob_q = (c_q − mean_B c)/(std_B c + eps) over the batch's groups; w_q = H_q / log G, with H_q
    the entropy of the group's outcome histogram; A_i = w_q·A^grpo_i + (1 − w_q)·A^glob_q.

    A group whose answers all agree (H = 0) has no GRPO signal; it then gets the global, prompt-level advantage.

    Args:
        rewards: [N] float rewards (c_q is the group accuracy for 0/1 rewards); NaN → left out, A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        eps: ε in both normalisers.
        std_mode: "sample" or "population" for both stds (std_G of A^grpo and std_B over the c_q).

    Returns:
        [N] advantages. Outcomes are the distinct reward values of a group; a singleton group has w = 0.

    Note:
        The paper's consistency reward and global loss are unknown ([reconstructed]); this is one advantage blend.
    """
    warn_reconstruction("copo_recon", _COPO)
    check_choice("std_mode", std_mode, STD_MODES)
    check_range("eps", eps, 0.0)
    rewards = check_rewards(rewards, group_ids)
    inverse, n_groups = group_index(group_ids)
    valid, count, mean, std = group_moments(rewards, inverse, n_groups, std_mode)
    local = torch.where(valid, safe_div(rewards - mean[inverse], std[inverse] + eps), torch.zeros_like(rewards))
    present = count > 0  # (n_groups,)
    n_q = present.to(rewards.dtype).sum()
    mean_c = (mean * present).sum() / n_q.clamp(min=1)
    dof = n_q - 1 if std_mode == "sample" else n_q
    std_c = ((((mean - mean_c) ** 2) * present).sum() / dof.clamp(min=1)).sqrt()
    glob = safe_div(mean - mean_c, std_c + eps)  # (n_groups,)
    _, equal = tie_counts(rewards, inverse, valid)
    size = count[inverse].clamp(min=1)
    # H_q = −Σ_v f_v log f_v = −(1/G)·Σ_{i∈q} log(n_{v(i)}/G): each member adds its own outcome's share.
    member = torch.where(valid, -torch.log(equal.to(rewards.dtype) / size) / size, torch.zeros_like(rewards))
    entropy = group_sum(member, inverse, n_groups)
    w = torch.where(count > 1, entropy / torch.log(count.clamp(min=2)), torch.zeros_like(entropy))
    adv = w[inverse] * local + (1 - w[inverse]) * glob[inverse]
    return torch.where(valid, adv, torch.zeros_like(adv))
