"""Engine-mismatch corrections: rollout_is and opsm (ALGORITHMS.md §2.2).

ALGORITHMS.md describes both as a weight or mask that multiplies ANY loss. The policy-loss signature has no slot for
an inner loss, so unipo registers each as a policy loss that wraps the PPO clipped surrogate (``ppo_clip``; its
clip values are this loss's ``clip_low`` / ``clip_high``) and takes the engine log-probs as the keyword tensor
``rollout_logp``. To correct another surrogate, multiply its per-token loss by ``rollout_is_weights(...)`` /
``opsm_keep(...)`` (pure functions below), the way verl passes ``rollout_is_weights`` into every loss.
"""

from __future__ import annotations

import torch

from unipo.algos.ops import masked_mean, masked_sum
from unipo.algos.policy_losses._common import (
    LOG_RATIO_BOUND,
    Metrics,
    check_choice,
    check_positive,
    const_log_ratio,
    require,
    seq_mean,
    token_advantages,
    zero_masked,
)
from unipo.algos.policy_losses.clipped import ppo_clip
from unipo.algos.registry import register

_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "geo_rs")


def rollout_is_weights(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str = "token_truncate",
    cap: float = 2.0,
    cap_min: float = 0.0,
    geo_low: float = 0.999,
    geo_high: float = 1.001,
    normalize: bool = False,
) -> torch.Tensor:
    """Detached mismatch weights w [N, T] from ρ^roll_t = π_old/π_roll (the modes of ``rollout_is``)."""
    check_choice("mode", mode, _IS_MODES)
    check_positive(cap=cap)
    if not 0.0 <= cap_min <= cap:
        raise ValueError(f"need 0 <= cap_min <= cap; got cap_min={cap_min}, cap={cap}")
    if not 0.0 < geo_low <= geo_high:
        raise ValueError(f"need 0 < geo_low <= geo_high; got geo_low={geo_low}, geo_high={geo_high}")
    log_roll = const_log_ratio(old_logp, rollout_logp, mask)  # (N, T)
    if mode.startswith("token"):
        r = torch.exp(log_roll)
    elif mode == "geo_rs":
        r = torch.exp(seq_mean(log_roll, mask))[:, None].expand_as(log_roll)  # (N,) -> (N, T)
    else:
        log_seq = torch.clamp(masked_sum(log_roll, mask, dim=-1), -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        r = torch.exp(log_seq)[:, None].expand_as(log_roll)  # Π_t ρ^roll_t on every token of the sequence
    if mode.endswith("truncate"):
        w = torch.clamp(r, cap_min, cap)
    elif mode.endswith("mask"):
        w = r * ((r >= cap_min) & (r <= cap))
    else:  # geo_rs: a keep-mask only, no weight
        w = ((r >= geo_low) & (r <= geo_high)).to(r.dtype)
    if normalize and mode.startswith("token"):  # mean 1 over the valid tokens
        w = w / masked_mean(w, mask).clamp(min=1e-12)
    elif normalize:  # one weight per sequence: mean 1 over the sequences (verl `rollout_corr_helper.py`)
        lengths = mask.sum(-1)
        per_seq = masked_sum(w, mask, -1)[lengths > 0] / lengths[lengths > 0]
        w = w / per_seq.mean().clamp(min=1e-12)
    return zero_masked(w, mask).detach()


@register(
    "policy_loss",
    "rollout_is",
    paper="Yao et al. 2025, Your Efficient RL Framework Secretly Brings You Off-Policy RL Training (TIS), "
    "https://fengyao.notion.site/off-policy-rl",
    tag="checked: verl docs, TRL",
)
def rollout_is(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollout_logp: torch.Tensor | None = None,
    mode: str = "token_truncate",
    cap: float = 2.0,
    cap_min: float = 0.0,
    geo_low: float = 0.999,
    geo_high: float = 1.001,
    normalize: bool = False,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO-clip times an engine-mismatch weight (TIS: Yao et al. 2025, https://fengyao.notion.site/off-policy-rl).

    ρ^roll_t = π_old/π_roll ("decoupled"); ℓ = sg(w)·ℓ_ppo with w = min(ρ^roll, C) (token_truncate, TIS),
    ρ^roll·1[C_min ≤ ρ^roll ≤ C] (token_mask), the same on Π_t ρ^roll_t (sequence_*), or
    1[geo_low ≤ (Π_t ρ^roll_t)^{1/|y|} ≤ geo_high] (geo_rs). W = w·ρ·1[not clipped].

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (the trainer's recomputed log-probs; constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        rollout_logp: [N, T] log π_roll from the sampling engine; required.
        mode: "token_truncate", "token_mask", "sequence_truncate", "sequence_mask" or "geo_rs".
        cap: C (verl 2.0, the TIS default used here; TRL uses sequence_mask with C = 3.0).
        cap_min: C_min, the lower bound of the mask modes and an optional floor of the truncate modes (0 = none).
        geo_low: lower bound on the geometric-mean ratio in geo_rs (≈ 0.999).
        geo_high: upper bound in geo_rs (≈ 1.001).
        normalize: rescale w to mean 1 over this call's batch (verl `rollout_is_batch_normalize`): over the valid
            tokens in the token modes, over the sequences in the sequence modes (one weight per sequence, as verl;
            with unequal lengths a token mean would weight long sequences more). The mean is taken per call, i.e.
            per micro-batch and rank, where verl all-reduces it over the whole batch.
        clip_low: ε_low of the wrapped ``ppo_clip``.
        clip_high: ε_high of the wrapped ``ppo_clip``.

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "rollout_is/weight" (w) and "rollout_is/dropped"
        (w = 0)).

    Note:
        verl's "bypass" mode (π_θ/π_roll, with old_logp = rollout_logp) and the k_rs rejection modes are not
        implemented.
    """
    rollout_logp = require(rollout_logp, "rollout_logp", tuple(logp.shape), "ρ^roll = π_old/π_roll")
    w = rollout_is_weights(
        old_logp,
        rollout_logp,
        mask,
        mode=mode,
        cap=cap,
        cap_min=cap_min,
        geo_low=geo_low,
        geo_high=geo_high,
        normalize=normalize,
    )
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics["rollout_is/weight"] = w
    metrics["rollout_is/dropped"] = (w == 0).to(loss.dtype)
    return w * loss, metrics


def opsm_keep(
    logp: torch.Tensor, rollout_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, threshold: float
) -> torch.Tensor:
    """OPSM keep-mask [N, T]: 1[A ≥ 0 ∨ mean_t(log π_roll − sg(log π_θ)) ≤ δ] (detached)."""
    kl = seq_mean(const_log_ratio(rollout_logp, logp, mask), mask)  # (N,): the sampled-token estimate of KL(π_roll‖π_θ)
    adv = token_advantages(advantages, logp)
    return (adv >= 0) | (kl[:, None] <= threshold)


@register(
    "policy_loss",
    "opsm",
    paper="DeepSeek-AI 2025, DeepSeek-V3.2: Pushing the Frontier of Open LLMs (off-policy sequence masking), "
    "arXiv:2512.02556",
    tag="checked: TRL",
)
def opsm(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollout_logp: torch.Tensor | None = None,
    threshold: float = 0.05,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Off-Policy Sequence Masking on PPO-clip (DeepSeek-AI 2025, DeepSeek-V3.2, arXiv:2512.02556; TRL).

    keep_i = 1[A_i ≥ 0 ∨ mean_t(log π_roll(y_t) − sg(log π_θ(y_t))) ≤ δ]; ℓ = keep·ℓ_ppo: negative-advantage
    sequences that drifted too far from the sampler are dropped. W = keep·ρ·1[not clipped].

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T] (with [N, T] the test uses each token's A).
        mask: [N, T] loss mask.
        rollout_logp: [N, T] log π_roll of the sampling engine; required.
        threshold: δ. ALGORITHMS.md gives no default and TRL leaves the mask off; 0.05 is ours.
        clip_low: ε_low of the wrapped ``ppo_clip``.
        clip_high: ε_high of the wrapped ``ppo_clip``.

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "opsm/dropped").
    """
    rollout_logp = require(rollout_logp, "rollout_logp", tuple(logp.shape), "the sampler-vs-policy KL of OPSM")
    keep = opsm_keep(logp, rollout_logp, advantages, mask, threshold)
    loss, metrics = ppo_clip(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    metrics["opsm/dropped"] = (~keep).to(loss.dtype)
    return loss * keep, metrics
