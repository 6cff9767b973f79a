"""Advantage shaping on top of a group baseline (ALGORITHMS.md §1.2): ``xrpo_sharpen`` and ``red_weight``.

Both start from a group-relative advantage and reweight it per response. Rewards are [N]; NaN → A = 0.
"""

from __future__ import annotations

import torch

from unipo.algos.advantages._group import (
    STD_MODES,
    check_choice,
    check_mask,
    check_range,
    check_rewards,
    check_token_tensor,
    group_index,
    group_moments,
    group_sum,
    safe_div,
)
from unipo.algos.ops import masked_mean
from unipo.algos.registry import register


@register(
    "advantage",
    "xrpo_sharpen",
    paper="Bamba et al. 2025, XRPO: Pushing the Limits of GRPO with Targeted Exploration, arXiv:2510.06672",
    tag="checked: secondary (third-party reimplementation); not checked against the paper",
)
def xrpo_sharpen(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    novelty_coef: float = 1.0,
    novelty_cap: float = 1.0,
    eps: float = 1e-4,
    std_mode: str = "sample",
) -> torch.Tensor:
    """XRPO novelty-aware sharpening of the GRPO advantage (Bamba et al. 2025, XRPO, arXiv:2510.06672).

    s_i = mean_t log π_old(y_{i,t}), η_i = exp(s_i − mean_G s); for a correct response (A_i > 0)
    A_i ← A_i + min(max(λ(1 − η_i), 0), κ·A_i), with A_i the ``grpo`` z-score. Rare correct answers gain most.

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: [N, T] loss mask (required), for the token mean s_i.
        old_logp: [N, T] log π_old of the sampled tokens (required).
        novelty_coef: λ ≥ 0. The paper's value is unknown; the default 1.0 is ours (it matches the third-party
            reimplementation grpo-composer).
        novelty_cap: κ ≥ 0, the bonus is at most κ·A_i. Paper value unknown; the default 1.0 is ours (as above).
        eps: ε_A of the base z-score (TRL's 1e-4).
        std_mode: "sample" or "population" std of the base z-score.

    Returns:
        [N] advantages.

    Note:
        "Correct" is read as A_i > 0 (above the group mean): for 0/1 rewards that is a correct response in a
        mixed group; in an all-correct group A_i = 0 and the cap κ·A_i = 0 leaves it unchanged. The mean of s
        runs over the group's valid responses with at least one token.
    """
    check_range("novelty_coef", novelty_coef, 0.0)
    check_range("novelty_cap", novelty_cap, 0.0)
    check_range("eps", eps, 0.0)
    check_choice("std_mode", std_mode, STD_MODES)
    rewards = check_rewards(rewards, group_ids)
    m = check_mask(mask, rewards.shape[0], "xrpo_sharpen")
    old = check_token_tensor(old_logp, "old_logp", m, rewards, "xrpo_sharpen")
    inverse, n_groups = group_index(group_ids)
    valid, _, mean, std = group_moments(rewards, inverse, n_groups, std_mode)
    base = torch.where(valid, safe_div(rewards - mean[inverse], std[inverse] + eps), torch.zeros_like(rewards))
    s = masked_mean(old, m, dim=1)  # (N, T) -> (N,)
    has_s = (valid & m.any(1)).to(rewards.dtype)
    s_bar = group_sum(s * has_s, inverse, n_groups) / group_sum(has_s, inverse, n_groups).clamp(min=1)
    eta = torch.exp(s - s_bar[inverse])
    bonus = torch.minimum((novelty_coef * (1 - eta)).clamp(min=0), novelty_cap * base)
    return torch.where(base > 0, base + bonus, base)


@register(
    "advantage",
    "red_weight",
    paper="Yao et al. 2025, Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (REC/RED), arXiv:2509.24203",
    tag="checked: Trinity-RFT",
)
def red_weight(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """RED-Weight data shaping (Yao et al. 2025, arXiv:2509.24203; Trinity-RFT ``weight="advantage"``).

    A_i = r_i − mean_G r (REC: no std by default), then A_i ← A_i·exp(A_i/T): good responses weigh more.

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        temperature: T > 0. ALGORITHMS.md marks the paper default unknown; 1.0 is Trinity-RFT's ``temp`` default
            (``rec_policy_loss.py`` and the RED-Weight example config), taken here as ours.
        std_normalize: divide the centred reward by the group's population std + eps first (Trinity-RFT REC
            ``std_normalize``, default False).
        eps: added to the std when ``std_normalize`` (Trinity-RFT: 1e-6).

    Returns:
        [N] advantages; 0 for a singleton group (Trinity-RFT gives it A = r·exp(r/T) via mean 0).
    """
    check_range("temperature", temperature, 0.0, open_low=True)
    check_range("eps", eps, 0.0)
    rewards = check_rewards(rewards, group_ids)
    inverse, n_groups = group_index(group_ids)
    valid, _, mean, std = group_moments(rewards, inverse, n_groups, "population")
    adv = torch.where(valid, rewards - mean[inverse], torch.zeros_like(rewards))
    if std_normalize:
        adv = safe_div(adv, std[inverse] + eps)
    return adv * torch.exp(adv / temperature)
