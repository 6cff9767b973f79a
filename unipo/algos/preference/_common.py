"""Shared helpers of the preference family: implicit rewards, length normalisation, argument checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_ratios(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_w, h_l) = (logp_w − ref_logp_w, logp_l − ref_logp_l); the reference is a constant."""
    if not (chosen_logp.shape == rejected_logp.shape == ref_chosen_logp.shape == ref_rejected_logp.shape):
        raise ValueError(
            "chosen/rejected policy and reference log-probs must share one shape; got "
            f"{[tuple(t.shape) for t in (chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)]}"
        )
    return chosen_logp - ref_chosen_logp.detach(), rejected_logp - ref_rejected_logp.detach()


def per_token(logp: torch.Tensor, length: torch.Tensor | None, name: str) -> torch.Tensor:
    """Mean token log-prob ℓ̄ = logp / |y|; `length` is required."""
    if length is None:
        raise ValueError(f"this loss needs the keyword tensor {name} (number of completion tokens, [B])")
    return logp / length.to(logp.dtype)


def smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1−ε)·log σ(z) − ε·log σ(−z): the logistic loss against the soft label (1−ε, ε)."""
    check_unit(label_smoothing, "label_smoothing")
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def check_unit(value: float, name: str, *, upper: float = 1.0) -> None:
    if not 0.0 <= value <= upper:
        raise ValueError(f"{name} must lie in [0, {upper}]; got {value}")


def check_positive(value: float, name: str) -> None:
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0; got {value}")


def batch_token_nll(logp: torch.Tensor, length: torch.Tensor | None, length_mean: torch.Tensor | None) -> torch.Tensor:
    """Per-pair −logp / L̄, L̄ the step's mean length (`length_mean`, else the mean of `length`): its mean over the
    pairs is the NLL averaged over every token of the batch (TRL's ``sft`` term)."""
    if length_mean is None:
        if length is None:
            raise ValueError("this loss needs the keyword tensor chosen_len (number of completion tokens, [B])")
        length_mean = length.to(logp.dtype).mean()
    return -logp / length_mean.to(logp.dtype)
