"""Group filters (ALGORITHMS.md §6.1): which completions of each scored group the step keeps.

Signature: `fn(rewards [N], group_ids [N], **params) -> keep [N] bool`. The collect stage calls a filter on every
generated batch and generates more prompts until the step's batch is full (or its generation limit is reached).
"""

from __future__ import annotations

import torch

from unipo.algos.advantages._group import group_stats
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
    _, _, std, count = group_stats(rewards, group_ids, "population")  # each completion's group's
    return (count > 1) & (std > min_std)


@register(
    "sampler",
    "low_var_group_filter",
    paper="UniWorld-V2 / Edit-R1 low-variance group filter, https://github.com/PKU-YuanGroup/UniWorld-V2",
    tag="reconstructed (ALGORITHMS.md §6.1: drop groups whose reward std is below tau); tau and the population std: "
    "ours",
)
def low_var_group_filter(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, min_std: float = 0.05, max_gen_batches: int = 1
) -> torch.Tensor:
    """Edit-R1's low-variance group filter (UniWorld-V2, https://github.com/PKU-YuanGroup/UniWorld-V2).

    keep_q = std_q(r) ≥ τ (population std over the scored completions of prompt q): when the reward comes from a noisy
    judge, a group whose scores barely differ carries mostly noise in its normalised advantages, so it is dropped.
    Unlike `dynamic_sampling` the step trains on the groups that survive (no regeneration by default), so its batch
    may shrink.

    Args:
        rewards: [N] rewards (NaN: unscored, left out of the std).
        group_ids: [N] prompt index of each completion.
        min_std: τ, the smallest reward std a kept group has [ours: 0.05 for rewards in [0, 1]].
        max_gen_batches: generation rounds per step at most, read by the collect stage (1: no regeneration; more:
            regenerate until the batch is full, as `dynamic_sampling`).

    Returns:
        [N] bool, True for completions of kept groups.
    """
    _, _, std, count = group_stats(rewards, group_ids, "population")
    return (count > 1) & (std >= min_std)


@register(
    "sampler",
    "d3s_sample_recon",
    paper="D³S: Dynamic Dual-Level Down-Sampling (seeds_000_001.md 000-06, seeds_003_004.md 004-06; the code was "
    "promised, not published)",
    tag="reconstructed: mechanism from the abstract (keep the rollouts that maximise Var(A), aggressive early and "
    "relaxed later); the exact extremes search and the linear schedule: ours",
)
def d3s_sample_recon(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    progress: float = 0.0,
    keep_start: float = 0.5,
    keep_end: float = 1.0,
    min_keep: int = 2,
) -> torch.Tensor:
    """Reconstruction of D³S's sample-level down-sampling: per group, the k rollouts whose advantages vary most.

    k_q = clamp(round(n_q·ρ_t), min_keep, n_q) with ρ_t = keep_start + (keep_end − keep_start)·progress (aggressive
    early, relaxed later). Var(A) over a subset equals Var(r)/s² for a group-affine advantage A = (r − b)/s, so the
    kept subset maximises the population variance of the rewards. The maximum-variance k-subset of a set of numbers
    is its j smallest plus its k − j largest for some j, so every j is tried (ties: j nearest k/2). Unscored (NaN)
    completions are dropped.

    Args:
        rewards: [N] rewards.
        group_ids: [N] prompt index of each completion.
        progress: training progress in [0, 1] (trainer input).
        keep_start: ρ at the start of training [ours].
        keep_end: ρ at the end of training (1: no down-sampling) [ours].
        min_keep: the fewest rollouts a group keeps (2: a spread to learn from).

    Returns:
        [N] bool, True for the kept completions.
    """
    rho = keep_start + (keep_end - keep_start) * float(progress)
    r, ids = rewards.detach().double().cpu(), group_ids.cpu()
    keep = torch.zeros(r.numel(), dtype=torch.bool)
    for g in torch.unique(ids).tolist():
        members = ((ids == g) & ~r.isnan()).nonzero().squeeze(-1)
        n = members.numel()
        k = min(n, max(min_keep, round(n * rho)))
        if k >= n:
            keep[members] = True
            continue
        order = members[torch.argsort(r[members], stable=True)]
        s = r[order]
        c1 = torch.cat([s.new_zeros(1), s.cumsum(0)])
        c2 = torch.cat([s.new_zeros(1), (s * s).cumsum(0)])
        j = torch.arange(k + 1)  # j from the bottom, k - j from the top
        total = c1[j] + c1[n] - c1[n - k + j]
        squares = c2[j] + c2[n] - c2[n - k + j]
        var = squares / k - (total / k) ** 2
        best = torch.isclose(var, var.max(), rtol=0, atol=1e-12)
        jb = int(j[best][torch.argmin((j[best] - k / 2).abs())])
        keep[order[:jb]] = True
        keep[order[n - (k - jb) :]] = True
    return keep.to(group_ids.device)


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
