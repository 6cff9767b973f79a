"""Samplers with memory across steps (ALGORITHMS.md §6.2, §6.3): per-prompt rollout budgets from pass rates
(Knapsack RL, XRPO's allocator) and a replay buffer of successes (ARPO)."""

from __future__ import annotations

import math

import torch

from unipo.algos.registry import register
from unipo.algos.samplers._common import last_of_group, unsolved_groups


def knapsack_value(n: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Knapsack RL's value of giving N rollouts to a prompt of pass rate p: (1 − p^N − (1−p)^N)·p(1−p)² (the chance
    that the group has both outcomes, times the information gain of one gradient at p); Value(N, 0) = Value(N, 1) = 0.
    """
    n, p = n.double(), p.double()
    return (1 - p**n - (1 - p) ** n) * p * (1 - p) ** 2


@register(
    "sampler",
    "knapsack_rl",
    paper="Li et al. 2025, Knapsack RL: Unlocking Exploration of LLMs via Optimizing Budget Allocation, "
    "arXiv:2509.25849",
    tag="checked: secondary summary + abstract (value and DP); the prior for unseen prompts and n_min: ours",
    facts={"budget"},
)
def knapsack_rl(
    pass_rates: torch.Tensor, *, total: int = 0, n_min: int = 2, n_max: int = 0, prior: float = 0.5
) -> torch.Tensor:
    """Knapsack RL budgets (Li et al. 2025, arXiv:2509.25849): per-prompt rollout counts by dynamic programming.

    max Σ_q Value(N_q, p̂_q) s.t. Σ_q N_q = N_total, n_min ≤ N_q ≤ n_max, with Value(N, p) = (1 − p^N − (1−p)^N)·p(1−p)²
    (`knapsack_value`). p̂_q is the prompt's pass rate when last sampled (the collect stage keeps them, checkpointed;
    an unseen prompt gets `prior` [ours]). Ties (e.g. prompts with p̂ ∈ {0, 1}, whose value is 0 for every N) go to the
    more even split.

    Args:
        pass_rates: [P] estimated pass rates p̂_q in [0, 1].
        total: N_total (0: P × `rollout.group_size`, the uniform split's budget; set by the collect stage).
        n_min: the fewest rollouts a prompt gets (2: a group baseline needs two) [ours; the paper's is unknown].
        n_max: the most a prompt gets (0: as many as the budget allows; the paper observed up to 93).
        prior: p̂ of a prompt not seen yet, read by the collect stage [ours].

    Returns:
        [P] long budgets N_q, summing to `total`.
    """
    p = pass_rates.double().clamp(0, 1)
    num = p.numel()
    hi = total - (num - 1) * n_min if n_max <= 0 else n_max
    if num * n_min > total or num * hi < total:
        raise ValueError(f"knapsack_rl: {num} prompts cannot share {total} rollouts with {n_min} <= N <= {hi}")
    counts = torch.arange(n_min, hi + 1)
    # value of each (prompt, count) with a tiny convex penalty that breaks ties toward even splits
    gain = knapsack_value(counts[None, :], p[:, None]) - 1e-12 * counts[None, :].double() ** 2
    budgets = torch.arange(total + 1)
    before = budgets[:, None] - counts[None, :]  # (budget b, count k) -> the budget left for the earlier prompts
    best = torch.full((num + 1, total + 1), float("-inf"), dtype=torch.float64)
    best[0, 0] = 0.0
    choice = torch.zeros((num + 1, total + 1), dtype=torch.long)
    for q in range(1, num + 1):  # best[q, b] = max_k best[q-1, b-k] + gain(q, k)
        cand = torch.where(before >= 0, best[q - 1, before.clamp(min=0)], float("-inf")) + gain[q - 1][None, :]
        best[q], j = cand.max(1)
        choice[q] = counts[j]
    out, b = torch.zeros(num, dtype=torch.long), total
    for q in range(num, 0, -1):
        out[q - 1] = choice[q, b]
        b -= int(choice[q, b])
    return out


T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
"""Student-t 97.5% quantiles for 1..30 degrees of freedom (standard tables); past 30, the normal's 1.96."""


def t_half_width(n: int, std: float) -> float:
    """Half-width t_{0.975, n−1}·s/√n of the 95% t-interval on a mean from n ≥ 2 samples of standard deviation s."""
    return (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * std / math.sqrt(n)


@register(
    "sampler",
    "xrpo_alloc_recon",
    paper="Bamba et al. 2025, XRPO: Pushing the Limits of GRPO with Targeted Exploration, arXiv:2510.06672 "
    "(its rollout allocator; seeds_000_001.md 001-27)",
    tag="reconstructed (ALGORITHMS.md §6.2: the shrink rule; the Bernoulli spread from the last pass rate, the t "
    "table's use and n_min: ours)",
    facts={"budget"},
)
def xrpo_alloc_recon(
    pass_rates: torch.Tensor, *, total: int = 0, n_min: int = 2, n_max: int = 0, prior: float = 0.5
) -> torch.Tensor:
    """Reconstruction of XRPO's rollout allocator (arXiv:2510.06672); not the published rule.

    Every prompt starts with n_min rollouts; each further rollout of the budget goes, one at a time, to the prompt
    whose 95% t-interval half-width on its mean reward, h(n) = t_{0.975, n−1}·s_q/√n, shrinks most from one more
    sample: argmax_q h(n_q) − h(n_q + 1) (ties: the prompt with fewer rollouts, then the earlier one). s_q =
    √(p̂_q(1 − p̂_q)), the spread of a 0/1 reward at the prompt's pass rate when last seen (an unseen prompt: `prior`),
    so a prompt always solved or never solved keeps n_min. The allotment is made before generation from the last
    visit's estimate, where XRPO refines it as rollouts of this step arrive.

    Args:
        pass_rates: [P] estimated pass rates p̂_q in [0, 1].
        total: the step's rollouts (0: P × `rollout.group_size`; set by the collect stage).
        n_min: the fewest rollouts a prompt gets (2: a group baseline needs two).
        n_max: the most a prompt gets (0: no cap).
        prior: p̂ of a prompt not seen yet, read by the collect stage.

    Returns:
        [P] long budgets, summing to `total`.
    """
    p = pass_rates.double().clamp(0, 1)
    num = p.numel()
    cap = n_max if n_max > 0 else total
    if n_min < 2 or num * n_min > total or num * cap < total:
        raise ValueError(f"xrpo_alloc_recon: {num} prompts cannot share {total} rollouts with {n_min} <= N <= {cap} "
                         "(n_min >= 2: the interval needs two samples)")  # fmt: skip
    spread = (p * (1 - p)).sqrt().tolist()
    budgets = [n_min] * num
    for _ in range(total - num * n_min):
        gains = [t_half_width(n, s) - t_half_width(n + 1, s) if n < cap else -1.0
                 for n, s in zip(budgets, spread, strict=True)]  # fmt: skip
        q = max(range(num), key=lambda i: (gains[i], -budgets[i], -i))
        budgets[q] += 1
    return torch.tensor(budgets, dtype=torch.long)


@register(
    "sampler",
    "arpo_gui_replay",
    paper="Lu et al. 2025, ARPO: End-to-End Policy Optimization for GUI Agents with Experience Replay, "
    "arXiv:2505.16282",
    tag="memory (ALGORITHMS.md §6.3: one stored success replaces one rollout of an all-zero group); the success "
    "test and which rollout is replaced: ours",
    facts={"replay"},
)
def arpo_gui_replay(
    rewards: torch.Tensor, group_ids: torch.Tensor, stored: torch.Tensor, *, success_above: float = 0.0
) -> torch.Tensor:
    """ARPO's success replay (Lu et al. 2025, arXiv:2505.16282): a group whose rollouts all fail gets one of its task's
    stored successes in place of its last rollout, so the group has a reward spread to learn from.

    fail_q = max_i r_i ≤ `success_above` over the scored rollouts of prompt q; replace the last rollout of q when
    fail_q and a success of q is stored. The collect stage keeps the buffer (the latest success of each prompt, with
    its behaviour log-probs, checkpointed) and adds every new success after the replacement.

    Args:
        rewards: [N] the first reward function's scores (NaN: unscored).
        group_ids: [N] prompt index of each completion.
        stored: [P] bool, a success of prompt q is in the buffer.
        success_above: a rollout succeeds when its reward exceeds this (0: any positive reward).

    Returns:
        [N] bool, True for the rollouts to replace (at most one per group).
    """
    fail = unsolved_groups(rewards - success_above, group_ids)
    return fail & last_of_group(group_ids) & stored.to(group_ids.device)[group_ids]
