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
