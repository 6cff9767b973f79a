"""Advantage estimators for outcome rewards (ALGORITHMS.md §1.1).

Signature of the family: ``fn(rewards [N], group_ids [N], *, mask=None, **hparams) -> advantages [N] or [N, T]``.
``group_ids`` are arbitrary integers (the prompt of each completion); they need not be contiguous or sorted.
Group statistics are computed vectorised with ``torch.unique(return_inverse=True)`` and ``index_add``.

A NaN reward (a reward function that returned None) is left out of every mean and std and gets A = 0,
as TRL does. Groups are sized by their valid (non-NaN) rewards, so a group of two with one NaN is a singleton.
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register
from unipo.ops import masked_sum, masked_whiten

_GRPO_SCALES = ("group", "batch", "none")
_STD_MODES = ("sample", "population")
_SINGLETONS = ("zero", "raw")


def _check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{option}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _check_rewards(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D [N] (combine several reward functions first); got {tuple(rewards.shape)}"
        )
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}; got {tuple(group_ids.shape)}"
        )
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def _group_stats(
    rewards: torch.Tensor, group_ids: torch.Tensor, std_mode: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element group statistics over the valid (non-NaN) rewards.

    Returns (valid [N] bool, centred [N] = r − mean_G r (0 where invalid), std_G [N], count_G [N]).
    """
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # (N,) -> group index in [0, n_groups)
    zeros = rewards.new_zeros(uniq.numel())
    count = zeros.index_add(0, inverse, valid.to(rewards.dtype))
    mean = zeros.index_add(0, inverse, r) / count.clamp(min=1)
    centred = torch.where(valid, r - mean[inverse], torch.zeros_like(r))
    sq = zeros.index_add(0, inverse, centred**2)
    dof = count - 1 if std_mode == "sample" else count
    std = (sq / dof.clamp(min=1)).sqrt()
    return valid, centred, std[inverse], count[inverse]


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # den = 0 only when every deviation is 0 (equal rewards with eps = 0), where A = 0 is the right answer.
    return num / torch.where(den > 0, den, torch.ones_like(den))


@register("advantage", "grpo", paper="Shao et al. 2024, DeepSeekMath, arXiv:2402.03300", tag="checked: TRL, verl")
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
    _check_choice("scale", scale, _GRPO_SCALES)
    _check_choice("std_mode", std_mode, _STD_MODES)
    _check_choice("singleton", singleton, _SINGLETONS)
    rewards = _check_rewards(rewards, group_ids)
    valid, centred, std_g, count = _group_stats(rewards, group_ids, std_mode)
    if scale == "group":
        adv = _safe_div(centred, std_g + eps)
    elif scale == "batch":
        n = valid.to(rewards.dtype).sum()
        mean_b = masked_sum(rewards, valid) / n.clamp(min=1)
        dof = n - 1 if std_mode == "sample" else n
        std_b = (masked_sum((rewards - mean_b) ** 2, valid) / dof.clamp(min=1)).sqrt()
        adv = _safe_div(centred, std_b + eps)
    else:
        adv = centred
    if singleton == "raw":
        adv = torch.where(valid & (count == 1), rewards, adv)
    return adv


@register(
    "advantage",
    "dr_grpo",
    paper="Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO), arXiv:2503.20783",
    tag="checked: TRL, verl",
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
    rewards = _check_rewards(rewards, group_ids)
    return _group_stats(rewards, group_ids)[1]


@register(
    "advantage",
    "rloo",
    paper="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization, arXiv:2402.14740",
    tag="checked: TRL, verl",
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
    rewards = _check_rewards(rewards, group_ids)
    _, centred, _, count = _group_stats(rewards, group_ids)
    factor = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return centred * factor


@register(
    "advantage",
    "reinforce_pp_baseline",
    paper="Hu 2025, REINFORCE++: Stabilizing Critic-Free Policy Optimization, arXiv:2501.03262",
    tag="checked: verl",
)
def reinforce_pp_baseline(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++-baseline: group-mean baseline, then batch whitening (Hu 2025, arXiv:2501.03262).

    A_{i,t} = whiten_B(r_i − mean_G r), where whiten_B(x) = (x − mean_B x) / (std_B x + eps) over the valid
    tokens of the batch (verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``).

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out of every statistic and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: [N, T] loss mask. When given, the mean and Bessel-corrected std run over all valid tokens
            (sequence i counted |y_i| times, as in verl) and the result is [N, T], 0 on masked tokens.
            When None, they run over the valid sequences and the result is [N].
        eps: added to the std. 1e-8 is verl's constant (verl writes rsqrt(var + 1e-8); the two forms differ
            by O(eps) relative).

    Returns:
        [N, T] advantages if ``mask`` is given, else [N].

    Note:
        Call it on the whole rollout batch (before micro-batching) so that the whitening is batch-wide.
    """
    rewards = _check_rewards(rewards, group_ids)
    valid, centred, _, _ = _group_stats(rewards, group_ids)
    if mask is None:
        return masked_whiten(centred, valid, eps=eps)
    if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"mask must be [N, T] with N = {rewards.shape[0]}; got {tuple(mask.shape)}")
    token_mask = mask.bool() & valid[:, None]  # (N,) -> (N, T)
    return masked_whiten(centred[:, None].expand(mask.shape), token_mask, eps=eps)
