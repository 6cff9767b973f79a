"""Reconstructions registered under ``<id>_recon`` (ALGORITHMS.md §0.2 R2, §2.3).

Each formula was made up to fit its paper's abstract. It is NOT the published rule: every docstring says so first,
and each loss logs a one-time warning the first time it is called. The plain ids (``etr``, ``dispo``, ``r2vpo``,
``dcpo_dist``) stay unregistered until the papers' rules are checked (R3).
"""

from __future__ import annotations

import torch

from unipo.algos.policy_losses._common import (
    LOG_RATIO_BOUND,
    Metrics,
    check_choice,
    check_clip,
    clip_metrics,
    clipped_surrogate,
    const_log_ratio,
    group_mean,
    log_ratio,
    no_clip_metrics,
    require,
    token_advantages,
    zero_masked,
)
from unipo.algos.policy_losses.clipped import ppo_clip
from unipo.algos.registry import Controlled, register, warn_reconstruction

_OUT_OF_RANGE = ("mask", "cap")

_ETR = "ETR (Zhang et al. 2026, arXiv:2601.03723)"
_DISPO = "DISPO (Karaman et al. 2026, arXiv:2602.00983)"
_R2VPO = "R²VPO (Luo et al. 2026, arXiv:2601.03320)"
_DCPO = "DCPO, Distribution-Centric PO (Li et al. 2026, arXiv:2601.12730)"


def _group_reward_var(rewards: torch.Tensor, group_ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Population variance of the rewards in each response's group: (N,) -> (N, 1)."""
    r = rewards.detach().to(like.dtype)
    centred = r - group_mean(r, group_ids)
    return group_mean(centred**2, group_ids)[:, None]


@register(
    "policy_loss",
    "etr_recon",
    paper="Zhang et al. 2026, ETR: Elastic Trust Regions, arXiv:2601.03723",
    tag="reconstructed",
)
def etr_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rewards: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    adv_coef: float = 0.5,
    adv_max: float = 2.0,
    var_coef: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of ETR (Zhang et al. 2026, arXiv:2601.03723) from its abstract; not the published rule.

    PPO clip with elastic half-widths ε_{i,t} = ε₀·g(|A|)·h(σ²_q): g(a) = 1 + κ₁·min(a, a_max) widens the region
    for confident advantages, h = 1 + κ₂·min(4σ²_q, 1) for prompts with mixed outcomes (4σ² = 4p(1−p) for 0/1
    rewards). ℓ = −min(ρA, clip(ρ, 1−ε_low·g·h, 1+ε_high·g·h)·A); W = ρ·1[not clipped by the elastic bounds].

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        rewards: [N] rewards; required when var_coef ≠ 0.
        group_ids: [N] prompt index; required when var_coef ≠ 0.
        clip_low: ε₀ below.
        clip_high: ε₀ above.
        adv_coef: κ₁ ≥ 0 (ours; the paper's function is unknown).
        adv_max: a_max, the |A| beyond which g stops growing (ours).
        var_coef: κ₂ ≥ 0 (ours).

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "etr/scale" = g·h).
    """
    warn_reconstruction("etr_recon", _ETR)
    check_clip(clip_low, clip_high)
    if adv_coef < 0 or var_coef < 0 or adv_max < 0:
        raise ValueError(f"adv_coef, adv_max and var_coef must be >= 0; got {adv_coef}, {adv_max}, {var_coef}")
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    adv = token_advantages(advantages, logp)
    scale = 1.0 + adv_coef * adv.abs().clamp(max=adv_max)
    if var_coef != 0:
        n = logp.shape[0]
        rewards = require(rewards, "rewards", (n,), "etr_recon scales the region by the group reward variance")
        group_ids = require(group_ids, "group_ids", (n,), "the reward variance is taken per prompt group")
        scale = scale * (1.0 + var_coef * (4.0 * _group_reward_var(rewards, group_ids, logp)).clamp(max=1.0))
    loss, metrics = clipped_surrogate(ratio, adv, 1.0 - clip_low * scale, 1.0 + clip_high * scale)
    metrics["etr/scale"] = scale.expand_as(loss).detach()
    return loss, metrics


@register(
    "policy_loss",
    "dispo_recon",
    paper="Karaman et al. 2026, DISPO: Enhancing Training Efficiency and Stability in RL for LLM Mathematical "
    "Reasoning, arXiv:2602.00983",
    tag="mechanism checked: abstract; formula reconstructed",
)
def dispo_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rewards: torch.Tensor | None = None,
    clip_low_correct: float = 0.2,
    clip_high_correct: float = 0.28,
    clip_low_incorrect: float = 0.2,
    clip_high_incorrect: float = 0.28,
    out_of_range: str = "cap",
    correct_threshold: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of DISPO (Karaman et al. 2026, arXiv:2602.00983) from its abstract; not the published rule.

    ℓ = −sg(w)·A·log π_θ with four bounds, (ε_low, ε_high) for correct and for incorrect responses.
    out_of_range="cap": w = clip(ρ, 1−ε_low^c, 1+ε_high^c) (CISPO-like, W = w); "mask": w = ρ·1[not clipped]
    with PPO's one-sided test (W = ρ·1[not (A > 0 ∧ ρ > 1+ε_high^c) ∧ not (A < 0 ∧ ρ < 1−ε_low^c)]).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        rewards: [N] rewards; a response is correct when its reward > correct_threshold. When None, A > 0 stands
            in for "correct" (the same split under group-centred 0/1 rewards).
        clip_low_correct: ε_low for correct responses (ours, as the three below: the paper's values are unknown).
        clip_high_correct: ε_high for correct responses.
        clip_low_incorrect: ε_low for incorrect responses.
        clip_high_incorrect: ε_high for incorrect responses.
        out_of_range: "cap" (default; ALGORITHMS.md marks the choice unknown) or "mask".
        correct_threshold: threshold on ``rewards`` (ours).

    Returns:
        (per-token loss [N, T], metrics: clip fractions (ρ outside the response's range, on the side that binds),
        "ratio/mean" = ρ).
    """
    warn_reconstruction("dispo_recon", _DISPO)
    check_choice("out_of_range", out_of_range, _OUT_OF_RANGE)
    check_clip(clip_low_correct, clip_high_correct)
    check_clip(clip_low_incorrect, clip_high_incorrect)
    ratio = torch.exp(log_ratio(logp, old_logp, mask)).detach()
    adv = token_advantages(advantages, logp)
    if rewards is not None:
        correct = require(rewards, "rewards", (logp.shape[0],), "correctness")[:, None] > correct_threshold
    else:
        correct = adv > 0
    lo = torch.where(correct, torch.full_like(ratio, 1.0 - clip_low_correct), 1.0 - clip_low_incorrect)
    hi = torch.where(correct, torch.full_like(ratio, 1.0 + clip_high_correct), 1.0 + clip_high_incorrect)
    if out_of_range == "cap":
        w, low, high = torch.clamp(ratio, lo, hi), ratio < lo, ratio > hi
    else:
        low, high = (adv < 0) & (ratio < lo), (adv > 0) & (ratio > hi)
        w = ratio * ~(low | high)
    loss = -w * adv * zero_masked(logp, mask)
    return loss, clip_metrics(low, high, ratio, loss)


@register(
    "policy_loss",
    "r2vpo_recon",
    paper="Luo et al. 2026, Ratio-Variance Regularized Policy Optimization for Efficient LLM Fine-tuning, "
    "arXiv:2601.03320",
    tag="reconstructed",
    state=Controlled("dual_coef", "r2vpo_dual_update", "ratio/sq_dev", (("var_target", "var_target"),
                                                                         ("dual_lr", "dual_lr"))),
)  # fmt: skip
def r2vpo_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    dual_coef: float = 0.1,
    var_target: float = 0.01,
    dual_lr: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of R²VPO (Luo et al. 2026, arXiv:2601.03320) from its abstract; not the published rule.

    ℓ = −ρ·A + λ·((ρ − 1)² − δ), no hard clip; ∇ℓ = −(ρ·A − 2λ·ρ·(ρ − 1))·∇logp, so W = ρ minus a pull towards
    ρ = 1. Under ``token_mean`` the penalty is λ·(mean (ρ−1)² − δ). The dual step is ``r2vpo_dual_update``.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        dual_coef: λ ≥ 0, the current dual variable (initial value ours); the caller updates it between steps.
        var_target: δ, the target second moment of ρ − 1 (ours).
        dual_lr: η_λ, read by ``r2vpo_dual_update`` (ours).

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0, "ratio/mean" = ρ, "ratio/sq_dev" = (ρ − 1)²).

    Note:
        The paper's reweighting of stale samples is unknown and not reconstructed.
    """
    warn_reconstruction("r2vpo_recon", _R2VPO)
    if dual_coef < 0:
        raise ValueError(f"dual_coef must be >= 0; got {dual_coef}")
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    sq_dev = (ratio - 1.0) ** 2
    loss = -token_advantages(advantages, logp) * ratio + dual_coef * (sq_dev - var_target)
    metrics = no_clip_metrics(ratio, loss)
    metrics["ratio/sq_dev"] = sq_dev.detach()
    return loss, metrics


@register(
    "policy_loss",
    "dcpo_dist_recon",
    paper="Li et al. 2026, Distribution-Centric Policy Optimization Dominates Exploration-Exploitation Trade-off, "
    "arXiv:2601.12730",
    tag="mechanism checked: README; combination reconstructed",
)
def dcpo_dist_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    tempered_old_logp: torch.Tensor | None = None,
    reg_coef: float = 0.1,
    target_temperature: float = 1.5,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of DCPO (Li et al. 2026, arXiv:2601.12730) from its abstract; not the published rule.

    ℓ = ℓ_ppo(ρ, A) − λ·sg(ρ^T)·ρ·A with ρ^T = π^T_old/π_old, π^T_old being π_old at a higher temperature (the
    "double importance sampling" of the authors' README; the combination is ours). W = ρ·(1[not clipped] + λ·ρ^T).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        tempered_old_logp: [N, T] log π^T_old of the sampled tokens, from π_old's logits divided by the temperature
            that hits the target entropy (H₀ = 0.25 reported best); required. Choosing T needs the logits, so the
            caller computes it.
        target_temperature: the temperature T the on-policy trainer uses to build ``tempered_old_logp`` (a fixed T
            instead of the paper's entropy-targeted one: ours). Not used here.
        reg_coef: λ (unknown in ALGORITHMS.md; 0.1 is ours).
        clip_low: ε_low of the PPO term.
        clip_high: ε_high of the PPO term.

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "dcpo/tempered_ratio" = ρ^T).
    """
    warn_reconstruction("dcpo_dist_recon", _DCPO)
    tempered_old_logp = require(
        tempered_old_logp, "tempered_old_logp", tuple(logp.shape), "the virtual target ratio π^T_old/π_old"
    )
    loss_ppo, metrics = ppo_clip(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    rho_t = torch.exp(torch.clamp(const_log_ratio(tempered_old_logp, old_logp, mask), max=LOG_RATIO_BOUND))
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    loss = loss_ppo - reg_coef * rho_t * ratio * token_advantages(advantages, logp)
    metrics["dcpo/tempered_ratio"] = rho_t
    return loss, metrics
