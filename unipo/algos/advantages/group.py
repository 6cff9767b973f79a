"""Group-relative advantages for outcome rewards (ALGORITHMS.md §1.1): one baseline per prompt group.

Each estimator takes ``rewards [N]`` and ``group_ids [N]`` and returns a sequence advantage [N] that the policy loss
broadcasts to every token. A NaN reward is left out of every statistic and gets A = 0; a group is sized by its
valid rewards, so a group of two with one NaN is a singleton.
"""

from __future__ import annotations

import torch

from unipo.algos.advantages._group import (
    STD_MODES,
    apply_singleton,
    batch_std,
    check_choice,
    check_mask,
    check_range,
    check_rewards,
    group_index,
    group_moments,
    group_stats,
    group_sum,
    row_lengths,
    safe_div,
)
from unipo.algos.registry import register

_GRPO_SCALES = ("group", "batch", "none")


@register(
    "advantage",
    "grpo",
    paper="Shao et al. 2024, DeepSeekMath, arXiv:2402.03300",
    tag="checked: TRL, verl",
    facts={"group_centred"},
)
def grpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scale: str = "group",
    eps: float = 1e-4,
    std_mode: str = "sample",
    singleton: str = "zero",
) -> torch.Tensor:
    """Group-relative z-score advantage (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, §4.1.2).

    A_i = (r_i − mean_G r) / (std_G r + eps), broadcast to every token of response i by the policy loss.

    Args:
        rewards: [N] float sequence rewards; NaN means "no reward" (left out of the statistics, A = 0).
        group_ids: [N] long, the prompt of each completion (any integers).
        mask: unused (the advantage is per sequence); accepted for the family signature.
        scale: "group" divides by std_G (GRPO); "batch" divides by the std of all valid rewards in the batch
            (Lite PPO, Liu et al. 2025 "Tricks or Traps", arXiv:2508.08221; TRL scale_rewards="batch");
            "none" only centres (Dr. GRPO, arXiv:2503.20783).
        eps: ε_A added to the std. TRL uses 1e-4, verl 1e-6.
        std_mode: "sample" (Bessel-corrected, TRL and verl) or "population".
        singleton: a group with one valid reward gets A = 0 ("zero") or A = r ("raw", verl's mean 0 / std 1
            convention; verl divides by 1 + eps, this returns r exactly).

    Returns:
        [N] advantages, same dtype as rewards.

    Note:
        With scale="group" and eps = 0 each group's advantages have mean 0 and sample std 1.
    """
    check_choice("scale", scale, _GRPO_SCALES)
    check_choice("std_mode", std_mode, STD_MODES)
    check_choice("singleton", singleton, ("zero", "raw"))
    rewards = check_rewards(rewards, group_ids)
    valid, centred, std_g, count = group_stats(rewards, group_ids, std_mode)
    if scale == "group":
        adv = safe_div(centred, std_g + eps)
    elif scale == "batch":
        adv = safe_div(centred, batch_std(rewards, valid, std_mode) + eps)
    else:
        adv = centred
    return apply_singleton(adv, rewards, valid, count, singleton)


@register(
    "advantage",
    "dr_grpo",
    paper="Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO), arXiv:2503.20783",
    tag="checked: TRL, verl",
    facts={"group_centred"},
)
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-centred group advantage without std scaling (Liu et al. 2025, Dr. GRPO, arXiv:2503.20783).

    A_i = r_i − mean_G r. Same as ``grpo`` with scale="none"; the Dr. GRPO recipe pairs it with ``seq_sum_constant``.

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out of the mean and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.

    Returns:
        [N] advantages (0 for a singleton group).
    """
    rewards = check_rewards(rewards, group_ids)
    return group_stats(rewards, group_ids)[1]


@register(
    "advantage",
    "rloo",
    paper="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization, arXiv:2402.14740",
    tag="checked: TRL, verl",
    facts={"group_centred"},
)
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out advantage (Ahmadian et al. 2024, arXiv:2402.14740).

    A_i = r_i − (1/(G−1))·Σ_{j≠i} r_j = (G/(G−1))·(r_i − mean_G r); a singleton group (G = 1) gets A = 0.

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out (G counts valid rewards) and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.

    Returns:
        [N] advantages.
    """
    rewards = check_rewards(rewards, group_ids)
    _, centred, _, count = group_stats(rewards, group_ids)
    return centred * _loo_factor(count)


def _loo_factor(count: torch.Tensor) -> torch.Tensor:
    # G/(G−1) turns r − mean_G r into r − mean of the others; 0 for a singleton (no other sample).
    return torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))


@register(
    "advantage",
    "group_mean_batch_std",
    paper="Liu et al. 2025, Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning (Lite PPO), "
    "arXiv:2508.08221",
    tag="checked: secondary (TRL docs); TRL scale_rewards='batch' checked: TRL",
    facts={"group_centred"},
)
def group_mean_batch_std(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-4,
    std_mode: str = "sample",
) -> torch.Tensor:
    """Group-mean / batch-std advantage of Lite PPO (Liu et al. 2025, "Tricks or Traps?", arXiv:2508.08221).

    A_i = (r_i − mean_G r) / (std_B r + eps), std_B over every valid reward of the batch (TRL scale_rewards="batch").

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out of both statistics and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        eps: ε_A added to the batch std (TRL: 1e-4).
        std_mode: "sample" (Bessel-corrected, as TRL's ``rewards.std()``) or "population".

    Returns:
        [N] advantages; 0 for a singleton group.

    Note:
        Same values as ``grpo(scale="batch")``; the ``lite_ppo`` recipe pairs it with ``token_mean`` and ``ppo_clip``.
    """
    check_choice("std_mode", std_mode, STD_MODES)
    check_range("eps", eps, 0.0)
    rewards = check_rewards(rewards, group_ids)
    valid, centred, _, _ = group_stats(rewards, group_ids, std_mode)
    return safe_div(centred, batch_std(rewards, valid, std_mode) + eps)


@register(
    "advantage",
    "opo",
    paper="Hao et al. 2025, On-Policy RL with Optimal Reward Baseline (OPO), arXiv:2505.23585",
    tag="checked: verl",
    facts={"group_centred"},
)
def opo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    singleton: str = "zero",
) -> torch.Tensor:
    """Length-weighted optimal baseline (OPO, Hao et al. 2025, arXiv:2505.23585; verl ``opo``).

    b_G = Σ_j |y_j|·r_j / Σ_j |y_j| over the group, A_i = r_i − b_G, with |y_j| the number of tokens of ``mask``.

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out of the baseline and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: [N, T] loss mask (required): the response lengths |y_j| = Σ_t mask.
        singleton: "zero" (A = 0; the formula gives b = r) or "raw" (A = r: verl's baseline 0 for a singleton).

    Returns:
        [N] advantages. A group whose responses are all empty falls back to the plain group mean.

    Note:
        With equal lengths within a group ``opo`` equals ``dr_grpo`` (§13 V4). The group sum of A is not 0.
    """
    check_choice("singleton", singleton, ("zero", "raw"))
    rewards = check_rewards(rewards, group_ids)
    m = check_mask(mask, rewards.shape[0], "opo")
    inverse, n_groups = group_index(group_ids)
    valid, count, mean, _ = group_moments(rewards, inverse, n_groups)
    length = torch.where(valid, row_lengths(m, rewards.dtype), torch.zeros_like(rewards))
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    num, den = group_sum(length * r, inverse, n_groups), group_sum(length, inverse, n_groups)
    baseline = torch.where(den > 0, num / den.clamp(min=1e-30), mean)  # (n_groups,)
    adv = torch.where(valid, r - baseline[inverse], torch.zeros_like(r))
    adv = torch.where(valid & (count[inverse] == 1), torch.zeros_like(adv), adv)
    return apply_singleton(adv, rewards, valid, count[inverse], singleton)


@register(
    "advantage",
    "gpg",
    paper="Chu et al. 2025, GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning, "
    "arXiv:2504.02546",
    tag="checked: verl",
)
def gpg(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    f_norm: float = 1.0,
    singleton: str = "zero",
) -> torch.Tensor:
    """Group Policy Gradient advantage (Chu et al. 2025, GPG, arXiv:2504.02546; verl ``gpg``).

    A_i = α·(r_i − mean_G r)/f_norm, α = B / max(1, #{j in batch: r_j ≠ 0}), B = number of (valid) rewards.

    Args:
        rewards: [N] float sequence rewards; NaN rewards count neither in B nor in the non-zero count, A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        f_norm: F_norm, a constant divisor (verl default 1; must be > 0).
        singleton: "zero" (A = 0) or "raw" (A = α·r/f_norm, verl's mean-0 convention for a singleton).

    Returns:
        [N] advantages.

    Note:
        GPG pairs this with the plain ``reinforce`` surrogate (no ratio, no clip).
    """
    check_range("f_norm", f_norm, 0.0, open_low=True)
    rewards = check_rewards(rewards, group_ids)
    valid, centred, _, count = group_stats(rewards, group_ids)
    b = valid.to(rewards.dtype).sum()
    nonzero = (valid & (rewards != 0)).to(rewards.dtype).sum()
    alpha = b / nonzero.clamp(min=1)
    adv = alpha * centred / f_norm
    raw = torch.where(valid, alpha * rewards / f_norm, torch.zeros_like(rewards))
    return apply_singleton(adv, raw, valid, count, singleton)


@register(
    "advantage",
    "grpo_passk",
    paper="Pass@k training as implemented in verl (citing Tang et al. 2025, Optimizing Language Models for "
    "Inference Time Objectives using Reinforcement Learning, arXiv:2503.19595)",
    tag="checked: verl",
)
def grpo_passk(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
    divide_by_std: bool = True,
) -> torch.Tensor:
    """Pass@k advantage: only the best response of a group gets a signal (verl ``grpo_passk``, arXiv:2503.19595).

    i* = argmax_G r; A_{i*} = (r_max − r_second) / (std_G r + eps) (the division is optional); A_i = 0 for i ≠ i*.

    Args:
        rewards: [N] float sequence rewards; NaN rewards are never the best or second best and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        eps: added to the std (verl: 1e-6).
        divide_by_std: divide by the Bessel-corrected std_G (verl's ``norm_adv_by_std_in_grpo``, default True).

    Returns:
        [N] advantages with at most one non-zero per group; ties for the maximum go to the lowest index (the
        advantage is then r_max − r_second = 0 anyway).

    Note:
        Pass@k needs G ≥ 2. verl raises on a singleton group; here it gets A = 0 (no data-dependent host sync).
    """
    check_range("eps", eps, 0.0)
    rewards = check_rewards(rewards, group_ids)
    inverse, n_groups = group_index(group_ids)
    valid, count, _, std = group_moments(rewards, inverse, n_groups)
    n = rewards.shape[0]
    r = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf))
    neg_inf = rewards.new_full((n_groups,), -torch.inf)
    r_max = neg_inf.scatter_reduce(0, inverse, r, "amax")
    pos = torch.arange(n, device=rewards.device)
    candidate = torch.where(valid & (r == r_max[inverse]), pos, torch.full_like(pos, n))
    first = torch.full((n_groups,), n, device=rewards.device).scatter_reduce(0, inverse, candidate, "amin")
    best = valid & (pos == first[inverse])
    r_second = neg_inf.scatter_reduce(0, inverse, torch.where(best, torch.full_like(r, -torch.inf), r), "amax")
    gap = torch.where(count >= 2, r_max - r_second, torch.zeros_like(r_max))  # (n_groups,)
    if divide_by_std:
        gap = safe_div(gap, std + eps)
    return torch.where(best, gap[inverse], torch.zeros_like(rewards))


@register(
    "advantage",
    "p3o_pairwise",
    paper="Wu et al. 2023, Pairwise Proximal Policy Optimization (P3O), arXiv:2310.00212",
    tag="memory",
)
def p3o_pairwise(rewards: torch.Tensor, group_ids: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise advantage of P3O (Wu et al. 2023, Pairwise PPO, arXiv:2310.00212).

    For a pair y_1, y_2 ∼ π_old(·∣x): A(y_1) = ½(r_1 − r_2) = −A(y_2). A group of G > 2 averages over all partners:
    A_i = (1/(G−1))·Σ_{j≠i} ½(r_i − r_j) = ½·``rloo``.

    Args:
        rewards: [N] float sequence rewards (KL-penalised if the recipe wants P3O's KL-in-reward); NaN → A = 0.
        group_ids: [N] long prompt index of each completion (pairs: G = 2).
        mask: unused; accepted for the family signature.

    Returns:
        [N] advantages; 0 for a singleton group.

    Note:
        P3O's "separate"/"joint" clipping of sequence ratios is a policy-loss choice, not part of this estimator.
        The G > 2 average over partners is ours; the paper states the pair form.
    """
    rewards = check_rewards(rewards, group_ids)
    _, centred, _, count = group_stats(rewards, group_ids)
    return 0.5 * centred * _loo_factor(count)
