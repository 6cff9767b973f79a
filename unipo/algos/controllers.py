"""Controllers (kind `controller`): update rules for hyperparameters that are training state.

Pure functions of (current value, a statistic of the step just taken) -> next value, with the rule's
hyperparameters as keywords; the trainer keeps the value in its component state and checkpoints it. A component
names its controller in its registry entry (`Controlled`), e.g. `adaptive_entropy`'s coefficient.

`ref_sync` is the one controller whose state is a model: it moves the reference policy's weights towards the policy's
(`algo.ref_sync`), and the trainer then checkpoints the reference.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from unipo.algos.registry import register

Scalar = float | torch.Tensor


@register(
    "controller",
    "kl_adaptive_ctrl",
    paper="Ziegler et al. 2019, Fine-Tuning Language Models from Human Preferences, arXiv:1909.08593",
    tag="checked: verl",
)
def adaptive_kl_coef(
    coef: float, observed_kl: float | torch.Tensor, *, target: float, horizon: float, n_steps: int
) -> float | torch.Tensor:
    """Adaptive KL controller (Ziegler et al. 2019, Fine-Tuning LMs from Human Preferences, arXiv:1909.08593, §2.2).

    e = clip(KL_obs/KL_target − 1, −0.2, 0.2); β ← β·(1 + e·n_steps/horizon). verl ``kl_ctrl.type=adaptive``
    (defaults target_kl 0.1, horizon 10000); OpenRLHF ``kl_target``.

    Args:
        coef: current β.
        observed_kl: mean KL of the last batch (a float, or a 0-d tensor to stay on the device).
        target: KL_target > 0.
        horizon: steps over which β may change by about e (> 0).
        n_steps: number of samples (or steps) since the last update, as in the paper.

    Returns:
        The new β (a tensor if ``observed_kl`` is one).
    """
    if target <= 0 or horizon <= 0:
        raise ValueError(f"target and horizon must be > 0; got target={target}, horizon={horizon}")
    error = observed_kl / target - 1.0
    error = error.clamp(-0.2, 0.2) if isinstance(error, torch.Tensor) else min(max(error, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


@register(
    "controller",
    "adaptive_entropy_coef",
    paper="He et al. 2025, Skywork Open Reasoner 1 Technical Report, arXiv:2505.22312",
    tag="checked: TRL",
)
def adaptive_entropy_coef(
    coef: Scalar,
    entropy: Scalar,
    *,
    target: float = 0.2,
    delta: float = 0.005,
    min: float = 0.0,
    max: float = 1.0,
) -> Scalar:
    """Skywork-OR1 coefficient update (He et al. 2025, arXiv:2505.22312; TRL adaptive entropy control).

    c_H ← clip(c_H + Δ, c_min, c_max) if H ≤ H*, else clip(c_H − Δ, c_min, c_max).

    Args:
        coef: current c_H.
        entropy: global mean token entropy of the step just taken (float or 0-d tensor).
        target: H*.
        delta: Δ.
        min: c_min.
        max: c_max.

    Returns:
        The next c_H (a tensor if ``entropy`` is one).
    """
    if isinstance(entropy, torch.Tensor):
        step = torch.where(entropy <= target, delta, -delta)
        return torch.clamp(coef + step, min, max)
    new = coef + delta if entropy <= target else coef - delta
    return min if new < min else max if new > max else new


@register(
    "controller",
    "epo_entropy_hist",
    paper="Xu et al. 2025, EPO: Entropy-regularized Policy Optimization for LLM Agents, arXiv:2509.22576",
    tag="reconstructed",
)
def epo_entropy_hist(hist: Scalar | None, entropy: Scalar, *, momentum: float = 0.9) -> Scalar:
    """Running mean of the entropy for ``epo_smooth_recon`` (EPO, arXiv:2509.22576; reconstructed as an EMA).

    H̄_hist ← μ·H̄_hist + (1 − μ)·H̄; the first call returns H̄.

    Args:
        hist: current running mean, or None before the first step.
        entropy: mean token entropy of the step just taken.
        momentum: μ in [0, 1).

    Returns:
        The new running mean.
    """
    return entropy if hist is None else momentum * hist + (1.0 - momentum) * entropy


@register(
    "controller",
    "r2vpo_dual_update",
    paper="Luo et al. 2026, Ratio-Variance Regularized Policy Optimization for Efficient LLM Fine-tuning, "
    "arXiv:2601.03320",
    tag="reconstructed",
)
def r2vpo_dual_update(
    dual_coef: float | torch.Tensor,
    ratio_sq_dev: float | torch.Tensor,
    *,
    var_target: float = 0.01,
    dual_lr: float = 0.1,
) -> float | torch.Tensor:
    """The dual step of ``r2vpo_recon`` (reconstructed from Luo et al. 2026, arXiv:2601.03320).

    λ ← max(0, λ + η_λ·(mean_t (ρ−1)² − δ)).

    Args:
        dual_coef: current λ.
        ratio_sq_dev: the masked mean of the "ratio/sq_dev" metric over the last update's tokens.
        var_target: δ, the same value passed to the loss.
        dual_lr: η_λ (ours).

    Returns:
        The next λ (a tensor if either input is one).
    """
    step = dual_coef + dual_lr * (ratio_sq_dev - var_target)
    return torch.clamp(step, min=0.0) if isinstance(step, torch.Tensor) else max(0.0, step)


@register(
    "controller",
    "ref_sync",
    paper="Gorbatovski et al. 2024, Learn Your Reference Model for Real Good Alignment (TR-DPO), arXiv:2404.09656; "
    "TRL sync_ref_model",
    tag="checked: TRL callback",
    facts={"reference_sync"},
)
@torch.no_grad()
def ref_sync(
    reference: Iterable[torch.Tensor], policy: Iterable[torch.Tensor], step: int, *, alpha: float = 0.6,
    every: int = 512,
) -> bool:  # fmt: skip
    """Reference refresh (Gorbatovski et al. 2024, TR-DPO, arXiv:2404.09656; TRL ``SyncRefModelCallback``).

    After every `every` steps: θ_ref ← α·θ + (1 − α)·θ_ref, parameter by parameter, in place. α = 1 replaces the
    reference by the policy (a hard reset, GARDO's `ref_reset`).

    Args:
        reference: the reference policy's parameters (changed in place).
        policy: the policy's parameters, in the same order.
        step: the step just taken (1-based); the mix happens when it is a multiple of `every`.
        alpha: α in (0, 1] (TRL ``ref_model_mixup_alpha``, 0.6 in the TR-DPO paper's soft update).
        every: τ ≥ 1 (TRL ``ref_model_sync_steps``, 512).

    Returns:
        Whether the reference was updated at this step.
    """
    if not 0.0 < alpha <= 1.0 or every < 1:
        raise ValueError(f"ref_sync needs 0 < alpha <= 1 and every >= 1; got alpha={alpha}, every={every}")
    if step % every:
        return False
    for ref, new in zip(reference, policy, strict=True):
        ref.lerp_(new.detach().to(ref.dtype), alpha)  # ref + α·(θ − ref)
    return True
