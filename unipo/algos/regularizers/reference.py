"""Terms anchored on the reference policy beyond the KL estimators (ALGORITHMS.md §2.2, §4.3): a trust-region SFT
on demonstrations (EtCon) and the occupancy-measure χ² penalty ("Correlated Proxies")."""

from __future__ import annotations

import math

import torch

from unipo.algos.ops import masked_sum
from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.regularizers._common import Metrics, check_shapes, masked
from unipo.algos.token_weights import require_inputs


@register(
    "regularizer",
    "tpsft_recon",
    paper="Reconstruction of EtCon targeted proximal SFT (seeds_002.md 002-13)",
    tag="reconstructed",
)
def tpsft_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    demo_mask: torch.Tensor | None = None,
    coef: float = 1.0,
    clip: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of EtCon's targeted proximal SFT (seeds_002.md 002-13); not the published rule.

    SFT seen as a policy gradient with A = 1 plus PPO's trust region against the model before training (the
    reference, "pre-edit"): term_t = −η·min(ρ_t, clip(ρ_t, 1−ε, 1+ε)) on demonstration tokens, ρ_t = π_θ/π_ref.
    Its gradient is −η·ρ_t·∇log π_θ(y*_t) while ρ_t < 1+ε and 0 once the target token's probability has risen
    past (1+ε)·π_ref: the demonstration is learned, but not pushed further than the trust region allows.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        ref_logp: [N, T] log π_ref (the pre-training model).
        demo_mask: [N] or [N, T] bool, the demonstration rows/tokens (the target tokens).
        coef: η (reconstructed: 1).
        clip: ε (reconstructed: PPO's 0.2).

    Returns:
        (term [N, T], {"tpsft/clipped": 1 on target tokens past the trust region}).
    """
    warn_reconstruction("tpsft_recon", "EtCon targeted proximal SFT")
    require_inputs("regularizer", "tpsft_recon", ref_logp=ref_logp, demo_mask=demo_mask)
    valid = check_shapes(logp, old_logp, mask)
    demo = demo_mask.bool()
    target = valid & (demo[:, None] if demo.dim() == 1 else demo)
    ratio = torch.exp(torch.clamp(masked(logp - ref_logp.detach(), target), -20.0, 20.0))
    term = -torch.minimum(ratio, torch.clamp(ratio, 1.0 - clip, 1.0 + clip))
    return coef * masked(term, target), {"tpsft/clipped": (target & (ratio.detach() > 1.0 + clip)).to(logp.dtype)}


@register(
    "regularizer",
    "om_chi2_recon",
    paper="Reconstruction of the occupancy-measure χ² penalty of Laidlaw et al., Correlated Proxies: A New Definition "
    "and Improved Mitigation for Reward Hacking (code github.com/cassidylaidlaw/orpo), for LLMs",
    tag="discriminator variants checked: official code; LLM χ² form reconstructed",
)
def om_chi2_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    coef: float = 0.01,
    max_ratio: float = 10.0,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of the χ² occupancy-measure penalty of "Correlated Proxies" (Laidlaw et al.) for a bandit LLM.

    For a prompt-to-reply bandit the occupancy-measure ratio is the sequence ratio r_i = π_θ(y_i∣x)/π_ref(y_i∣x)
    = exp(Σ_t log π_θ − log π_ref), and E_{y∼π_θ}[r − 1] = χ²(π_θ‖π_ref). The penalty per reply is
    P_i = λ·(min(r_i, c) − 1). Per token: value λ·(min(r_i, c) − 1)/|y_i| and gradient λ·r_i·1[r_i < c]·∇log π_θ(y_t),
    so the sum over a reply's tokens has P_i's value and gradient (exact under ``seq_mean_token_sum``).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        ref_logp: [N, T] log π_ref.
        coef: λ (reconstructed: 0.01).
        max_ratio: c, the clip on r_i for stability (reconstructed: 10; the paper's LLM runs are not specified).

    Returns:
        (term [N, T], {"om_chi2/ratio": min(r_i, c) on every token of reply i}).
    """
    warn_reconstruction("om_chi2_recon", "the Correlated Proxies χ² penalty")
    require_inputs("regularizer", "om_chi2_recon", ref_logp=ref_logp)
    valid = check_shapes(logp, old_logp, mask)
    if max_ratio <= 1.0:
        raise ValueError(f"max_ratio={max_ratio} must be > 1")
    log_r = masked_sum(masked(logp.detach() - ref_logp.detach(), valid), valid, dim=-1)  # (N, T) -> (N,)
    r = torch.exp(torch.clamp(log_r, max=math.log(max_ratio)))  # (N,)
    live = (log_r < math.log(max_ratio)).to(logp.dtype)
    length = valid.sum(-1).clamp(min=1)
    per_token = (r - 1.0)[:, None] / length[:, None] + (r * live)[:, None] * (logp - logp.detach())
    metrics = {"om_chi2/ratio": r[:, None].expand_as(logp).to(logp.dtype)}
    return coef * masked(per_token, valid), metrics
