"""Segment-level Monte Carlo advantages: SPO-chain (ALGORITHMS.md §1.2, `spo_segment`).

A completion of length L has states 0..L (state s: the prompt plus its first s tokens). The trainer's estimation stage
picks cut states with ``spo_cut_states``, samples K continuations from each (the completion's first s tokens forced,
the policy finishing the reply within the same token budget), scores them with the task's rewards and passes their mean
as ``segment_values`` [N, T+1] (NaN where no state was estimated). ``spo_segment`` turns those values into token
advantages.
"""

from __future__ import annotations

import torch

from unipo.algos.advantages._group import check_mask, check_range, check_rewards
from unipo.algos.ops import masked_sum
from unipo.algos.registry import register


def spo_cut_states(
    rollout_logp: torch.Tensor, mask: torch.Tensor, *, prob_threshold: float, cut_interval: int
) -> torch.Tensor:
    """SPO's cut states: the state before each token whose sampling probability is below `prob_threshold`, every
    `cut_interval`-th of them in order (the official ``cutpoints[::cutpoint_interval]``, starting with the first).

    Args:
        rollout_logp: [N, T] log-probability of each sampled token under the sampling policy.
        mask: [N, T] the completion's tokens.
        prob_threshold: a token with p < threshold opens a segment (official 0.9).
        cut_interval: keep every k-th candidate (official 5 for SPO-chain int5).

    Returns:
        [N, T+1] bool; column s is state s (column T is never a cut state).
    """
    check_range("prob_threshold", prob_threshold, 0.0, 1.0, open_low=True)
    if cut_interval < 1:
        raise ValueError(f"cut_interval={cut_interval} must be ≥ 1")
    low = (rollout_logp.detach().exp() < prob_threshold) & mask.bool()  # (N, T)
    rank = low.long().cumsum(1) - 1  # 0 for the first candidate of each row
    cuts = low & (rank % cut_interval == 0)
    return torch.nn.functional.pad(cuts, (0, 1))  # (N, T) -> (N, T+1): the terminal state is valued by the reward


@register(
    "advantage",
    "spo_segment",
    paper="Guo et al. 2025, Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for LLMs "
    "(SPO-chain), arXiv:2505.23564",
    tag="checked: official code AIFrameResearch/SPO (math_episode_generator_with_mc_advantages.py, ppo_trainer.py)",
)
def spo_segment(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    segment_values: torch.Tensor | None = None,
    rollout_logp: torch.Tensor | None = None,
    prob_threshold: float = 0.9,
    cut_interval: int = 5,
    mc_samples: int = 9,
    whiten: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """SPO-chain segment advantages (Guo et al. 2025, arXiv:2505.23564; official ``_compute_token_advantages``).

    With V̂(s) the mean reward of K continuations from cut state s and V̂(L_i) = r_i at the end of completion i,
    every token t with s_k ≤ t < s_{k+1} (consecutive valued states) gets A_t = V̂(s_{k+1}) − V̂(s_k); tokens before
    the first valued state get 0 (the official code has no base value unless state 0 is a cut). The probability
    mask then keeps A only on tokens sampled with p < `prob_threshold` (the segment-opening decisions) and sets the
    rest to 0. With `whiten`, A is whitened over the batch's kept tokens as the official PPO trainer does:
    (A − mean)·(var + ε)^(−1/2), Bessel-corrected variance.

    Args:
        rewards: [N] each completion's reward (the value of its final state).
        group_ids: [N] (unused: the baseline is the Monte Carlo value, not the group).
        mask: [N, T] loss mask.
        segment_values: [N, T+1] V̂ of each cut state, NaN elsewhere (the trainer's estimation stage).
        rollout_logp: [N, T] the sampling policy's log-probs of the sampled tokens (the probability mask).
        prob_threshold: official 0.9 (hard-coded there).
        cut_interval: every k-th low-probability token is a cut (official 5 for SPO-chain on GSM8K).
        mc_samples: K continuations per cut state (official 9); read by the estimation stage.
        whiten: whiten over the kept tokens (the official PPO trainer's ``whiten_advantages: true``).
        eps: added to the variance when whitening (official 1e-8).

    Returns:
        [N, T] advantages, 0 outside the mask and on tokens with p ≥ `prob_threshold`.

    Note:
        The official PPO loss also leaves the high-probability tokens out of its token mean (``use_prob_mask``); here
        they count in the aggregation with A = 0, so the loss is the official one scaled by the batch's share of
        kept tokens. Only SPO-chain is implemented (SPO-tree's branching rollouts are not).
    """
    rewards = check_rewards(rewards, group_ids)
    valid = check_mask(mask, rewards.shape[0], "spo_segment")
    if segment_values is None or rollout_logp is None:
        raise ValueError("advantage 'spo_segment' needs segment_values and rollout_logp")
    n, t = valid.shape
    if segment_values.shape != (n, t + 1):
        raise ValueError(f"segment_values must be [N, T+1] = {(n, t + 1)}; got {tuple(segment_values.shape)}")
    if mc_samples < 1:
        raise ValueError(f"mc_samples={mc_samples} must be ≥ 1")
    positions = torch.arange(t + 1, device=valid.device)
    length = torch.where(valid, positions[:t] + 1, 0).amax(1)  # (N,) one past the last completion token
    values = segment_values.to(rewards.dtype).clone()
    values[positions[None, :] > length[:, None]] = float("nan")  # no state past the end
    values[torch.arange(n), length] = rewards  # the final state is valued by the reward
    known = ~values.isnan()
    prev = torch.where(known, positions, -1).cummax(1).values  # (N, T+1) last valued state ≤ s
    nxt = torch.where(known, positions, t + 1).flip(1).cummin(1).values.flip(1)  # (N, T+1) first valued state ≥ s
    start, end = prev[:, :t], nxt[:, 1:]  # token t lies between states start ≤ t < end
    has = (start >= 0) & (end <= t)
    safe = torch.nan_to_num(values)
    adv = torch.where(has, safe.gather(1, end.clamp(max=t)) - safe.gather(1, start.clamp(min=0)), 0.0)
    keep = valid & (rollout_logp.detach().exp() < prob_threshold)
    adv = torch.where(keep, adv, 0.0)
    if whiten and keep.any():
        k = keep.to(adv.dtype)
        count = k.sum()
        mean = masked_sum(adv, k) / count
        var = masked_sum((adv - mean) ** 2, k) / (count - 1).clamp(min=1)
        adv = torch.where(keep, (adv - mean) * torch.rsqrt(var + eps), 0.0)
    return adv
