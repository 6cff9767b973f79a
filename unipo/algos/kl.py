"""Per-token KL estimators (ALGORITHMS.md §4.1).

Signature of the family: ``fn(logp, ref_logp) -> [N, T]``, with δ = logp − ref_logp on the sampled tokens.
On samples y ~ π_θ they estimate KL(π_θ‖π_ref). Source: J. Schulman 2020, "Approximating KL Divergence",
http://joschu.net/blog/kl-approx.html; the guards follow verl ``kl_penalty``.

``ref_logp`` is a constant here (detached), so a caller that passes the same tensor twice gets a zero gradient
rather than a silently doubled one. The estimators do not mask: the trainer aggregates them with the loss mask.
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register

_PAPER = "Schulman 2020, Approximating KL Divergence, http://joschu.net/blog/kl-approx.html"


def _delta(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape; got {tuple(logp.shape)}, {tuple(ref_logp.shape)}"
        )
    return logp - ref_logp.detach()


@register("kl", "k1", paper=_PAPER, tag="checked: verl")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 KL estimator (Schulman 2020, http://joschu.net/blog/kl-approx.html; verl "kl").

    k1 = δ = logp − ref_logp. Unbiased for KL(π_θ‖π_ref) under y ~ π_θ, can be negative, high variance.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    return _delta(logp, ref_logp)


@register("kl", "k2", paper=_PAPER, tag="checked: verl")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 KL estimator (Schulman 2020, http://joschu.net/blog/kl-approx.html; verl "mse").

    k2 = ½·δ². Non-negative and biased in value; its pathwise gradient δ·∇logp has expectation ∇KL on-policy.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    return 0.5 * _delta(logp, ref_logp) ** 2


@register("kl", "k3", paper=_PAPER, tag="checked: TRL, verl")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 KL estimator (Schulman 2020, http://joschu.net/blog/kl-approx.html; verl "low_var_kl", TRL GRPO).

    k3 = exp(−δ) + δ − 1 = π_ref/π_θ − log(π_ref/π_θ) − 1, with δ clamped to [−20, 20] and the result to
    [−10, 10] (verl). Non-negative, unbiased in value, low variance.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        ref_logp: [N, T] log π_ref of the same tokens.

    Returns:
        [N, T] per-token estimate.
    """
    delta = torch.clamp(_delta(logp, ref_logp), -20.0, 20.0)
    return torch.clamp(torch.exp(-delta) + delta - 1.0, -10.0, 10.0)
