"""Where each trainer input comes from: one table that the config-time check and the on-policy trainer both read.

A component declares the inputs it uses (`algos.registry.register(..., inputs=...)`, as a function of its bound
hyperparameters); this table says which stage of the on-policy step produces each one. A component may only use an
input produced at or before its own stage: an advantage estimator cannot take the update's current log-probs, and
one that takes `ref_logp` makes the reference forward run before the advantages. An input that no stage produces
for a component is a config-time error naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

import torch

from unipo.algos.ops import logprobs_from_logits
from unipo.algos.registry import TRAINER_INPUTS
from unipo.algos.regularizers import lp_reg_proxy_logp
from unipo.rollout.batch import Origin, Rollouts


class Stage(IntEnum):
    """The stages of one on-policy step, in order (a later stage sees what every earlier one produced)."""

    COLLECT = 0
    """generate -> score -> sampler: the batch, its rewards and the sampler's log-probs."""
    REFERENCE = 1
    """the reference policy's (and a frozen teacher's) log-probs of the batch (run only when a bound component needs
    them)."""
    SHAPE = 2
    """reward shapers (kind `reward`), in the recipe's order, on the combined rewards."""
    ADVANTAGE = 3
    """advantages from rewards (and, for some estimators, reference and old log-probs)."""
    UPDATE = 4
    """per micro-batch: current log-probs, entropy and the values derived from the current logits."""


PRODUCED_AT: dict[str, Stage] = {
    "rewards": Stage.COLLECT,
    "group_ids": Stage.COLLECT,
    "completion_ids": Stage.COLLECT,
    "truncated": Stage.COLLECT,
    "rollout_logp": Stage.COLLECT,
    # on-policy, the parameters that sampled the batch are the update's first-pass parameters: before the update,
    # old log-probs are the sampler's (identical up to the numerics of one forward); in the update, the first
    # pass's detached log-probs
    "old_logp": Stage.COLLECT,
    "progress": Stage.COLLECT,
    "baseline_rewards": Stage.COLLECT,  # the reward of a greedy decode of each prompt (ReMax), per completion
    # [N, T+1] Monte Carlo values of cut states: continuations sampled from prefixes of the batch (SPO), after collect
    "segment_values": Stage.COLLECT,
    "generator": Stage.COLLECT,
    "demo_mask": Stage.COLLECT,  # [N] the completions that are demonstrations (a `demonstrations` sampler's)
    "lengths": Stage.COLLECT,  # [N] completion lengths in tokens
    "max_len": Stage.COLLECT,  # the token budget, rollout.max_new_tokens
    "correct": Stage.COLLECT,  # [N] the first reward function scored >= 1
    "reward_components": Stage.COLLECT,  # [N, K] each reward function's score (NaN: None or failed)
    "prompt_keys": Stage.COLLECT,  # N strings identifying each completion's prompt
    "hint_mask": Stage.COLLECT,  # [N, T] tokens forced from the reference (an `inpaint` sampler's, kept in the loss)
    "retry_pairs": Stage.COLLECT,  # [N] a failed attempt and its retry share an id >= 0 (a `retry` sampler's), else -1
    "turn_ids": Stage.COLLECT,  # [N, T] each token's policy turn, -1 on the environment's tokens (multi-turn)
    "turn_rewards": Stage.COLLECT,  # per trajectory, the environment's reward after each turn (multi-turn)
    "state_keys": Stage.COLLECT,  # per trajectory, the canonical state each turn acted in (multi-turn)
    "turn_info": Stage.COLLECT,  # per trajectory, each environment step's `info` dict (multi-turn)
    "ref_logp": Stage.REFERENCE,
    "teacher_logp": Stage.REFERENCE,  # a frozen teacher's log-probs of the sampled tokens (`model.teacher_path`)
    # [N, T, V] the reference's log-softmax at every completion position (same forward as `ref_logp`)
    "ref_logits": Stage.REFERENCE,
    # [N, T] Σ_v π_old(v)² and Σ_v π_old(v)³ per position: a no-grad forward of the policy before it moves (verl's
    # old-log-prob pass), run only when a component declares one of them
    "sum_pi_squared": Stage.REFERENCE,
    "sum_pi_cubed": Stage.REFERENCE,
    # [N, T] per-token rewards from a shaper with the fact `token_rewards` (RTO), for a critic that takes them
    "token_rewards": Stage.SHAPE,
    "advantages": Stage.ADVANTAGE,
    "target_values": Stage.ADVANTAGE,  # [N, T+1] a TD critic's target network's values (fact `td_replay`)
    "logp": Stage.UPDATE,
    "logits": Stage.UPDATE,  # [N, T, V] the current policy's logits (temperature-scaled), with their graph
    "entropy": Stage.UPDATE,
    "proxy_logp": Stage.UPDATE,
    "tempered_old_logp": Stage.UPDATE,
}
"""The stage that produces each trainer input."""

USED_AT: dict[str, Stage] = {
    "reward": Stage.SHAPE,
    "advantage": Stage.ADVANTAGE,
    "adv_post": Stage.ADVANTAGE,
    "credit": Stage.ADVANTAGE,
    "critic": Stage.ADVANTAGE,
    "policy_loss": Stage.UPDATE,
    "aggregation": Stage.UPDATE,
    "kl": Stage.UPDATE,
    "token_weight": Stage.UPDATE,
    "regularizer": Stage.UPDATE,
}
"""The stage at which components of each kind run in the on-policy trainer."""

assert PRODUCED_AT.keys() == TRAINER_INPUTS, "every declared trainer input has exactly one producer"

UPDATE_INPUTS = frozenset(name for name, stage in PRODUCED_AT.items() if stage is Stage.UPDATE)
"""Inputs that exist only inside the update's micro-batch loop. A token weight that reads none of them is computed
once on the whole batch before the loop, so that its batch statistics (quantiles, group overlaps) do not depend on
how the batch is cut into micro-batches."""


def batch_inputs(batch: Rollouts) -> dict[str, torch.Tensor]:
    """The inputs read off a batch's own fields (of the whole batch or of a micro-batch)."""
    return {
        "group_ids": batch.advantage_groups,
        "completion_ids": batch.completion_ids,
        "truncated": batch.truncated,
        "demo_mask": batch.origin == Origin.DEMONSTRATION,
        "hint_mask": batch.forced,
        "retry_pairs": batch.pairs,
    }


def turn_inputs(batch: Rollouts) -> dict[str, Any]:
    """The turn data of a multi-turn batch, as credit and TD critics take it."""
    return {"turn_ids": batch.turn_ids, "turn_rewards": batch.extras["turn_rewards"],
            "state_keys": batch.extras["state_keys"]}  # fmt: skip


def _tempered_old_logp(logits: torch.Tensor, ids: torch.Tensor, params: dict, temperature: float) -> torch.Tensor:
    return logprobs_from_logits(logits * (temperature / params["target_temperature"]), ids)


FROM_LOGITS: dict[str, Callable[[torch.Tensor, torch.Tensor, dict, float], torch.Tensor]] = {
    "proxy_logp": lambda logits, ids, params, _: lp_reg_proxy_logp(logits, ids, min_p=params["min_p"]),
    "tempered_old_logp": _tempered_old_logp,
}
"""Update-stage inputs computed from the sampling policy's logits (scaled by the sampling temperature), each from
(logits, token ids, the hyperparameters of the component that declares it, the sampling temperature): Lp-Reg's
min-p proxy log-probs (its `min_p`) and DCPO's log-probs at its `target_temperature`."""


def unavailable(kind: str, needs: frozenset[str]) -> list[str]:
    """The inputs in `needs` that no stage at or before a `kind` component's stage produces."""
    stage = USED_AT[kind]
    return sorted(n for n in needs if PRODUCED_AT[n] > stage)


PURE_ONLY: dict[tuple[str, str], str] = {}
"""Registered components that no trainer can run yet, with the reason: `unipo list` and docs/algorithms.md show
them as "pure only", and the on-policy trainer refuses them at setup with this reason."""

INJECTED_BY: dict[str, str] = {"demo_mask": "demonstrations", "hint_mask": "inpaint", "retry_pairs": "retry"}
"""Inputs that mark injected samples, and the sampler fact (registry.FACTS) whose sampler injects them: a component
that reads one needs such a sampler in its recipe."""

NEEDS_REFERENCE = frozenset({"demonstrations", "hints", "roll_in", "inpaint", "ground_truth", "tiered_hints"})
"""Sampler facts that read each row's reference solution (`solution`, else `answer`)."""

RUNS_IN: dict[str, str] = {
    "advantage": "rl",
    "adv_post": "rl (advantage stage, after the estimator or the critic)",
    "credit": "rl (advantage stage, on multi-turn trajectories: `algo.credit` with an `env`)",
    "policy_loss": "rl",
    "aggregation": "rl",
    "token_weight": "rl",
    "kl": "rl",
    "regularizer": "rl",
    "sampler": "rl (collect stage)",
    "reward": "rl (shape stage, `algo.shaping`)",
    "critic": "rl (advantage stage, with a value model trained beside the policy)",
    "controller": "rl (after-step stage, moving a component's state)",
    "preference": "preference",
    "online": "online_preference",
    "classic": "unipo verify classic (gymnasium environments, unipo.testbeds.classic)",
}
"""The trainer that runs the components of each kind; a kind not listed has no trainer yet."""


ALWAYS_RUN: dict[tuple[str, str], str] = {
    ("reward", "weighted_sum"): "every trainer: it combines the reward functions' scores (not a shaper to list)",
    ("reward", "soft_multichoice"): "every trainer, as the reward function `rewards=[{name: soft_multichoice}]` "
    "(a scoring rule, not a shaper)",
    ("reward", "judge_expected_score"): "every trainer, as the reward function `rewards=[{name: judge, path: …}]` "
    "(a scoring rule, not a shaper)",
}
"""Components every trainer runs on its own (a recipe does not list them)."""

ELSEWHERE: dict[tuple[str, str], str] = {
    ("reward", "barfi"): "unipo verify barfi (a tabular MDP, unipo.testbeds.barfi: its bilevel update of φ needs the "
    "policy's Hessian, classic RL only, ALGORITHMS.md §5.1)",
}
"""Components of an on-policy kind that run outside the on-policy trainer, and where."""


def where_it_runs(kind: str, name: str) -> str:
    """`rl`, ..., or `pure only: <reason>` (or `no trainer yet`) for `unipo list` and the catalogue."""
    if (kind, name) in ALWAYS_RUN:
        return ALWAYS_RUN[kind, name]
    if (kind, name) in ELSEWHERE:
        return ELSEWHERE[kind, name]
    if (kind, name) in PURE_ONLY:
        return f"pure only: {PURE_ONLY[kind, name]}"
    return RUNS_IN.get(kind, "no trainer yet")
