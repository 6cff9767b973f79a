"""Argument checks and masked helpers the regularizers share."""

from __future__ import annotations

import torch

Metrics = dict[str, torch.Tensor]


def check_shapes(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp, old_logp, mask must be [N, T]; got {logp.shape}, {old_logp.shape}, {mask.shape}")
    return mask.bool()


def masked(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: a NaN/inf on a padded token gives value 0 and gradient exactly 0
    return torch.where(valid, x, torch.zeros_like(x))


def ppo_parts(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor, lo: float, hi: float):
    """(log ρ, unclipped −A·ρ, ppo_clip's loss) with ppo_clip's guards: log ρ is 0 on masked tokens, in [−20, 20]."""
    log_ratio = torch.clamp(masked(logp - old.detach(), valid), -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = torch.maximum(unclipped, -adv * torch.clamp(ratio, 1.0 - lo, 1.0 + hi))
    return log_ratio, unclipped, clipped
