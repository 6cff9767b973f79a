"""Adaptive and penalty trust regions: bapo, mdpo, dro, dppo_tv (ALGORITHMS.md §2.3, §11)."""

from __future__ import annotations

import torch

from unipo.algos.ops import masked_sum
from unipo.algos.policy_losses._common import (
    Metrics,
    check_choice,
    check_clip,
    check_positive,
    clip_metrics,
    clipped_surrogate,
    log_ratio,
    no_clip_metrics,
    require,
    token_advantages,
    zero_masked,
)
from unipo.algos.registry import register

_TOL = 1e-9
_KL_ESTIMATORS = ("rho_log_rho", "k2", "k3")
_DRO_ANCHORS = ("old", "ref")


def bapo_candidates(
    low_start: float, low_max: float, high_start: float, high_max: float, step_low: float, step_high: float
) -> list[tuple[float, float]]:
    """The (c_low, c_high) pairs BAPO's Algorithm 1 visits, in order, if P never reaches ρ₀.

    Start at (a⁻, a⁺); while c_low + δ₂ ≤ b⁻: raise c_high by δ₁ if c_high + δ₁ ≤ b⁺, else raise c_low by δ₂.
    Integer step counts keep 1.2 + 36·0.05 from drifting past 3.0.
    """
    pairs = [(low_start, high_start)]
    i = j = 0
    while low_start + (j + 1) * step_low <= low_max + _TOL:
        if high_start + (i + 1) * step_high <= high_max + _TOL:
            i += 1
        else:
            j += 1
        pairs.append((low_start + j * step_low, high_start + i * step_high))
    return pairs


def bapo_code_candidates(
    low_start: float, low_max: float, high_start: float, high_max: float, step_low: float, step_high: float
) -> list[tuple[float, float]]:
    """The (c_low, c_high) pairs the official BAPO code visits (WooooDyy/BAPO `recipe/bapo/policy_loss.py`), in
    order: raise c_low by δ_low up to b⁻ (the last step cut at b⁻), then c_high by δ_high up to b⁺."""
    pairs = [(low_start, high_start)]
    low, high = low_start, high_start
    while low < low_max - _TOL:
        low = min(low + step_low, low_max)
        pairs.append((low, high))
    while high < high_max - _TOL:
        high = min(high + step_high, high_max)
        pairs.append((low, high))
    return pairs


def _positive_share(
    ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """P = Σ_{A>0} |min(ρA, clip(ρ, low, high)A)| / Σ |min(ρA, clip(ρ, low, high)A)| over valid tokens: a scalar."""
    term = torch.minimum(ratio * adv, torch.clamp(ratio, low, high) * adv).abs()
    positive = mask.bool() & (adv > 0)
    return masked_sum(term, positive) / masked_sum(term, mask).clamp(min=1e-12)


@register(
    "policy_loss",
    "bapo",
    paper="Xi et al. 2025, BAPO: Stabilizing Off-Policy RL for LLMs via Balanced Policy Optimization with Adaptive "
    "Clipping, arXiv:2510.18927",
    tag="checked: paper text, Algorithm 1",
)
def bapo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    target_pos_share: float = 0.4,
    bound_low_start: float = 0.6,
    bound_low_max: float = 0.9,
    bound_high_start: float = 1.2,
    bound_high_max: float = 3.0,
    step_low: float = 0.02,
    step_high: float = 0.05,
    search: str = "paper",
    dual_clip: float = 3.0,
) -> tuple[torch.Tensor, Metrics]:
    """Balanced PO with adaptive clipping (Xi et al. 2025, arXiv:2510.18927, Algorithm 1).

    ℓ = −min(ρ·A, clip(ρ, c_low, c_high)·A) with ABSOLUTE bounds chosen on this batch: from (a⁻, a⁺), widen c_high by
    δ₁ (up to b⁺), then raise c_low by δ₂ (up to b⁻), until P = Σ_{A>0}|clipped term| / Σ|clipped term| ≥ ρ₀.
    W = ρ·1[not clipped by (c_low, c_high)].

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        target_pos_share: ρ₀ (paper 0.4; the repo README says 0.5).
        bound_low_start: a⁻ (0.6), the first c_low.
        bound_low_max: b⁻ (0.9).
        bound_high_start: a⁺ (1.2), the first c_high.
        bound_high_max: b⁺ (3.0).
        step_low: δ₂ (0.02).
        step_high: δ₁ (0.05).
        search: "paper" (default: Algorithm 1, c_high first, no dual clip) or "code" (the official code, ALGORITHMS.md
            §2.3 note B: c_low first up to b⁻, then c_high, each last step cut at its maximum, and dual clip at
            ``dual_clip`` for A < 0). The code's statistic pos/neg ≥ r is P ≥ r/(1 + r): its yaml default r = 1 is
            ``target_pos_share=0.5``; recipe ``bapo_code`` sets the code's yaml values.
        dual_clip: c of the dual clip in "code" mode: for A < 0 the loss is at most −c·A (verl ``clip_ratio_c``, 3).

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "bapo/clip_low", "bapo/clip_high" and
        "bapo/pos_share" (the chosen c_low, c_high and P, on every token)).

    Note:
        The bounds depend on the tokens passed in: call it on the whole optimisation batch (the paper adapts per
        batch); with micro-batches each gets its own bounds. The search runs as tensor ops, without a host sync.
    """
    if not 0 < bound_low_start <= bound_low_max <= 1.0 <= bound_high_start <= bound_high_max:
        raise ValueError(
            "need 0 < bound_low_start <= bound_low_max <= 1 <= bound_high_start <= bound_high_max; got "
            f"{bound_low_start}, {bound_low_max}, {bound_high_start}, {bound_high_max}"
        )
    check_positive(step_low=step_low, step_high=step_high, dual_clip=dual_clip)
    check_choice("search", search, ("paper", "code"))
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    adv = token_advantages(advantages, logp)
    path = bapo_candidates if search == "paper" else bapo_code_candidates
    pairs = path(bound_low_start, bound_low_max, bound_high_start, bound_high_max, step_low, step_high)
    r = ratio.detach()
    shares = torch.stack([_positive_share(r, adv, mask, lo, hi) for lo, hi in pairs])  # (K,)
    reached = shares >= target_pos_share
    # first candidate reaching ρ₀, else the last one (bounds exhausted); argmax returns the first maximum
    idx = torch.where(reached.any(), reached.to(torch.int64).argmax(), len(pairs) - 1)
    # the chosen bounds picked on the device (index_select: no host sync)
    bounds = torch.tensor(pairs, dtype=logp.dtype, device=logp.device).index_select(0, idx.reshape(1))[0]
    c_low, c_high = bounds[0], bounds[1]
    loss, metrics = clipped_surrogate(ratio, adv, c_low, c_high)
    if search == "code":  # dual clip: a negative-advantage token's loss is at most −c·A
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    metrics["bapo/clip_low"] = c_low.expand_as(loss).clone()
    metrics["bapo/clip_high"] = c_high.expand_as(loss).clone()
    # index_select, not shares[idx]: indexing with a 0-d tensor calls .item() (a host sync on CUDA)
    metrics["bapo/pos_share"] = shares.index_select(0, idx.reshape(1)).expand_as(loss).clone()
    return loss, metrics


@register(
    "policy_loss",
    "mdpo",
    paper="Tomar et al. 2020, Mirror Descent Policy Optimization, arXiv:2005.09814",
    tag="memory",
)
def mdpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 1.0,
    kl_estimator: str = "rho_log_rho",
) -> tuple[torch.Tensor, Metrics]:
    """Mirror Descent PO, on-policy form: KL to π_old instead of a clip (Tomar et al. 2020, arXiv:2005.09814).

    ℓ = −ρ·A + (1/t_k)·KL̂(π_θ‖π_old) on the sampled token y ∼ π_old, with the default estimator
    KL̂ = ρ·log ρ − ρ + 1: under π_old its expectation is KL(π_θ‖π_old) and its expected gradient is
    ∇KL(π_θ‖π_old) exactly (ALGORITHMS.md §11, §13 C1). ∇ℓ = −(ρ·A − β·ρ·log ρ)·∇logp, β = 1/t_k.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_k = π_old, frozen for the m SGD steps of the iteration.
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        kl_coef: β = 1/t_k ≥ 0. The official code anneals t_k = 1 − k/K over iterations; the caller updates it
            (default 1.0 = 1/t_0).
        kl_estimator: "rho_log_rho" (default; unbiased, exact expected gradient), or the options "k3"
            (ρ⁻¹ − 1 + log ρ) and "k2" (½(log ρ)²). On π_old's samples k3 estimates χ²(π_old‖π_θ) − KL(π_old‖π_θ),
            not KL(π_θ‖π_old), and both options match ∇KL(π_θ‖π_old) only to first order around ρ = 1.

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0, "ratio/mean" = ρ, "kl/old" = the KL estimate).

    Note:
        The official code uses the exact KL of the categorical head; the sampled-token estimate is the LLM reading
        (the exact form over the vocabulary is `kl_full`).
    """
    check_choice("kl_estimator", kl_estimator, _KL_ESTIMATORS)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0; got {kl_coef}")
    lr = log_ratio(logp, old_logp, mask)
    ratio = torch.exp(lr)
    if kl_estimator == "rho_log_rho":
        kl = ratio * lr - ratio + 1.0
    elif kl_estimator == "k3":
        kl = torch.exp(-lr) - 1.0 + lr
    else:
        kl = 0.5 * lr**2
    loss = -token_advantages(advantages, logp) * ratio + kl_coef * kl
    metrics = no_clip_metrics(ratio, loss)
    metrics["kl/old"] = kl.detach()
    return loss, metrics


@register(
    "policy_loss",
    "dro",
    paper="verl `dro` policy loss (Direct Reward Optimization style), https://github.com/volcengine/verl",
    tag="checked: anchors.md formula; anchor policy: unipo's reading (π_old, as verl docs/algo/dro.md)",
    inputs=lambda p: {"ref_logp"} if p["anchor"] == "ref" else set(),
)
def dro(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    anchor: str = "old",
    kl_coef: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """verl's ``dro`` loss: log-prob times A with a quadratic proximal penalty (https://github.com/volcengine/verl).

    ℓ = −(log π_θ·A − ½β·(log π_θ − log π_anchor)²). ∇ℓ = −(A − β·log(π_θ/π_anchor))·∇logp, so W·A = A − β·log
    (π_θ/π_anchor): W = 1 at the anchor.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant); the anchor when anchor="old".
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        ref_logp: [N, T] log π_ref; required when anchor="ref".
        anchor: "old" (verl's docs/algo/dro.md: the penalty is on log π_θ − log π_old; unipo's reading, since the
            snapshot behind ALGORITHMS.md did not settle it) or "ref".
        kl_coef: β (verl ``dro_beta``, which has no default and must be > 0); the default 0.1 is ours.

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0, "ratio/mean" = π_θ/π_anchor).

    Note:
        The offline DRO paper loss is ``dro_offline`` (§7), a different component.
    """
    check_choice("anchor", anchor, _DRO_ANCHORS)
    check_positive(kl_coef=kl_coef)
    if anchor == "ref":
        anchor_logp = require(ref_logp, "ref_logp", tuple(logp.shape), 'anchor="ref" penalises log π_θ − log π_ref')
    else:
        anchor_logp = old_logp
    diff = log_ratio(logp, anchor_logp, mask)
    loss = -(zero_masked(logp, mask) * token_advantages(advantages, logp) - 0.5 * kl_coef * diff**2)
    return loss, no_clip_metrics(torch.exp(diff), loss)


@register(
    "policy_loss",
    "dppo_tv",
    paper="Qi et al. 2026, Rethinking the Trust Region in LLM Reinforcement Learning (DPPO-Binary-TV), "
    "arXiv:2602.04879",
    tag="checked: verl core_algos.py compute_policy_loss_dppo_tv (read from a fork's copy for this "
    "implementation; ALGORITHMS.md lists the formula as unknown)",
)
def dppo_tv(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.15,
    clip_high: float = 0.15,
    ratio_cap: float = 1e4,
) -> tuple[torch.Tensor, Metrics]:
    """DPPO-Binary-TV: a probability-difference trust region (Qi et al. 2026, arXiv:2602.04879; verl ``dppo_tv``).

    ℓ = −A·sg(min(ρ, C))·log π_θ·1_valid with 1_valid = [π_θ − π_old ≤ δ_high] if A > 0 else
    [π_θ − π_old ≥ −δ_low] (probabilities of the sampled token, detached). W = min(ρ, C)·1_valid.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        clip_low: δ_low, the TV threshold below (verl reads clip_ratio_low). Default 0.15, verl's DPPO example
            (`examples/dppo_trainer`), which carries the paper's recommendation.
        clip_high: δ_high, the TV threshold above (default 0.15, as δ_low).
        ratio_cap: C, the truncated-IS cap that replaces dual clip. Default 1e4, the DPPO example's `clip_ratio_c`:
            effectively no truncation, as the paper recommends (§5.4). verl's generic actor default is 3 (its code
            falls back to 20 only when the key is absent); pass 3.0 to match a plain verl actor.

    Returns:
        (per-token loss [N, T], metrics: "clip/frac" = outside the TV region ("clip/frac_low" for A ≤ 0,
        "clip/frac_high" for A > 0), "ratio/mean" = ρ, "clip/frac_cap" = valid tokens with ρ > C).

    Note:
        The value is −w·A·logp (verl's form), not the PPO value form.
    """
    check_clip(clip_low, clip_high)
    check_positive(ratio_cap=ratio_cap)
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    adv = token_advantages(advantages, logp)
    r = ratio.detach()
    prob_diff = torch.exp(zero_masked(logp.detach(), mask)) - torch.exp(zero_masked(old_logp.detach(), mask))
    high = (adv > 0) & (prob_diff > clip_high)
    low = (adv <= 0) & (prob_diff < -clip_low)
    valid = ~(high | low)
    loss = -adv * torch.clamp(r, max=ratio_cap) * zero_masked(logp, mask) * valid
    metrics = clip_metrics(low, high, r, loss)
    metrics["clip/frac_cap"] = (valid & (r > ratio_cap)).to(loss.dtype)
    return loss, metrics
