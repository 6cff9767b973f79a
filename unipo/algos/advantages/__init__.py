"""Advantage estimators (ALGORITHMS.md §1): one registry kind, ``advantage``, filled by the submodules below.

Signature of the family: ``fn(rewards [N] or [N, K], group_ids [N], *, mask=None, <extra keyword tensors>,
**hparams) -> advantages [N] or [N, T]``. ``group_ids`` are arbitrary integers (the prompt of each completion);
they need not be contiguous or sorted. Extra inputs (``old_logp``, ``baseline_rewards``, ...) are keyword tensors;
the trainer passes only what a signature asks for.

A NaN reward (a reward function that returned None) is left out of every mean and std and gets A = 0, as TRL does.
Groups are sized by their valid (non-NaN) rewards, so a group of two with one NaN is a singleton.

Modules: ``group`` (group baselines), ``baselines`` (REINFORCE-style and per-token baselines), ``multi`` (multi-reward
and adaptive normalisation), ``shaping`` (reweighting a group advantage), ``segment`` (SPO's Monte Carlo segment
values), ``recon`` (reconstructions, rule R2).
"""

from unipo.algos.advantages import baselines, group, multi, recon, segment, shaping  # noqa: F401  (registers)
from unipo.algos.advantages.baselines import (
    flash_reinforce,
    optimal_token_baseline,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
    tir_otb,
)
from unipo.algos.advantages.group import dr_grpo, gpg, group_mean_batch_std, grpo, grpo_passk, opo, p3o_pairwise, rloo
from unipo.algos.advantages.multi import bnpo, gdpo
from unipo.algos.advantages.post import adv_post
from unipo.algos.advantages.recon import a_grae_recon, copo_recon, g2rpo_recon
from unipo.algos.advantages.segment import spo_cut_states, spo_segment
from unipo.algos.advantages.shaping import red_weight, xrpo_sharpen

__all__ = [
    "a_grae_recon",
    "adv_post",
    "bnpo",
    "copo_recon",
    "dr_grpo",
    "flash_reinforce",
    "g2rpo_recon",
    "gdpo",
    "gpg",
    "group_mean_batch_std",
    "grpo",
    "grpo_passk",
    "opo",
    "optimal_token_baseline",
    "tir_otb",
    "p3o_pairwise",
    "red_weight",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "rloo",
    "spo_cut_states",
    "spo_segment",
    "xrpo_sharpen",
]
