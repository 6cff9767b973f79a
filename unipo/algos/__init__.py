"""The pure layer: tensor math only (no models, no I/O, no config objects).

from unipo import algos
algos.get("advantage", "grpo")(rewards, group_ids)
"""

from unipo.algos import (  # noqa: F401  (registers components)
    advantages,
    aggregation,
    classic,
    controllers,
    credit,
    critics,
    curvature,
    kl,
    nash,
    policy_losses,
    preference,
    r3l,
    regularizers,
    reward_bonus,
    reward_models,
    reward_shaping,
    samplers,
    token_weights,
)
from unipo.algos.registry import KINDS, entries, entry, get, names, register

__all__ = ["KINDS", "entries", "entry", "get", "names", "register"]
