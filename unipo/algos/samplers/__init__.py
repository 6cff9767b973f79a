"""Rollout samplers (ALGORITHMS.md §6): one registry kind, ``sampler``, filled by the submodules below. A sampler
decides which samples a step trains on; its registry facts (`registry.FACTS`) tell the trainer's collect stage how
it acts (a group filter when it has none).

Modules: ``filters`` (keep or drop scored completions), ``resampling`` (PF-PPO's reward-weighted resampling, AEPO's
temperature-switched samples), ``guidance`` (hints, demonstrations, roll-ins, drafts, ground truth, REFUEL's branch
turn), ``budget`` (per-prompt budgets and replayed successes: samplers with state across steps).
"""

from unipo.algos.samplers import budget, filters, guidance, resampling  # noqa: F401  (registers samplers)
from unipo.algos.samplers.budget import arpo_gui_replay, knapsack_rl, knapsack_value, xrpo_alloc_recon
from unipo.algos.samplers.filters import d3s_sample_recon, dynamic_sampling, low_var_group_filter, red_drop
from unipo.algos.samplers.guidance import (
    dr_po,
    ghpo,
    gt_in_group_recon,
    hpt,
    igpo_inpaint,
    igrpo,
    refuel_branch,
    scaf_grpo,
)
from unipo.algos.samplers.resampling import aepo, aepo_temperature, pf_ppo

__all__ = [
    "aepo",
    "aepo_temperature",
    "arpo_gui_replay",
    "d3s_sample_recon",
    "dr_po",
    "dynamic_sampling",
    "ghpo",
    "gt_in_group_recon",
    "hpt",
    "igpo_inpaint",
    "igrpo",
    "knapsack_rl",
    "knapsack_value",
    "low_var_group_filter",
    "pf_ppo",
    "red_drop",
    "refuel_branch",
    "scaf_grpo",
    "xrpo_alloc_recon",
]
