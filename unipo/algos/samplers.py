"""Rollout samplers (ALGORITHMS.md §6): rules that decide which sampled groups a step trains on.

Signature of a group filter: `fn(rewards [N], group_ids [N], **params) -> keep [N] bool`, constant within each group
(a group is kept or dropped whole). The trainer's collect stage calls it on every generated batch and generates
more prompts until the step's batch is full (or its generation limit is reached), so the batch size is exact.
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register


@register(
    "sampler",
    "dynamic_sampling",
    paper="Yu et al. 2025, DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476",
    tag="checked: verl docs (filter_groups)",
)
def dynamic_sampling(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, max_gen_batches: int = 10, min_std: float = 0.0
) -> torch.Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476, §3.2, Eq. 11: 0 < |{correct}| < G).

    keep_i = std_{g(i)}(r) > min_std: a group whose rewards are all equal has zero group-relative advantage and no
    gradient, so it is dropped and more prompts are generated until the batch holds `train.prompts_per_step` kept
    groups (verl `filter_groups`; the metric is the reward). NaN rewards (unscored) are left out of the spread.

    Args:
        rewards: [N] rewards of the step's completions.
        group_ids: [N] prompt index of each completion.
        max_gen_batches: generation rounds per step at most (verl `max_num_gen_batches`, default 10; <= 0: no
            limit), read by the collect stage; when it is reached the step trains on the groups kept so far.
        min_std: keep a group only when its reward std exceeds this (0: any spread).

    Returns:
        [N] bool, True for completions of kept groups.
    """
    valid = ~torch.isnan(rewards)
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    count = torch.zeros(g, dtype=rewards.dtype).index_add_(0, group_ids, valid.to(rewards.dtype))
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = torch.zeros(g, dtype=rewards.dtype).index_add_(0, group_ids, r) / count.clamp(min=1)
    dev = torch.where(valid, (rewards - mean[group_ids]) ** 2, torch.zeros_like(rewards))
    var = torch.zeros(g, dtype=rewards.dtype).index_add_(0, group_ids, dev) / count.clamp(min=1)
    keep_group = (count > 1) & (var.sqrt() > min_std)
    return keep_group[group_ids]


def _solved_per_group(rewards: torch.Tensor, group_ids: torch.Tensor, solved_above: float) -> torch.Tensor:
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    solved = (~torch.isnan(rewards) & (rewards > solved_above)).to(torch.long)
    return torch.zeros(g, dtype=torch.long, device=rewards.device).index_add_(0, group_ids, solved)


@register(
    "sampler",
    "hpt",
    paper="Lv et al. 2025, Towards a Unified View of Large Language Model Post-Training (UPGE / HPT), arXiv:2509.04419",
    tag="checked: official code select_on_off_ada_balance (per-prompt switch); the solved threshold: ours",
    facts={"demonstrations"},
)
def hpt(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, switch_gate: int = 0, solved_above: float = 0.0
) -> torch.Tensor:
    """HPT's per-prompt switch between RL and SFT (Lv et al. 2025, arXiv:2509.04419; official `mix_trainer.py`).

    switch_q = #{i ∈ q: r_i > solved_above} ≤ switch_gate: a prompt the policy (almost) never solves drops its
    rollouts and trains on the dataset's demonstration with an SFT loss (pair with the `sft_nll` regularizer);
    the other prompts train with RL on their rollouts.

    Args:
        rewards: [N] rewards (NaN: unscored, not solved).
        group_ids: [N] prompt index of each completion.
        switch_gate: a prompt switches to SFT when at most this many of its rollouts are solved (official: 0).
        solved_above: a rollout counts as solved when its reward exceeds this (0: any positive reward) [ours].

    Returns:
        [N] bool, True for the completions of prompts that switch to their demonstration (constant per group).
    """
    return (_solved_per_group(rewards, group_ids, solved_above) <= switch_gate)[group_ids]


@register(
    "sampler",
    "red_drop",
    paper="Yao et al. 2025, Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (REC, RED-Drop), "
    "arXiv:2509.24203",
    tag="checked: ALGORITHMS.md §6.1 from Trinity-RFT; positives as r > mean (ties kept): ours",
)
def red_drop(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """RED-Drop (Yao et al. 2025, arXiv:2509.24203): balance each group by dropping random negatives.

    In a group with more negatives (r_i < mean_g r) than positives (r_i > mean_g r), keep a uniformly random subset of
    #pos negatives and drop the rest, so #neg ≤ #pos in every group; the advantage stage then recomputes the group
    statistics on the kept completions (unequal groups). Completions at the mean and NaN (unscored) ones are kept.

    Args:
        rewards: [N] rewards.
        group_ids: [N] prompt index of each completion.
        generator: the trainer's random generator (which negatives are dropped).

    Returns:
        [N] bool, True for the completions kept.
    """
    valid = ~torch.isnan(rewards)
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    zeros = torch.zeros(g, dtype=rewards.dtype)
    count = zeros.index_add(0, group_ids, valid.to(rewards.dtype))
    mean = zeros.index_add(0, group_ids, torch.where(valid, rewards, 0.0)) / count.clamp(min=1)
    neg = valid & (rewards < mean[group_ids])
    pos = valid & (rewards > mean[group_ids])
    n_pos = torch.zeros(g, dtype=torch.long).index_add(0, group_ids, pos.long())
    # rank the negatives of each group in a random order; keep the first #pos of them
    noise = torch.rand(rewards.shape, generator=generator)
    order = torch.argsort(torch.where(neg, noise, 2.0) + 3.0 * group_ids.to(noise.dtype))  # by group, negatives first
    rank = torch.empty_like(order)
    start = torch.zeros(g, dtype=torch.long)
    start[1:] = torch.bincount(group_ids, minlength=g).cumsum(0)[:-1]
    rank[order] = torch.arange(rewards.numel()) - start[group_ids[order]]
    return ~neg | (rank < n_pos[group_ids])
