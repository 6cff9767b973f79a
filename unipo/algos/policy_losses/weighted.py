"""REINFORCE-style losses −sg(w)·A·log π_θ, soft gates and NFT: reinforce, flash_reinforce, cispo, sapo, rec, nft
(§0.4, §2.1, §2.2).

Their value is −w·A·logp (or a gate), not the PPO value form; only the gradients are comparable across losses.
"""

from __future__ import annotations

import torch

from unipo.algos.policy_losses._common import (
    GSPO_LOG_RATIO_MAX,
    Metrics,
    check_choice,
    check_clip,
    check_positive,
    clip_metrics,
    group_mean,
    log_ratio,
    no_clip_metrics,
    require,
    seq_mean,
    straight_through_floor,
    token_advantages,
    zero_masked,
)
from unipo.algos.registry import register

_CAP_MODES = ("absolute", "relative")
_REC_CLIP_MODES = ("none", "one_side", "two_side", "ring", "gspo_one_side")
_REC_WEIGHTS = ("none", "ratio", "seq_ratio")


@register(
    "policy_loss",
    "reinforce",
    paper="Williams 1992, REINFORCE; verl `gpg` loss (Chu et al. 2025, GPG, arXiv:2504.02546)",
    tag="checked: verl",
)
def reinforce(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, Metrics]:
    """On-policy policy gradient, verl's ``gpg`` loss (Williams 1992; Chu et al. 2025, GPG, arXiv:2504.02546).

    ℓ = −A·log π_θ(y_t). W = 1. With A = 1 this is the NLL (SFT) loss.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old; only used for the "ratio/mean" metric.
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0 and "ratio/mean" = ρ).
    """
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    loss = -token_advantages(advantages, logp) * zero_masked(logp, mask)
    return loss, no_clip_metrics(ratio, loss)


@register(
    "policy_loss",
    "flash_reinforce",
    paper="FlashREINFORCE, official code https://github.com/yifanzhang-pro/FlashREINFORCE (flashreinforce/loss.py)",
    tag="checked: official code",
)
def flash_reinforce(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollout_logp: torch.Tensor | None = None,
    delta: float = 3e-3,
) -> tuple[torch.Tensor, Metrics]:
    """FlashREINFORCE's detached-ratio loss (https://github.com/yifanzhang-pro/FlashREINFORCE, ``flashreinforce_loss``).

    ℓ_{i,t} = −g_i·sg(π_θ(y_t)/π_b(y_t))·A_i·log π_θ(y_t), no clipping, with π_b the behaviour policy that sampled
    and the sequence gate g_i = 1[KL̄_i ≤ δ], KL̄_i = (1/|y_i|)·Σ_t [p·log(p/q) + (1−p)·log((1−p)/(1−q))],
    p = π_b(y_t), q = sg(π_θ(y_t)), both clamped to [1e-6, 1 − 1e-6] (the Bernoulli KL of the sampled token's
    probability, averaged over the sequence, floored at 0). W = g_i·sg(ρ_b). Aggregate with ``seq_mean_token_mean``:
    a gated-out sequence keeps its slot in both denominators, as in the official code.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old; the behaviour log-probs when ``rollout_logp`` is not given.
        advantages: [N] or [N, T]; the method's are the ``flash_reinforce`` advantage (batch-mean baseline).
        mask: [N, T] loss mask.
        rollout_logp: [N, T] log π_b of the engine that actually sampled (the trainer supplies the sampler's).
        delta: δ ≥ 0, the gate's threshold (official default 3e-3; ``inf`` disables the gate).

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0, "ratio/mean" = π_θ/π_b, "flash_reinforce/seq_kl" = KL̄_i
        and "flash_reinforce/admitted" = g_i on every token of the sequence).

    Note:
        The official code's optional entropy filter on failed rows (q < 1) is not implemented; q = 1 is the paper's
        base method.
    """
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0; got {delta}")
    behaviour = old_logp if rollout_logp is None else require(rollout_logp, "rollout_logp", tuple(logp.shape), "π_b")
    with torch.no_grad():
        p = torch.exp(zero_masked(behaviour.detach(), mask)).clamp(1e-6, 1 - 1e-6)
        q = torch.exp(zero_masked(logp.detach(), mask)).clamp(1e-6, 1 - 1e-6)
        bernoulli_kl = p * (p.log() - q.log()) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))
        lengths = mask.sum(-1).clamp(min=1)
        seq_kl = (zero_masked(bernoulli_kl, mask).sum(-1) / lengths).clamp(min=0)
        admitted = (seq_kl <= delta)[:, None] & mask.bool()
        ratio = torch.exp(torch.where(admitted, log_ratio(logp, behaviour, mask).detach(), torch.zeros_like(logp)))
        weight = ratio * admitted
    loss = -weight * token_advantages(advantages, logp) * zero_masked(logp, mask)
    metrics = no_clip_metrics(ratio, loss)
    metrics["flash_reinforce/seq_kl"] = seq_kl[:, None].expand_as(logp)
    metrics["flash_reinforce/admitted"] = admitted.to(loss.dtype)
    return loss, metrics


@register(
    "policy_loss",
    "cispo",
    paper="MiniMax 2025, MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention (CISPO), "
    "arXiv:2506.13585",
    tag="checked: TRL, verl",
)
def cispo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cap: float = 5.0,
    cap_mode: str = "absolute",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped IS-weight policy optimisation (MiniMax 2025, MiniMax-M1, arXiv:2506.13585).

    ℓ = −sg(ŵ)·A·logp with ŵ = min(ρ, cap) (cap_mode="absolute", TRL) or clip(ρ, 1−ε_low, 1+ε_high)
    (cap_mode="relative", verl). W = sg(ŵ): a clipped token keeps a capped gradient instead of none.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        cap: upper bound on ŵ in "absolute" mode (TRL epsilon_high ≈ 5).
        cap_mode: "absolute" or "relative".
        clip_low: ε_low, used in "relative" mode.
        clip_high: ε_high, used in "relative" mode.

    Returns:
        (per-token loss [N, T], metrics {"clip/frac", "clip/frac_low", "clip/frac_high", "ratio/mean"}; here
        "clipped" means ŵ ≠ ρ; "clip/frac_low" is 0 in "absolute" mode).

    Note:
        The value is −ŵ·A·logp, not the PPO value form; only its gradient is comparable. The paper aggregates
        with ``token_mean``.
    """
    check_choice("cap_mode", cap_mode, _CAP_MODES)
    check_positive(cap=cap)
    check_clip(clip_low, clip_high)
    ratio = torch.exp(log_ratio(logp, old_logp, mask)).detach()
    if cap_mode == "absolute":
        weight = torch.clamp(ratio, max=cap)
        low = torch.zeros_like(ratio, dtype=torch.bool)
        high = ratio > cap
    else:
        weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
        low = ratio < 1.0 - clip_low
        high = ratio > 1.0 + clip_high
    loss = -weight * token_advantages(advantages, logp) * zero_masked(logp, mask)
    return loss, clip_metrics(low, high, ratio, loss)


@register(
    "policy_loss",
    "sapo",
    paper="Gao et al. 2025, Soft Adaptive Policy Optimization, arXiv:2511.20347",
    tag="checked: TRL, verl",
)
def sapo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[torch.Tensor, Metrics]:
    """Soft Adaptive Policy Optimization: a sigmoid gate instead of a hard clip (Gao et al. 2025, arXiv:2511.20347).

    ℓ = −(4/τ)·σ(τ(ρ−1))·A with τ = τ_pos if A > 0 else τ_neg. W = ρ·4σ_τ(1−σ_τ), σ_τ = σ(τ(ρ−1)); W(1) = 1 and
    W ≤ ρ. verl forces ``seq_mean_token_mean`` aggregation for it.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        tau_pos: τ_pos, gate temperature for A > 0 (TRL sapo_temperature_pos); must be > 0.
        tau_neg: τ_neg, for A ≤ 0 (TRL sapo_temperature_neg); must be > 0.

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0, "ratio/mean" = ρ, "sapo/gate" = 4σ_τ(1−σ_τ) = W/ρ).

    Note:
        The value is offset by the constant −2A/τ from ρ·A at ρ = 1; as τ → 0 the gradient tends to ρ·A's.
    """
    check_positive(tau_pos=tau_pos, tau_neg=tau_neg)
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    adv = token_advantages(advantages, logp)
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = -(4.0 / tau) * gate * adv
    metrics = no_clip_metrics(ratio, loss)
    g = gate.detach()
    metrics["sapo/gate"] = 4.0 * g * (1.0 - g)
    return loss, metrics


def _rec_keep(
    ratio: torch.Tensor,
    seq_ratio: torch.Tensor,
    adv: torch.Tensor,
    clip_mode: str,
    bounds: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """REC keep-mask and its low/high drop indicators (ratios detached)."""
    lo, hi, ring_lo, ring_hi = bounds
    r = seq_ratio if clip_mode == "gspo_one_side" else ratio
    nonneg, nonpos = adv >= 0, adv <= 0
    if clip_mode in ("one_side", "gspo_one_side"):
        drop_high, drop_low = nonneg & (r > hi), nonpos & (r < lo)
    elif clip_mode == "two_side":
        drop_high, drop_low = r > hi, r < lo
    elif clip_mode == "ring":
        drop_high = (r > hi) & ~(nonpos & (r >= ring_hi))
        drop_low = (r < lo) & ~(nonneg & (r <= ring_lo))
    else:
        drop_high = drop_low = torch.zeros_like(r, dtype=torch.bool)
    return ~(drop_low | drop_high), drop_low, drop_high


@register(
    "policy_loss",
    "rec",
    paper="Yao et al. 2025, Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (REC), arXiv:2509.24203",
    tag="checked: Trinity-RFT rec_policy_loss.py",
)
def rec(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_mode: str = "none",
    weight: str = "none",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ring_low: float = 0.6,
    ring_high: float = 2.0,
) -> tuple[torch.Tensor, Metrics]:
    """REC: REINFORCE with a clip-as-mask and an optional IS weight (Yao et al. 2025, arXiv:2509.24203; Trinity-RFT).

    ℓ = −sg(w)·A·log π_θ·1_keep, token-averaged (``token_mean``). W = sg(w)·1_keep, w ∈ {1, ρ, s_i}.
    Keep-masks (ratios detached): none; two_side ρ ∈ [1−ε_low, 1+ε_high]; one_side drops (A ≥ 0 ∧ ρ > 1+ε_high)
    and (A ≤ 0 ∧ ρ < 1−ε_low); ring keeps in-range ∪ {A ≥ 0, ρ ≤ 1−ε′_low} ∪ {A ≤ 0, ρ ≥ 1+ε′_high};
    gspo_one_side applies the one-side test to the GSPO sequence ratio s_i.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T]. The paper's GSM8K example uses the group-mean baseline without std.
        mask: [N, T] loss mask.
        clip_mode: "none", "one_side", "two_side", "ring" or "gspo_one_side".
        weight: "none" (w = 1), "ratio" (w = ρ) or "seq_ratio" (w = s_i = exp(mean_t log ρ)).
        clip_low: ε_low.
        clip_high: ε_high.
        ring_low: ε′_low of the ring mode (0.6).
        ring_high: ε′_high of the ring mode (2.0).

    Returns:
        (per-token loss [N, T], metrics: "clip/frac" = dropped by the keep-mask, "clip/frac_low"/"clip/frac_high"
        by side, "ratio/mean" = the ratio the mask tests (s_i for gspo_one_side, else ρ)).

    Note:
        ``rec`` (clip_mode="none", weight="none") ≡ ``reinforce``; (two_side, ratio) has ``ppo_clip``'s gradient
        on in-range tokens. The regularised variants (OPMD, AsymRE) are regularizers (§4).
    """
    check_choice("clip_mode", clip_mode, _REC_CLIP_MODES)
    check_choice("weight", weight, _REC_WEIGHTS)
    check_clip(clip_low, clip_high)
    if ring_low < 0 or ring_high < 0:
        raise ValueError(f"ring_low and ring_high must be >= 0; got ring_low={ring_low}, ring_high={ring_high}")
    lr = log_ratio(logp, old_logp, mask).detach()
    ratio = torch.exp(lr)
    seq_ratio = torch.exp(seq_mean(lr, mask))[:, None].expand_as(ratio)  # (N,) -> (N, T)
    adv = token_advantages(advantages, logp)
    bounds = (1.0 - clip_low, 1.0 + clip_high, 1.0 - ring_low, 1.0 + ring_high)
    keep, low, high = _rec_keep(ratio, seq_ratio, adv, clip_mode, bounds)
    w = {"none": torch.ones_like(ratio), "ratio": ratio, "seq_ratio": seq_ratio}[weight]
    loss = -(w * keep) * adv * zero_masked(logp, mask)
    tested = seq_ratio if clip_mode == "gspo_one_side" else ratio
    return loss, clip_metrics(low, high, tested, loss)


def _nft_rate(
    rewards: torch.Tensor, group_ids: torch.Tensor, threshold: float, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct [N, 1] bool, r̂_q = clip(group accuracy, 0.02, 0.98) [N, 1])."""
    correct = rewards.detach() > threshold
    rate = group_mean(correct.to(like.dtype), group_ids).clamp(0.02, 0.98)  # (N,), bounds from NVlabs/NFT
    return correct[:, None], rate[:, None]


@register(
    "policy_loss",
    "nft",
    paper="Chen et al. 2025, Bridging Supervised Learning and Reinforcement Learning in Math Reasoning "
    "(Negative-aware Fine-Tuning), arXiv:2505.18116",
    tag="checked: official code NVlabs/NFT dp_actor.py",
)
def nft(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rewards: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    neg_weight: float = 1.0,
    normalize: int = 1,
    clamp_positive: float = 0.0,
    clamp_negative: float = 1.0,
    correct_threshold: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """Negative-aware Fine-Tuning, token-ratio form (Chen et al. 2025, arXiv:2505.18116; NVlabs/NFT dp_actor.py).

    R_t = exp(min(log ρ_t, 10)), r̂ = clip(group accuracy, 0.02, 0.98). Correct: ℓ = −log max_st(R_t, c₊);
    wrong: ℓ = −neg_weight·log max_st((1 − r̂·R_t)/(1 − r̂), c₋); both × (1 − r̂) (normalize=1) or × √((1−r̂)/r̂)
    (normalize=2). max_st clamps the value, not the gradient. W·A = z·R/max_st(R, c₊) on correct responses and
    −z·neg_weight·r̂·R/((1−r̂)·max_st(proxy, c₋)) on wrong ones (z the normalize factor).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: unused: NFT derives its weights from ``rewards``; accepted for the family signature.
        mask: [N, T] loss mask.
        rewards: [N] verifier rewards (0/1 in the paper); required.
        group_ids: [N] prompt index of each response; required for the group accuracy r̂.
        neg_weight: weight of the wrong-answer term (1 = NFT, 0 = rejection-sampling fine-tuning).
        normalize: 0 (none), 1 (× (1 − r̂), the official scripts) or 2 (× √((1−r̂)/r̂)).
        clamp_positive: c₊, floor on R for correct responses. ALGORITHMS.md lists it as unknown; the default 0.0
            is unipo's, taken from the official ``config/nft_trainer.yaml`` and ``train_7B.sh``.
        clamp_negative: c₋ > 0, floor on the negative-policy ratio; default 1.0 is unipo's, from the same files.
        correct_threshold: a response is correct when its reward is > this (ours; 0.5 splits 0/1 rewards).

    Returns:
        (per-token loss [N, T], metrics: "clip/frac" = the straight-through floor is active ("clip/frac_low" on
        correct, "clip/frac_high" on wrong responses), "ratio/mean" = R, "nft/correct_rate" = r̂).

    Note:
        The paper reduces with Σ_tokens / 1000 per batch (a constant normaliser: ``token_sum`` scaled by 1e-3).
        On-policy, 0/1 rewards, normalize=1, neg_weight=1: the gradient is ``reinforce``'s with A₊ = 1 − r̂ and
        A₋ = −r̂ (§13 U6). The paper's sequence-ratio variant is not implemented.
    """
    n = logp.shape[0]
    rewards = require(rewards, "rewards", (n,), "NFT splits responses into correct and wrong")
    group_ids = require(group_ids, "group_ids", (n,), "the accuracy r̂ is taken per prompt group")
    if normalize not in (0, 1, 2):
        raise ValueError(f"normalize={normalize!r} is not allowed; choose one of 0, 1, 2")
    check_positive(clamp_negative=clamp_negative)
    if clamp_positive < 0:
        raise ValueError(f"clamp_positive must be >= 0; got {clamp_positive}")
    big_r = torch.exp(torch.clamp(log_ratio(logp, old_logp, mask), max=GSPO_LOG_RATIO_MAX))
    correct, rate = _nft_rate(rewards, group_ids, correct_threshold, logp)
    proxy = (1.0 - rate * big_r) / (1.0 - rate)  # the implicit negative policy's ratio π⁻/π⁻_old
    positive = -torch.log(straight_through_floor(big_r, clamp_positive))
    negative = -torch.log(straight_through_floor(proxy, clamp_negative))
    loss = torch.where(correct, positive, neg_weight * negative)
    if normalize == 1:
        loss = loss * (1.0 - rate)
    elif normalize == 2:
        loss = loss * torch.sqrt((1.0 - rate) / rate)
    low = correct & (big_r.detach() < clamp_positive)
    high = ~correct & (proxy.detach() < clamp_negative)
    metrics = clip_metrics(low, high, big_r, loss)
    metrics["nft/correct_rate"] = rate.expand_as(loss).detach()
    return loss, metrics
