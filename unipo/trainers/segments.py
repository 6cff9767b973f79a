"""SPO's estimation stage: Monte Carlo values of cut states, for the `spo_segment` advantage (ALGORITHMS.md §1.2).

Between the collect and advantage stages, each completion's cut states (`algos.advantages.spo_cut_states`) are
valued by sampling `mc_samples` continuations from them: the completion's first s tokens are forced at the start of a
new completion of the same prompt, the policy finishes it within the same token budget, and the reward functions
score the whole reply. Identical (prompt, prefix) states are sampled once, as the official code deduplicates its
queries. A state none of whose continuations could be scored stays NaN (no value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unipo.algos.advantages import spo_cut_states
from unipo.trainers.common import Algo, Timer, bound_params
from unipo.trainers.generation import generate_and_score

if TYPE_CHECKING:
    from unipo.rollout.batch import Rollouts
    from unipo.trainers.rl import RLState


def segment_values(s: RLState, algo: Algo, batch: Rollouts, timer: Timer) -> tuple[torch.Tensor, dict[str, float]]:
    """(N, T+1) Monte Carlo values of the batch's cut states (NaN elsewhere), and the stage's metrics."""
    params = bound_params(algo.advantage)
    mask = batch.completion_mask.bool()
    cuts = spo_cut_states(batch.rollout_logp, mask, prob_threshold=params["prob_threshold"],
                          cut_interval=params["cut_interval"])  # fmt: skip
    values = torch.full(cuts.shape, float("nan"), device=cuts.device)
    states: dict[tuple[int, tuple[int, ...]], list[tuple[int, int]]] = {}  # (prompt row, prefix) -> its cut states
    ids = batch.completion_ids.tolist()
    for i, c in cuts.nonzero().tolist():
        states.setdefault((int(batch.group_ids[i]), tuple(ids[i][:c])), []).append((i, c))
    k = int(params["mc_samples"])
    stats = {"spo/cut_states": cuts.sum().item() / batch.num_completions, "spo/continuations": float(len(states) * k)}
    if not states:
        return values, stats
    keys = list(states)
    forced = [list(prefix) for _, prefix in keys for _ in range(k)]
    _, per_fn = generate_and_score(s, [batch.rows[g] for g, _ in keys], timer, forced=forced, n=[k] * len(keys))
    scores = s.scorer.combine(per_fn).view(len(keys), k)
    scored = ~scores.isnan()
    mean = torch.nan_to_num(scores).sum(1) / scored.sum(1).clamp(min=1)
    estimates = torch.where(scored.any(1), mean, float("nan")).to(values.device)
    for j, key in enumerate(keys):
        for i, c in states[key]:
            values[i, c] = estimates[j]
    stats["spo/value_mean"] = float(estimates[~estimates.isnan()].mean()) if scored.any() else float("nan")
    return values, stats
