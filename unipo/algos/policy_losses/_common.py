"""Helpers shared by the policy losses: the guarded log-ratio, advantage broadcasting, clip metrics, checks.

Nothing here is registered; see the package docstring for the conventions every loss follows.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.ops import check_choice, masked_sum  # noqa: F401  (check_choice: re-exported)

Metrics = dict[str, torch.Tensor]

LOG_RATIO_BOUND = 20.0
"""|log ρ| is clamped to this before exp (verl's guard)."""
GSPO_LOG_RATIO_MAX = 10.0
"""Upper clamp on a sequence log-ratio in its per-token form (verl gspo; NFT uses the same bound on log R)."""
LOG_EPS = math.log(1e-8)
"""Lower clamp on log-weights (TRL vespo)."""


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is 1, else 0; a NaN/inf at a padded position gives value 0 and gradient exactly 0."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def check_shapes(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> None:
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, old_logp and mask must all be [N, T]; got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log ρ = logp − sg(old_logp), 0 on masked tokens, clamped to ±20: [N, T]."""
    check_shapes(logp, old_logp, mask)
    return torch.clamp(zero_masked(logp - old_logp.detach(), mask), -LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def const_log_ratio(num: torch.Tensor, den: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A detached log-ratio of two constant log-prob tensors (e.g. old_logp − rollout_logp), guarded like log ρ."""
    return torch.clamp(zero_masked(num.detach() - den.detach(), mask), -LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Detached advantages broadcast to [N, T]; accepts [N] or [N, T]."""
    advantages = advantages.detach().to(like.dtype)
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages[:, None].expand_as(like)  # (N,) -> (N, T)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(f"advantages must be [N] or [N, T] = {tuple(like.shape)}; got {tuple(advantages.shape)}")


def seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the tokens of each row: (N, T) -> (N,); a row with no valid token gives 0."""
    lengths = mask.to(x.dtype).sum(-1).clamp(min=1)
    return masked_sum(x, mask, dim=-1) / lengths


def sequence_token_form(logp: torch.Tensor, log_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token form of a sequence ratio: value exp(log_seq_i) on every token, gradient exp(log_seq_i)·∇logp_t.

    log s_{i,t} = logp_t − sg(logp_t) + sg(log s_i), clamped ≤ 10 (verl's gspo form).
    """
    logp_m = zero_masked(logp, mask)
    log_s = logp_m - logp_m.detach() + log_seq.detach()[:, None]
    return torch.exp(torch.clamp(log_s, max=GSPO_LOG_RATIO_MAX))


def check_clip(clip_low: float, clip_high: float) -> None:
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0; got clip_low={clip_low}, clip_high={clip_high}")


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value}")


def require(tensor: torch.Tensor | None, name: str, shape: tuple[int, ...], why: str) -> torch.Tensor:
    """Raise ValueError naming `name` when a required extra tensor is missing or mis-shaped."""
    if tensor is None:
        raise ValueError(f"{name} is required ({why}); pass it as a keyword tensor of shape {list(shape)}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}; got {list(tensor.shape)}")
    return tensor


def group_mean(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over each element's own group: (N,), (N,) -> (N,).

    An [N, N] equality matrix rather than torch.unique, which would sync the host on CUDA.
    """
    same = (group_ids[:, None] == group_ids[None, :]).to(values.dtype)  # (N, N)
    return (same @ values) / same.sum(-1)


def clip_metrics(low: torch.Tensor, high: torch.Tensor, ratio: torch.Tensor, like: torch.Tensor) -> Metrics:
    """The shared metric keys: clip/frac, clip/frac_low, clip/frac_high, ratio/mean, as detached [N, T] floats."""
    low, high = low.expand_as(like), high.expand_as(like)
    return {
        "clip/frac": (low | high).to(like.dtype),
        "clip/frac_low": low.to(like.dtype),
        "clip/frac_high": high.to(like.dtype),
        "ratio/mean": ratio.detach().to(like.dtype).expand_as(like),
    }


def no_clip_metrics(ratio: torch.Tensor, like: torch.Tensor) -> Metrics:
    """Metrics for a loss with no clipping: the clip fractions are 0 (TRL logs sapo/vespo the same way)."""
    none = torch.zeros_like(like, dtype=torch.bool)
    return clip_metrics(none, none, ratio, like)


def clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor
) -> tuple[torch.Tensor, Metrics]:
    """−min(ρA, clip(ρ, low, high)·A) with ABSOLUTE bounds, and its clip indicators.

    ``low`` and ``high`` are both floats or both tensors broadcastable to ρ (tensors stay on the device: no host
    sync, no host-to-device copy).
    """
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, low, high)
    loss = torch.maximum(unclipped, clipped)
    r = ratio.detach()
    # These are exactly the tokens whose gradient the clip removes (ALGORITHMS.md §13 U2).
    lo = (adv < 0) & (r < low)
    hi = (adv > 0) & (r > high)
    return loss, clip_metrics(lo, hi, r, loss)


def straight_through_floor(x: torch.Tensor, floor: float) -> torch.Tensor:
    """max(x, floor) in the forward pass with the gradient of x (NVlabs/NFT `clamp_preserve_grad`)."""
    return x + (torch.clamp(x, min=floor) - x).detach()
