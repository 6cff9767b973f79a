"""Token-selective corrections (ALGORITHMS.md §4.2): KL-Cov and Lp-Reg act on a few selected tokens; with
``ppo_clip`` of the same clip range they give the published loss."""

from __future__ import annotations

import math

import torch

from unipo.algos.kl import k3
from unipo.algos.registry import register
from unipo.algos.regularizers._common import Metrics, check_shapes, masked, ppo_parts
from unipo.algos.token_weights import (
    expand_advantages,
    require_inputs,
    select_top_k,
    token_covariance,
)


@register(
    "regularizer",
    "kl_cov",
    paper="Cui et al. 2025, The Entropy Mechanism of RL for Reasoning Language Models, arXiv:2505.22617",
    tag="checked: verl",
)
def kl_cov(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    coef: float = 1.0,
    select_frac: float = 2e-4,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """KL-Cov correction (Cui et al. 2025, arXiv:2505.22617, §5; verl ``kl_cov``).

    KL-Cov loss: ℓ_t = −A·ρ + κ·|log ρ| on the top max(1, ⌊r·N_valid⌋) tokens by Cov_t, ℓ_t = −A·ρ (unclipped)
    elsewhere. term_t = −A·ρ − ℓ^ppo_clip_t + κ·1[selected]·|log ρ|, so ``ppo_clip`` + term = the KL-Cov loss.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        mask: [N, T] loss mask.
        advantages: [N] or [N, T].
        coef: κ (verl ``ppo_kl_coef`` 1).
        select_frac: r (verl 2e-4).
        clip_low: ε_low of the paired ``ppo_clip`` (its clipping is undone here).
        clip_high: ε_high of the paired ``ppo_clip``.

    Returns:
        (term [N, T], {"kl_cov/selected": 1 on selected tokens, "kl_cov/abs_log_ratio": |log ρ|}).
    """
    valid = check_shapes(logp, old_logp, mask)
    require_inputs("regularizer", "kl_cov", advantages=advantages)
    adv = expand_advantages(advantages, mask).to(logp.dtype)
    log_ratio, unclipped, clipped = ppo_parts(logp, old_logp, adv, valid, clip_low, clip_high)
    k = torch.floor(select_frac * valid.sum()).clamp(min=1)
    selected = select_top_k(token_covariance(adv, logp, mask), valid, k)
    term = unclipped - clipped + coef * selected * log_ratio.abs()
    metrics = {"kl_cov/selected": selected.to(logp.dtype), "kl_cov/abs_log_ratio": log_ratio.detach().abs()}
    return masked(term, valid), metrics


@register(
    "regularizer",
    "lp_reg",
    paper="Huang et al. 2025, Low-probability Tokens Sustain Exploration in RLVR (Lp-Reg), arXiv:2510.03222",
    tag="checked: official dev code compute_policy_loss_lp_reg",
)
def lp_reg(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    proxy_logp: torch.Tensor | None = None,
    coef: float = 1.0,
    select_frac: float = 0.01,
    min_p: float = 0.02,
    clip_low: float = 1.0,
    clip_high: float = 9.0,
) -> tuple[torch.Tensor, Metrics]:
    """Lp-Reg correction (Huang et al. 2025, arXiv:2510.03222; official ``compute_policy_loss_lp_reg``).

    Among A<0 tokens, the lowest-probability ⌊q·n_neg⌋ by log π_θ that also have π_θ < π_proxy get
    ℓ = −A·ρ + β·k3(π_θ‖π_proxy); the rest keep the clipped loss. term = 1[reg]·(−A·ρ − ℓ^ppo_clip + β·k3).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        mask: [N, T] loss mask.
        advantages: [N] or [N, T].
        proxy_logp: [N, T] log π_proxy(y_t), the min-p filtered, renormalised π_old (``lp_reg_proxy_logp``);
            −inf where min-p removed the token.
        coef: β (official ``ppo_kl_coef`` 1).
        select_frac: q, fraction of the negative-advantage tokens considered (official 1%); as in the official
            code nothing is selected when ⌊q·n_neg⌋ < 2.
        min_p: κ, read by the trainer for ``lp_reg_proxy_logp`` (official 0.02).
        clip_low: ε_low of the paired ``ppo_clip`` (the paper widens it to 1.0).
        clip_high: ε_high of the paired ``ppo_clip`` (the paper widens it to 9.0).

    Returns:
        (term [N, T], {"lp_reg/selected": 1 on regularised tokens}).
    """
    valid = check_shapes(logp, old_logp, mask)
    require_inputs("regularizer", "lp_reg", advantages=advantages, proxy_logp=proxy_logp)
    adv = expand_advantages(advantages, mask).to(logp.dtype)
    _, unclipped, clipped = ppo_parts(logp, old_logp, adv, valid, clip_low, clip_high)
    negative = valid & (adv < 0)
    k = torch.floor(select_frac * negative.sum())
    k = torch.where(k >= 2, k, torch.zeros_like(k))
    lowest = select_top_k(-logp.detach(), negative, k)
    proxy = proxy_logp.detach()
    reg = lowest & (logp.detach() < proxy)
    kl = k3(logp, torch.where(reg, proxy, logp.detach()))  # the −inf proxies never reach k3
    term = torch.where(reg, unclipped - clipped + coef * kl, torch.zeros_like(kl))
    return masked(term, valid), {"lp_reg/selected": reg.to(logp.dtype)}


def lp_reg_proxy_logp(logits: torch.Tensor, labels: torch.Tensor, *, min_p: float = 0.02) -> torch.Tensor:
    """Lp-Reg proxy log-probs (Huang et al. 2025, arXiv:2510.03222; official ``apply_min_p``).

    π_proxy(v) ∝ π(v)·1[π(v) ≥ κ·max_u π(u)], renormalised; returns log π_proxy at the sampled tokens.

    Args:
        logits: [N, T, V] logits of π_old (temperature already applied).
        labels: [N, T] sampled token ids.
        min_p: κ.

    Returns:
        [N, T] log π_proxy(y_t); −inf where the filter removes y_t.
    """
    logp_all = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    if min_p > 0:  # π(v) ≥ κ·max π  ⇔  log π(v) ≥ log κ + max log π
        logp_all = torch.where(logp_all >= logp_all.amax(-1, keepdim=True) + math.log(min_p), logp_all, -math.inf)
    return torch.log_softmax(logp_all, dim=-1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
