"""Small tensor helpers shared by the pure layer and the trainers (masked reductions, log-probs, entropy)."""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` where `mask` is 1 (over `dim`, or everything)."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1; 0 where there are none."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over the masked positions (Bessel-corrected std); 0 outside the mask."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = masked_sum(x, mask) / n.clamp(min=1)
    var = masked_sum((x - mean) ** 2, mask) / (n - 1).clamp(min=1)
    return (x - mean) / (var.sqrt() + eps) * m


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels]: (B, T, V), (B, T) -> (B, T), without materialising a second (B, T, V) copy."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = -Σ_v p log p of softmax(logits): (B, T, V) -> (B, T)."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def power_sums(logits: torch.Tensor, powers: tuple[int, ...] = (2, 3)) -> tuple[torch.Tensor, ...]:
    """Σ_v π(v)^k per position for each k in `powers`, with π = softmax(logits): (B, T, V) -> (B, T) each. Computed
    in log space (logsumexp(k·log π)), so tiny probabilities do not underflow before they are summed."""
    log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return tuple(torch.logsumexp(k * log_p, dim=-1).exp() for k in powers)


def check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError naming `option` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{option}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
