"""Per-token regularizers added to the policy loss (ALGORITHMS.md §4.2, §4.3).

Signature of the family: ``fn(logp, old_logp, mask, *, <keyword tensors>=None, <hparams>) -> (term [N, T], metrics)``.

The trainer adds ``term`` to the policy loss's per-token loss before aggregation, so a regularizer shares the policy
term's mask and normaliser (under ``token_mean`` a term of −c·H_t becomes −c·H̄, TRL's entropy bonus). ``term`` is
0 on masked tokens; metrics are detached per-token [N, T] tensors, masked and averaged once by the trainer.

Keyword tensors: ``entropy``, ``advantages``, ``proxy_logp``, ``demo_mask``. Trainer state kept between steps (the
adaptive entropy coefficient, the entropy running mean) comes in as a keyword float, and the controllers
``adaptive_entropy_coef`` / ``epo_entropy_hist`` (``unipo.algos.controllers``) give its next value; hyperparameters
that only those updates (or the trainer's extra pass) read are still declared in the regularizer's signature, so a
recipe sets them once.

``kl_cov`` and ``lp_reg`` replace the loss on a few selected tokens in their papers. Here they are correction terms:
``ppo_clip(clip_low, clip_high)`` plus the term equals the published loss, in value and gradient, provided the
term is given the same ``clip_low`` / ``clip_high``.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.kl import k3
from unipo.algos.ops import masked_mean
from unipo.algos.registry import Controlled, register, warn_reconstruction
from unipo.algos.token_weights import (
    expand_advantages,
    require_inputs,
    select_top_k,
    token_covariance,
)

Metrics = dict[str, torch.Tensor]


def _check(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp, old_logp, mask must be [N, T]; got {logp.shape}, {old_logp.shape}, {mask.shape}")
    return mask.bool()


def _masked(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: a NaN/inf on a padded token gives value 0 and gradient exactly 0
    return torch.where(valid, x, torch.zeros_like(x))


def _ppo_parts(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor, lo: float, hi: float):
    """(log ρ, unclipped −A·ρ, ppo_clip's loss) with ppo_clip's guards: log ρ is 0 on masked tokens, in [−20, 20]."""
    log_ratio = torch.clamp(_masked(logp - old.detach(), valid), -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = torch.maximum(unclipped, -adv * torch.clamp(ratio, 1.0 - lo, 1.0 + hi))
    return log_ratio, unclipped, clipped


@register(
    "regularizer",
    "entropy_bonus",
    paper="Schulman et al. 2017, Proximal Policy Optimization Algorithms, arXiv:1707.06347, eq. 9",
    tag="checked: TRL",
)
def entropy_bonus(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    coef: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Entropy bonus (Schulman et al. 2017, PPO, arXiv:1707.06347, eq. 9; TRL ``entropy_coef``).

    term_t = −c_H·H_t, so the aggregated loss gets −c_H·H̄ with the policy term's normaliser.

    Args:
        logp: [N, T] log π_θ (unused; family signature).
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ, with its gradient.
        coef: c_H (catalogue default 0; HPT uses 0.001).

    Returns:
        (term [N, T], {"entropy/token": H}).
    """
    valid = _check(logp, old_logp, mask)
    require_inputs("regularizer", "entropy_bonus", entropy=entropy)
    return _masked(-coef * entropy, valid), {"entropy/token": entropy.detach()}


@register(
    "regularizer",
    "adaptive_entropy",
    paper="He et al. 2025, Skywork Open Reasoner 1 Technical Report, arXiv:2505.22312",
    tag="checked: TRL",
    state=Controlled("coef", "adaptive_entropy_coef", "entropy/token",
                     (("target", "target"), ("delta", "delta"), ("min", "min"), ("max", "max"))),
)  # fmt: skip
def adaptive_entropy(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    observed_entropy: float | torch.Tensor | None = None,
    coef: float = 0.0,
    target: float = 0.2,
    delta: float = 0.005,
    min: float = 0.0,  # c_min and c_max, named as in adaptive_entropy_coef (they shadow the builtins here)
    max: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """Adaptive entropy bonus (He et al. 2025, Skywork-OR1, arXiv:2505.22312; TRL ``use_adaptive_entropy``).

    term_t = −c_H·1[H_obs ≤ H*]·H_t: the bonus acts only while the observed entropy is at or below the target.
    After each optimiser step the trainer sets c_H ← ``adaptive_entropy_coef(c_H, H_obs, ...)``.

    Args:
        logp: [N, T] log π_θ (unused; family signature).
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ, with its gradient.
        observed_entropy: global mean entropy measured at the end of the previous optimiser step (TRL gates on
            it); None measures the detached mean over this call's valid tokens.
        coef: the current c_H (trainer state; the recipe gives its initial value, TRL 0).
        target: H* (TRL 0.2 nats; set it near the entropy seen early in training).
        delta: Δ, read by ``adaptive_entropy_coef`` (TRL 0.005).
        min: c_min, read by ``adaptive_entropy_coef`` (TRL 0).
        max: c_max, read by ``adaptive_entropy_coef`` (TRL 1).

    Returns:
        (term [N, T], {"entropy/token": H, "entropy/coef_applied": the gated c_H on every token}).
    """
    valid = _check(logp, old_logp, mask)
    require_inputs("regularizer", "adaptive_entropy", entropy=entropy)
    h_obs = masked_mean(entropy.detach(), valid) if observed_entropy is None else observed_entropy
    applied = torch.where(torch.as_tensor(h_obs, device=entropy.device) <= target, coef, 0.0).to(entropy.dtype)
    metrics = {"entropy/token": entropy.detach(), "entropy/coef_applied": applied.expand(entropy.shape)}
    return _masked(-applied * entropy, valid), metrics


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
    valid = _check(logp, old_logp, mask)
    require_inputs("regularizer", "kl_cov", advantages=advantages)
    adv = expand_advantages(advantages, mask).to(logp.dtype)
    log_ratio, unclipped, clipped = _ppo_parts(logp, old_logp, adv, valid, clip_low, clip_high)
    k = torch.floor(select_frac * valid.sum()).clamp(min=1)
    selected = select_top_k(token_covariance(adv, logp, mask), valid, k)
    term = unclipped - clipped + coef * selected * log_ratio.abs()
    metrics = {"kl_cov/selected": selected.to(logp.dtype), "kl_cov/abs_log_ratio": log_ratio.detach().abs()}
    return _masked(term, valid), metrics


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
    valid = _check(logp, old_logp, mask)
    require_inputs("regularizer", "lp_reg", advantages=advantages, proxy_logp=proxy_logp)
    adv = expand_advantages(advantages, mask).to(logp.dtype)
    _, unclipped, clipped = _ppo_parts(logp, old_logp, adv, valid, clip_low, clip_high)
    negative = valid & (adv < 0)
    k = torch.floor(select_frac * negative.sum())
    k = torch.where(k >= 2, k, torch.zeros_like(k))
    lowest = select_top_k(-logp.detach(), negative, k)
    proxy = proxy_logp.detach()
    reg = lowest & (logp.detach() < proxy)
    kl = k3(logp, torch.where(reg, proxy, logp.detach()))  # the −inf proxies never reach k3
    term = torch.where(reg, unclipped - clipped + coef * kl, torch.zeros_like(kl))
    return _masked(term, valid), {"lp_reg/selected": reg.to(logp.dtype)}


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


@register(
    "regularizer",
    "epo_smooth_recon",
    paper="Xu et al. 2025, EPO: Entropy-regularized Policy Optimization for LLM Agents, arXiv:2509.22576",
    tag="reconstructed",
    state=Controlled("entropy_hist", "epo_entropy_hist", "entropy/token", (("momentum", "hist_momentum"),)),
)
def epo_smooth_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    entropy_hist: float | None = None,
    progress: float = 0.0,
    coef_start: float = 1e-2,
    coef_end: float = 1e-3,
    smooth_coef: float = 1.0,
    band: float = 0.1,
    hist_momentum: float = 0.9,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of EPO (Xu et al. 2025, arXiv:2509.22576) from its abstract; not the published rule.

    L += −λ_k·H̄ + κ·max(0, |H̄ − H̄_hist| − δ)², λ_k = λ_0 + (λ_1 − λ_0)·progress. term_t = −λ_k·H_t + P on every
    valid token, P being the band penalty of this call's H̄, so any mean-type aggregation gives exactly the formula.

    Args:
        logp: [N, T] log π_θ (unused; family signature).
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        entropy: [N, T] token entropy H of π_θ, with its gradient.
        entropy_hist: H̄_hist, the running mean of past steps' entropy (trainer state, ``epo_entropy_hist``);
            None (first step) turns the band penalty off.
        progress: fraction of training done, in [0, 1] (the trainer passes it).
        coef_start: λ_0, early entropy weight (reconstructed 1e-2).
        coef_end: λ_1, late entropy weight (reconstructed 1e-3).
        smooth_coef: κ (reconstructed 1).
        band: δ, the tolerated |H̄ − H̄_hist| in nats (reconstructed 0.1).
        hist_momentum: read by ``epo_entropy_hist`` (reconstructed 0.9).

    Returns:
        (term [N, T], {"entropy/token": H, "epo/band_penalty": P on every token}).
    """
    warn_reconstruction("epo_smooth_recon", "EPO (arXiv:2509.22576)")
    valid = _check(logp, old_logp, mask)
    require_inputs("regularizer", "epo_smooth_recon", entropy=entropy)
    lam = coef_start + (coef_end - coef_start) * min(max(float(progress), 0.0), 1.0)
    penalty = torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    if entropy_hist is not None:
        excess = (masked_mean(entropy, valid) - entropy_hist).abs() - band
        penalty = smooth_coef * torch.clamp(excess, min=0.0) ** 2
    metrics = {"entropy/token": entropy.detach(), "epo/band_penalty": penalty.detach().expand(entropy.shape)}
    return _masked(-lam * entropy + penalty, valid), metrics


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
    valid = _check(logp, old_logp, mask)
    sq = _masked(logp - old_logp.detach(), valid) ** 2
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
    valid = _check(logp, old_logp, mask)
    return -coef * _masked(logp, valid), {}


@register(
    "regularizer",
    "onpolicy_distill",
    paper="Agarwal et al. 2024, On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes "
    "(GKD), arXiv:2306.13649",
    tag="checked: anchor names (verl distillation k1..k3, TRL GKD); the per-token reverse-KL estimator: ours",
)
def onpolicy_distill(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    teacher_logp: torch.Tensor,
    coef: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """On-policy distillation (Agarwal et al. 2024, GKD, arXiv:2306.13649): the student samples, a teacher scores.

    term_t = coef·½(log π_θ(y_t) − log π_T(y_t))² on the student's own tokens y_t ~ π_θ(·∣s_t). Its gradient
    coef·(log π_θ(y_t) − log π_T(y_t))·∇log π_θ(y_t) is an unbiased estimate of ∇ KL(π_θ(·∣s_t) ‖ π_T(·∣s_t)) at each
    visited state (the reverse KL GKD uses at β = 1; the Σ_v π_θ ∇log π_θ term has mean 0), the visited states held
    fixed: each token is credited with its own log-ratio only (a discount of 0 over later tokens). The value is the
    k2 estimate of that KL; `distill/kl` logs the k1 estimate log π_θ − log π_T.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        teacher_logp: [N, T] log π_T of the same tokens (the teacher, `model.teacher_path`, at the sampling
            temperature).
        coef: the distillation weight.

    Returns:
        (term [N, T], {"distill/kl": log π_θ − log π_T}).
    """
    valid = _check(logp, old_logp, mask)
    log_ratio = _masked(logp - teacher_logp, valid)
    return coef * 0.5 * log_ratio**2, {"distill/kl": log_ratio.detach()}


@register(
    "regularizer",
    "kepo_gated_distill_recon",
    paper="KEPO: Knowledge-Enhanced Policy Optimization, quality-gated on-policy distillation "
    "(seeds_000_001.md 000-34)",
    tag="reconstructed (ALGORITHMS.md §4.4: L = L_grpo + λ·Σ_{R ≥ θ} KL(π_θ‖π_T)); the KL direction (reverse), its "
    "per-token estimator and θ = 1: ours",
)
def kepo_gated_distill_recon(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    teacher_logp: torch.Tensor,
    rewards: torch.Tensor,
    coef: float = 1.0,
    threshold: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """Reconstruction of KEPO's quality-gated distillation: `onpolicy_distill` on the high-reward samples only.

    term_{i,t} = 1[R_i ≥ θ]·coef·½(log π_θ(y_t) − log π_T(y_t))²: dense teacher supervision (the reverse KL's
    per-token gradient, as `onpolicy_distill`) only on trajectories whose reward reaches θ, added to the policy loss.

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        teacher_logp: [N, T] log π_T of the same tokens (`model.teacher_path`).
        rewards: [N] each sample's reward R_i.
        coef: λ.
        threshold: θ, the reward a sample needs to be distilled [ours: 1, a correct answer].

    Returns:
        (term [N, T], {"distill/kl": log π_θ − log π_T on the gated samples, "distill/gated_frac": the gate}).
    """
    gate = (rewards >= threshold).to(logp.dtype)[:, None].expand_as(logp)
    term, metrics = onpolicy_distill(logp, old_logp, mask * gate, teacher_logp=teacher_logp, coef=coef)
    return term, {"distill/kl": metrics["distill/kl"], "distill/gated_frac": gate.detach().clone()}


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
    valid = _check(logp, old_logp, mask)
    if demo_mask is not None:
        demo = demo_mask.bool()
        valid = valid & (demo[:, None] if demo.dim() == 1 else demo)
    nll = -_masked(logp, valid)
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
    valid = _check(logp, old_logp, mask)
    drop = _masked(old_logp.detach() - logp, valid)  # > 0 where the likelihood fell
    seq_fell = masked_mean(drop.detach(), valid, dim=-1) > 0  # mean log π_θ < mean log π_old, (N, T) -> (N,)
    gate = valid & seq_fell[:, None] & (drop.detach() > 0)
    if nonneg_adv_only:
        require_inputs("regularizer", "llds_recon", advantages=advantages)
        gate = gate & (expand_advantages(advantages, mask) >= 0)
    return coef * torch.where(gate, drop, torch.zeros_like(drop)), {"llds/gated": gate.to(logp.dtype)}


@register(
    "regularizer",
    "gtpo_entropy_filter",
    paper="Simoni et al. 2025, GTPO: Trajectory-Based Policy Optimization in LLMs, arXiv:2508.03772",
    tag="rule checked: official code gtpo_training.py (ALGORITHMS.md §3.2); written as a loss term: ours",
)
def gtpo_entropy_filter(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    max_entropy: float = 0.7,
    coef: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """GTPO's completion entropy filter (Simoni et al. 2025, arXiv:2508.03772), as a correction term.

    A′_i = 0 if H̄_i > max_entropy, else A_i − coef·H̄_i, with H̄_i the mean token entropy of completion i (detached).
    term_t = (A_i − A′_i)·ρ_t with ρ = exp(log π_θ − sg(log π_θ)) (value 1): added to an on-policy surrogate −A·ρ the
    sum is −A′·ρ, whose gradient is −A′·∇log π_θ; token weights (GTPO's conflict δ) multiply the sum.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] (unused; family signature).
        mask: [N, T] loss mask.
        advantages: [N] (or [N, T], reduced to each row's masked mean) advantages A of the surrogate.
        entropy: [N, T] token entropy of π_θ.
        max_entropy: completions with H̄ above this get A′ = 0 (official 0.7).
        coef: the entropy shift of kept completions (official 0.1).

    Returns:
        (term [N, T], {"gtpo/filtered": 1 on the tokens of completions whose advantage was zeroed}).
    """
    valid = _check(logp, old_logp, mask)
    require_inputs("regularizer", "gtpo_entropy_filter", advantages=advantages, entropy=entropy)
    adv = advantages.detach()
    if adv.dim() == 2:
        adv = masked_mean(adv, mask, dim=-1)  # (N, T) -> (N,)
    h = masked_mean(_masked(entropy.detach(), valid), mask, dim=-1)  # (N,)
    filtered = h > max_entropy
    shifted = torch.where(filtered, torch.zeros_like(adv), adv - coef * h)
    lp = _masked(logp, valid)
    ratio = torch.exp(lp - lp.detach())
    term = (adv - shifted)[:, None] * ratio
    return _masked(term, valid), {"gtpo/filtered": filtered[:, None].float().expand_as(logp)}
