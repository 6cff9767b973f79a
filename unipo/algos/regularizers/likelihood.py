"""Proximal and likelihood regularizers (ALGORITHMS.md §4.3): mirror descent to the old policy, asymmetric
REINFORCE, SFT on demonstrations, likelihood decline."""

from __future__ import annotations

import torch

from unipo.algos.ops import masked_mean
from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.regularizers._common import Metrics, check_shapes, masked
from unipo.algos.token_weights import (
    expand_advantages,
    require_inputs,
)


@register(
    "regularizer",
    "opmd",
    paper="Yao et al. 2025, Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (REC), arXiv:2509.24203",
    tag="checked: Trinity-RFT",
)
def opmd(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.0
) -> tuple[torch.Tensor, Metrics]:
    """OPMD / REC "k2" proximal term (Yao et al. 2025, arXiv:2509.24203; Kimi k1.5, arXiv:2501.12599).

    term_t = τ·(log π_θ(y_t) − log π_old(y_t))² (Trinity absorbs Kimi's ½ into τ); zero gradient at θ = θ_old.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        mask: [N, T] loss mask.
        coef: τ ≥ 0 (Trinity-RFT default 0, i.e. off; set it in the recipe).

    Returns:
        (term [N, T], {"opmd/sq_log_ratio": (log ρ)²}).
    """
    valid = check_shapes(logp, old_logp, mask)
    sq = masked(logp - old_logp.detach(), valid) ** 2
    return coef * sq, {"opmd/sq_log_ratio": sq.detach()}


@register(
    "regularizer",
    "asymre",
    paper="Arnal et al. 2025, Asymmetric REINFORCE for off-Policy RL (AsymRE), arXiv:2506.20520",
    tag="checked: Trinity-RFT",
)
def asymre(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.0
) -> tuple[torch.Tensor, Metrics]:
    """AsymRE / REC "forward-kl" term (Arnal et al. 2025, arXiv:2506.20520; Yao et al. 2025, arXiv:2509.24203).

    term_t = −τ·log π_θ(y_t): added to REINFORCE (−A·log π) it lowers the baseline by τ (gradient of A + τ).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        coef: τ ≥ 0 (Trinity-RFT default 0, i.e. off; the paper finds a small baseline shift works best).

    Returns:
        (term [N, T], {}).
    """
    valid = check_shapes(logp, old_logp, mask)
    return -coef * masked(logp, valid), {}


@register(
    "regularizer",
    "sft_nll",
    paper="Ouyang et al. 2022, Training LMs to Follow Instructions (InstructGPT PPO-ptx), arXiv:2203.02155",
    tag="checked: TRL",
)
def sft_nll(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    demo_mask: torch.Tensor | None = None,
    coef: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """NLL on demonstration tokens (Ouyang et al. 2022, PPO-ptx, arXiv:2203.02155; TRL DPO ``sft``, RPO).

    term_t = −η·log π_θ(y*_t) on demonstration tokens; under ``token_mean`` over a batch of demonstrations this is
    η·NLL. With mixed batches it shares the policy normaliser rather than dividing by the demo-token count.

    Args:
        logp: [N, T] log π_θ of the tokens.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        demo_mask: [N] or [N, T] bool, the demonstration rows/tokens; None treats every valid token as one.
        coef: η (TRL's RPO α; the RPO paper recommends 1).

    Returns:
        (term [N, T], {"sft/nll": −log π_θ on demonstration tokens}).
    """
    valid = check_shapes(logp, old_logp, mask)
    if demo_mask is not None:
        demo = demo_mask.bool()
        valid = valid & (demo[:, None] if demo.dim() == 1 else demo)
    nll = -masked(logp, valid)
    return coef * nll, {"sft/nll": nll.detach()}


@register(
    "regularizer",
    "llds_recon",
    paper="Deng et al. 2025, On GRPO Collapse in Search-R1: Lazy Likelihood Displacement (LLDS), arXiv:2512.04220",
    tag="reconstructed; matches a third-party reimplementation",
)
def llds_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    coef: float = 0.1,
    nonneg_adv_only: bool = False,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of LLDS (Deng et al. 2025, arXiv:2512.04220) from its abstract; not the published rule.

    term_t = λ·1[t∈S]·(log π_old(y_t) − log π_θ(y_t)), S = tokens whose response's mean log π_θ < mean log π_old
    and whose own log π_θ < log π_old (and, optionally, A_i ≥ 0).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        mask: [N, T] loss mask.
        advantages: [N] or [N, T]; needed only with ``nonneg_adv_only``.
        coef: λ (reimplementations use 0.05–0.1).
        nonneg_adv_only: also require A ≥ 0 (the optional action gate).

    Returns:
        (term [N, T], {"llds/gated": 1 on regularised tokens}).

    Note:
        The term shares the policy normaliser (Σ_S / num_tokens under ``token_mean``); the reimplementation divides
        by |S| instead, which only rescales λ within a batch.
    """
    warn_reconstruction("llds_recon", "LLDS (arXiv:2512.04220)")
    valid = check_shapes(logp, old_logp, mask)
    drop = masked(old_logp.detach() - logp, valid)  # > 0 where the likelihood fell
    seq_fell = masked_mean(drop.detach(), valid, dim=-1) > 0  # mean log π_θ < mean log π_old, (N, T) -> (N,)
    gate = valid & seq_fell[:, None] & (drop.detach() > 0)
    if nonneg_adv_only:
        require_inputs("regularizer", "llds_recon", advantages=advantages)
        gate = gate & (expand_advantages(advantages, mask) >= 0)
    return coef * torch.where(gate, drop, torch.zeros_like(drop)), {"llds/gated": gate.to(logp.dtype)}
