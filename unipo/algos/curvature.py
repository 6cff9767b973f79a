"""Token weights from the curvature of the policy's softmax head (ALGORITHMS.md §3.2): CAPO, as reconstructed here.

Same family signature as ``unipo.algos.token_weights``: ``fn(mask [N, T], *, <keyword tensors>, <hparams>) -> [N, T]``.
The inputs come from the policy before the update (the sampled tokens' log-probs and the moments Σ_v π(v)², Σ_v π(v)³
of its next-token distributions), so the trainer computes the weight once on the whole batch.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.token_weights import expand_advantages, require_inputs, select_top_k


def fisher_score(
    advantages: torch.Tensor, logp: torch.Tensor, sum_pi_squared: torch.Tensor, sum_pi_cubed: torch.Tensor
) -> torch.Tensor:
    """½·gᵀF·g per token, for g = A·(e_y − π) the gradient of A·log π(y) in the logits and F = diag(π) − ππᵀ the
    softmax's Fisher matrix in logit space (Amari; the same curvature that Newton-type steps on logits use):

        gᵀFg = A²·[π_y(1 − π_y)² + Σ_v π_v³ − π_y³ − (π_y − Σ_v π_v²)²],

    from u = e_y − π: uᵀdiag(π)u = π_y(1 − π_y)² + Σ_{v≠y} π_v³ and πᵀu = π_y − Σ_v π_v². All inputs [N, T]."""
    p = logp.detach().exp()
    quad = p * (1 - p) ** 2 + sum_pi_cubed - p**3 - (p - sum_pi_squared) ** 2
    return 0.5 * advantages**2 * quad.clamp(min=0)  # ≥ 0 up to rounding: a quadratic form of a PSD matrix


@register(
    "token_weight",
    "capo_recon",
    paper="Curvature-Aware Policy Optimization (CAPO) (seeds_000_001.md 000-16, seeds_003_004.md 004-08)",
    tag="reconstructed",
)
def capo_recon(
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    sum_pi_squared: torch.Tensor | None = None,
    sum_pi_cubed: torch.Tensor | None = None,
    reject_frac: float = 0.05,
) -> torch.Tensor:
    """Reconstruction of CAPO's token rejection (ALGORITHMS.md §3.2, R2); the paper's curvature criterion is unknown.

    Each valid token gets the score s = ½·gᵀF·g of its policy-gradient step in logit space (``fisher_score``: the
    second-order change of the policy, KL ≈ ½·δzᵀFδz, that the token's update would cause); the ⌊reject_frac·n⌋
    tokens of the batch with the highest score get weight 0 (they would move the policy most), the rest 1.

    Args:
        mask: [N, T] loss mask.
        advantages: [N] or [N, T].
        old_logp: [N, T] log π_old of the sampled tokens.
        sum_pi_squared: [N, T] Σ_v π_old(v)²; sum_pi_cubed: [N, T] Σ_v π_old(v)³ (the trainer's old-policy pass).
        reject_frac: the budget of rejected tokens. ALGORITHMS.md records only that the paper rejects fewer than
            8%; 0.05 is ours.

    Returns:
        [N, T] weights in {0, 1}.
    """
    warn_reconstruction("capo_recon", "CAPO's curvature criterion")
    require_inputs("token_weight", "capo_recon", advantages=advantages, old_logp=old_logp,
                   sum_pi_squared=sum_pi_squared, sum_pi_cubed=sum_pi_cubed)  # fmt: skip
    if not 0.0 <= reject_frac < 1.0:
        raise ValueError(f"reject_frac={reject_frac} must lie in [0, 1)")
    valid = mask.bool()
    adv = expand_advantages(advantages, mask).to(old_logp.dtype)
    score = fisher_score(adv, old_logp, sum_pi_squared.detach(), sum_pi_cubed.detach())
    k = math.floor(reject_frac * int(valid.sum()))
    rejected = select_top_k(score, valid, k) if k else torch.zeros_like(valid)
    return (valid & ~rejected).to(torch.get_default_dtype())
