"""Squared, hinge and anchored (per-response) DPO-family losses as implemented by TRL ``DPOTrainer``.

ALGORITHMS.md §7.1. ``ipo`` and ``sppo_hard`` regress log-ratios onto targets ±1/(2β); ``hinge`` is SLiC's margin
loss; ``apo_*``, ``nca_pair`` and ``bco_pair`` score h_w and h_l separately instead of only their difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.algos.preference._common import check_positive, log_ratios, per_token
from unipo.algos.registry import register

_APO = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, arXiv:2408.06266"


@register(
    "preference",
    "ipo",
    paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences, "
    "arXiv:2310.12036",
    tag="checked: TRL",
)
def ipo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor | None = None,
    rejected_len: torch.Tensor | None = None,
    beta: float = 0.1,
    length_norm: bool = True,
) -> torch.Tensor:
    """Identity Preference Optimisation (Azar et al. 2023, arXiv:2310.12036, eq. 17; TRL ``ipo``).

    L = (Δ̄ − 1/(2β))², Δ̄ = h_w/|y_w| − h_l/|y_l| (TRL, length_norm=True) or Δ̄ = h_w − h_l (the paper as written,
    length_norm=False). Here β is the paper's τ; at policy = reference L = 1/(4β²).

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        chosen_len: [B] completion tokens of y_w; required when length_norm.
        rejected_len: [B] completion tokens of y_l; required when length_norm.
        beta: β > 0 (τ in the paper); the target margin is 1/(2β).
        length_norm: average h per token as TRL does (a TRL code comment says the IPO authors confirmed this
            matches their runs); False uses summed log-ratios (TRL's ``ipo_sum`` option).

    Returns:
        [B] per-pair loss.
    """
    check_positive(beta, "beta")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    if length_norm:
        h_w, h_l = per_token(h_w, chosen_len, "chosen_len"), per_token(h_l, rejected_len, "rejected_len")
    return (h_w - h_l - 1.0 / (2.0 * beta)) ** 2


@register(
    "preference",
    "hinge",
    paper="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, arXiv:2305.10425",
    tag="checked: TRL",
)
def hinge(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """SLiC-style hinge loss on the implicit-reward margin (Zhao et al. 2023, arXiv:2305.10425; TRL ``hinge``).

    L = max(0, 1 − βΔ): SLiC's calibration margin δ = 1/β, with the reference log-ratio as in TRL.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β, the inverse margin.

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return torch.relu(1.0 - beta * (h_w - h_l))


@register(
    "preference",
    "sppo_hard",
    paper="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, arXiv:2405.00675",
    tag="checked: TRL",
)
def sppo_hard(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """SPPO with hard labels P ∈ {1, 0} (Wu et al. 2024, arXiv:2405.00675, Alg. 1; TRL ``sppo_hard``).

    L = (h_w − 1/(2β))² + (h_l + 1/(2β))²; minimised at h_w = 1/(2β), h_l = −1/(2β). Here π_ref plays π_t.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_t(y_w∣x) (the previous iterate).
        ref_rejected_logp: [B] summed log π_t(y_l∣x).
        beta: β > 0 (η⁻¹ in the paper).

    Returns:
        [B] per-pair loss.
    """
    check_positive(beta, "beta")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    target = 1.0 / (2.0 * beta)
    return (h_w - target) ** 2 + (h_l + target) ** 2


@register("preference", "apo_zero", paper=_APO, tag="checked: TRL")
def apo_zero(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv:2408.06266; TRL ``apo_zero``): raise chosen, lower rejected.

    L = (1 − σ(β·h_w)) + σ(β·h_l). Use when the chosen answers are better than the model's own. Value 1 at h = 0.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.

    Returns:
        [B] per-pair loss in [0, 2].
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return (1.0 - torch.sigmoid(beta * h_w)) + torch.sigmoid(beta * h_l)


@register("preference", "apo_zero_unpaired", paper=_APO, tag="checked: TRL", facts={"unpaired"})
def apo_zero_unpaired(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """APO-zero, unpaired (D'Oosterlinck et al. 2024, arXiv:2408.06266; TRL KTO ``loss_type="apo_zero_unpaired"``).

    Desirable: 1 − σ(β·h); undesirable: σ(β·h); no reference point z₀ (unlike ``kto``). On pairs split into their
    chosen and rejected responses the mean is half of ``apo_zero``'s per-pair loss.

    Args:
        chosen_logp: [B_D] summed log π_θ(y∣x) of the desirable examples (B_D may be 0).
        rejected_logp: [B_U] summed log π_θ(y∣x) of the undesirable examples.
        ref_chosen_logp: [B_D] reference log-probs of the desirable examples.
        ref_rejected_logp: [B_U] reference log-probs of the undesirable examples.
        beta: β.

    Returns:
        [B_D + B_U] per-example loss, desirable first; each ½ at policy = reference.
    """
    if chosen_logp.shape != ref_chosen_logp.shape or rejected_logp.shape != ref_rejected_logp.shape:
        raise ValueError("apo_zero_unpaired: each policy log-prob tensor needs a reference tensor of the same shape")
    h_d = chosen_logp - ref_chosen_logp.detach()
    h_u = rejected_logp - ref_rejected_logp.detach()
    return torch.cat([1.0 - torch.sigmoid(beta * h_d), torch.sigmoid(beta * h_u)])


@register("preference", "apo_down", paper=_APO, tag="checked: TRL")
def apo_down(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """APO-down (D'Oosterlinck et al. 2024, arXiv:2408.06266; TRL ``apo_down``): lower both, rejected more.

    L = σ(β·h_w) + (1 − σ(β·Δ)). Use when the model is better than the chosen answers. Value 1 at h = 0.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.

    Returns:
        [B] per-pair loss in [0, 2].
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return torch.sigmoid(beta * h_w) + (1.0 - torch.sigmoid(beta * (h_w - h_l)))


@register(
    "preference",
    "nca_pair",
    paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards, arXiv:2402.05369",
    tag="checked: TRL",
)
def nca_pair(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """Noise Contrastive Alignment, pairwise (Chen et al. 2024, arXiv:2402.05369; TRL ``nca_pair``).

    L = −log σ(β·h_w) − ½·log σ(−β·h_w) − ½·log σ(−β·h_l): absolute (not relative) implicit-reward targets, so the
    chosen likelihood is not pushed down. Value 2·log 2 at h = 0.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return -F.logsigmoid(beta * h_w) - 0.5 * F.logsigmoid(-beta * h_w) - 0.5 * F.logsigmoid(-beta * h_l)


@register(
    "preference",
    "bco_pair",
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, arXiv:2404.04656",
    tag="checked: TRL; memory (reward_shift)",
)
def bco_pair(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    reward_shift: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """Binary Classifier Optimisation, pairwise (Jung et al. 2024, arXiv:2404.04656; TRL ``bco_pair``).

    L = −log σ(β·h_w − δ) − log σ(−(β·h_l − δ)): a logistic classifier of chosen vs rejected on the implicit
    reward. TRL's form has δ = 0; the paper subtracts a running mean δ of the rewards β·h.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        reward_shift: scalar δ, the trainer's running mean of β·h over chosen and rejected; None means 0 (TRL).
        beta: β.

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    shift = 0.0 if reward_shift is None else reward_shift.detach()
    return -F.logsigmoid(beta * h_w - shift) - F.logsigmoid(-(beta * h_l - shift))
