"""Reference-free pairwise losses and the unpaired KTO loss (ALGORITHMS.md §7.2).

``simpo``, ``cpo``, ``orpo`` and ``cpl`` score the policy's own log-probs and ignore the reference arguments
(they still accept them, so every preference loss has one signature). ``kto`` is unpaired: its "chosen" and
"rejected" inputs are the desirable and undesirable examples, whose counts may differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.algos.ops import check_choice
from unipo.algos.preference._common import batch_token_nll, per_token, smoothed_logistic
from unipo.algos.registry import register


@register(
    "preference",
    "simpo",
    paper="Meng, Xia, Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, arXiv:2405.14734",
    tag="checked: TRL",
)
def simpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """SimPO (Meng, Xia, Chen 2024, arXiv:2405.14734, eq. 6; TRL CPO ``loss_type="simpo"`` with cpo_alpha=0).

    L = −(1−ε)·log σ(z) − ε·log σ(−z), z = β·(ℓ̄_w − ℓ̄_l) − γ, ℓ̄ = logp/|y| (no reference model).

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (reference-free).
        ref_rejected_logp: ignored (reference-free).
        chosen_len: [B] completion tokens of y_w.
        rejected_len: [B] completion tokens of y_l.
        beta: β (TRL default 0.1; the paper uses β ≈ 2–2.5).
        gamma: γ, target reward margin (TRL ``simpo_gamma`` 0.5; the paper sets γ/β ≈ 0.5).
        label_smoothing: ε ∈ [0, ½].

    Returns:
        [B] per-pair loss.
    """
    mean_w = per_token(chosen_logp, chosen_len, "chosen_len")
    mean_l = per_token(rejected_logp, rejected_len, "rejected_len")
    return smoothed_logistic(beta * (mean_w - mean_l) - gamma, label_smoothing)


@register(
    "preference",
    "alphapo",
    paper="Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment, arXiv:2501.03884",
    tag="checked: TRL CPO alpha",
)
def alphapo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    alpha: float,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """AlphaPO (Gupta et al. 2025, arXiv:2501.03884; TRL CPO ``loss_type="alphapo"`` with ``alpha``): SimPO with the
    reward shaped by α.

    r = (1 − p̄^{−α})/α with p̄ = exp(ℓ̄), ℓ̄ = logp/|y| (the length-normalised likelihood); L = −(1−ε)·log σ(z) −
    ε·log σ(−z), z = β·(r_w − r_l) − γ, no reference model. As α → 0, r → ℓ̄ and it is `simpo`; α > 0 bounds the
    reward above by 1/α, α < 0 makes it unbounded in the likelihood.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (reference-free).
        ref_rejected_logp: ignored (reference-free).
        chosen_len: [B] completion tokens of y_w.
        rejected_len: [B] completion tokens of y_l.
        alpha: α ≠ 0, the reward's shape (required; TRL's default 0 is SimPO).
        beta: β (SimPO's scale, as `simpo`'s recipe).
        gamma: γ, target reward margin (TRL ``simpo_gamma`` 0.5).
        label_smoothing: ε ∈ [0, ½].

    Returns:
        [B] per-pair loss.
    """
    if alpha == 0:
        raise ValueError("alpha must be nonzero (alpha -> 0 is simpo)")

    def reward(logp: torch.Tensor, length: torch.Tensor, name: str) -> torch.Tensor:
        return (1 - torch.exp(-alpha * per_token(logp, length, name))) / alpha

    margin = reward(chosen_logp, chosen_len, "chosen_len") - reward(rejected_logp, rejected_len, "rejected_len")
    return smoothed_logistic(beta * margin - gamma, label_smoothing)


@register(
    "preference",
    "tpo",
    paper="Saeidi et al. 2024, Triple Preference Optimization: Achieving Better Alignment using a Single Step "
    "Optimization, arXiv:2405.16681",
    tag="checked: TRL experimental tpo",
)
def tpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    gold_logp: torch.Tensor,
    gold_len: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    gold_len_mean: torch.Tensor | None = None,
    beta: float = 0.01,
    alpha: float = 1.0,
    loss_type: str = "sigmoid",
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """TPO (Saeidi et al. 2024, arXiv:2405.16681; TRL experimental ``TPOTrainer``): a reference-free pair loss on
    (y_w, y_l) plus α times the NLL of a third, gold response y_gold (the pair data's `reference` column).

    With δ = log π_θ(y_w) − log π_θ(y_l) (summed; token means for ``ipo`` and ``tpo-l``), the pair term is
    −(1−ε)·log σ(βδ) − ε·log σ(−βδ) (``sigmoid``), max(0, 1 − βδ) (``hinge``), (δ − 1/(2β))² (``ipo``), or the
    sigmoid of β·δ − γ (``tpo-l``). The NLL is TRL's: averaged over every gold token of the batch, i.e. per pair
    −log π_θ(y_gold)/L̄ with L̄ the step's mean gold length.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (reference-free).
        ref_rejected_logp: ignored (reference-free).
        gold_logp: [B] summed log π_θ(y_gold∣x).
        gold_len: [B] completion tokens of y_gold.
        chosen_len: [B] completion tokens of y_w.
        rejected_len: [B] completion tokens of y_l.
        gold_len_mean: the step's mean gold length L̄ (the trainer passes it; None: the mean of ``gold_len``).
        beta: β (TRL default 0.01).
        alpha: α, the NLL weight (TRL ``tpo_alpha`` 1.0).
        loss_type: "sigmoid", "hinge", "ipo" or "tpo-l".
        gamma: γ, the margin of ``tpo-l`` (TRL ``tpo_l_gamma`` 0.5).
        label_smoothing: ε for the sigmoid forms.

    Returns:
        [B] per-pair loss.
    """
    check_choice("loss_type", loss_type, ("sigmoid", "hinge", "ipo", "tpo-l"))
    if loss_type in ("ipo", "tpo-l"):
        delta = per_token(chosen_logp, chosen_len, "chosen_len") - per_token(
            rejected_logp, rejected_len, "rejected_len"
        )
    else:
        delta = chosen_logp - rejected_logp
    if loss_type == "hinge":
        pair = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        pair = (delta - 1 / (2 * beta)) ** 2
    else:
        pair = smoothed_logistic(beta * delta - (gamma if loss_type == "tpo-l" else 0.0), label_smoothing)
    return pair + alpha * batch_token_nll(gold_logp, gold_len, gold_len_mean)


@register(
    "preference",
    "slic_hf",
    paper="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, arXiv:2305.10425",
    tag="memory",
)
def slic_hf(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    gold_logp: torch.Tensor,
    delta: float = 1.0,
    lam: float = 0.5,
) -> torch.Tensor:
    """SLiC-HF (Zhao et al. 2023, arXiv:2305.10425, eq. 1 with the rank calibration loss): a hinge on the sequence
    log-likelihoods plus a cross-entropy regulariser on a target sequence y_ref (the SFT target; the pair data's
    `reference` column).

    L = max(0, δ − log π_θ(y_w∣x) + log π_θ(y_l∣x)) − λ·log π_θ(y_ref∣x). No reference model: the regulariser keeps the
    model near the SFT data instead. `hinge` (TRL's ``loss_type="hinge"``) is the calibration term on log-ratios.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (no reference model).
        ref_rejected_logp: ignored (no reference model).
        gold_logp: [B] summed log π_θ(y_ref∣x).
        delta: δ, the calibration margin (1.0).
        lam: λ, the regulariser's weight (0.5 is ours; the paper's value is not recorded here).

    Returns:
        [B] per-pair loss.
    """
    return torch.relu(delta - chosen_logp + rejected_logp) - lam * gold_logp


@register(
    "preference",
    "cpo",
    paper="Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
    "Machine Translation, arXiv:2401.08417",
    tag="checked: TRL",
)
def cpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
    nll_coef: float = 1.0,
    length_norm: bool = False,
) -> torch.Tensor:
    """Contrastive Preference Optimisation (Xu et al. 2024, arXiv:2401.08417, eq. 8; TRL CPO ``sigmoid``).

    L = −log σ(β·(s_w − s_l)) + α·NLL(y_w), s = logp (summed) or logp/|y| (length_norm), NLL = −logp_w/|y_w|.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (reference-free).
        ref_rejected_logp: ignored (reference-free).
        chosen_len: [B] completion tokens of y_w (mean-token NLL, as TRL's cross-entropy).
        rejected_len: [B] completion tokens of y_l (used when length_norm).
        beta: β.
        nll_coef: α ≥ 0, weight of the NLL term (TRL ``cpo_alpha``).
        length_norm: score with mean token log-probs (TRL does this for its ipo/simpo variants).

    Returns:
        [B] per-pair loss.
    """
    s_w, s_l = chosen_logp, rejected_logp
    if length_norm:
        s_w, s_l = per_token(s_w, chosen_len, "chosen_len"), per_token(s_l, rejected_len, "rejected_len")
    return -F.logsigmoid(beta * (s_w - s_l)) - nll_coef * per_token(chosen_logp, chosen_len, "chosen_len")


@register(
    "preference",
    "orpo",
    paper="Hong, Lee, Thorne 2024, ORPO: Monolithic Preference Optimization without Reference Model, arXiv:2403.07691",
    tag="checked: TRL",
)
def orpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Odds-Ratio Preference Optimisation (Hong, Lee, Thorne 2024, arXiv:2403.07691, eq. 6–7; TRL ``ORPOTrainer``).

    L = NLL(y_w) − β·log σ(lo(y_w) − lo(y_l)), lo(y) = ℓ̄ − log(1 − exp ℓ̄), ℓ̄ = logp/|y|, NLL = −ℓ̄_w. β = 0 is SFT.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (reference-free).
        ref_rejected_logp: ignored (reference-free).
        chosen_len: [B] completion tokens of y_w.
        rejected_len: [B] completion tokens of y_l.
        beta: β (λ in the paper), weight of the odds-ratio term.

    Returns:
        [B] per-pair loss.
    """
    mean_w = per_token(chosen_logp, chosen_len, "chosen_len")
    mean_l = per_token(rejected_logp, rejected_len, "rejected_len")
    # log(1 − e^ℓ̄) via expm1 keeps precision when ℓ̄ is close to 0 (TRL uses log1p(−exp), same value).
    log_odds = (mean_w - torch.log(-torch.expm1(mean_w))) - (mean_l - torch.log(-torch.expm1(mean_l)))
    return -mean_w - beta * F.logsigmoid(log_odds)


@register(
    "preference",
    "cpl",
    paper="Hejna et al. 2023, Contrastive Preference Learning: Learning from Human Feedback without RL, "
    "arXiv:2310.13639",
    tag="memory",
)
def cpl(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    conservative_bias: float = 0.5,
) -> torch.Tensor:
    """Contrastive Preference Learning, whole responses, γ = 1 (Hejna et al. 2023, arXiv:2310.13639, eq. 5).

    L = −log σ(β·(logp_w − λ·logp_l)): the regret-preference model with the advantage read off as α·log π; λ < 1
    down-weights the rejected term (the paper's conservative bias). No reference model, no reward model.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: ignored (reference-free).
        ref_rejected_logp: ignored (reference-free).
        beta: α in the paper, the temperature.
        conservative_bias: λ ∈ (0, 1]; 1 is the unbiased contrastive loss.

    Returns:
        [B] per-pair loss.
    """
    if not 0.0 < conservative_bias <= 1.0:
        raise ValueError(f"conservative_bias must lie in (0, 1]; got {conservative_bias}")
    return -F.logsigmoid(beta * (chosen_logp - conservative_bias * rejected_logp))


@register(
    "preference",
    "kto",
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv:2402.01306",
    tag="checked: TRL",
    facts={"unpaired"},
)
def kto(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    kl_logp: torch.Tensor | None = None,
    ref_kl_logp: torch.Tensor | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Kahneman–Tversky Optimisation, unpaired (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 8; TRL ``KTOTrainer``).

    Desirable: λ_D·(1 − σ(β(h − z₀))); undesirable: λ_U·(1 − σ(β(z₀ − h))); z₀ = max(0, sg(mean(h(y′)))), with h(y′)
    = kl_logp − ref_kl_logp on mismatched completions.

    Args:
        chosen_logp: [B_D] summed log π_θ(y∣x) of the desirable examples (B_D may be 0).
        rejected_logp: [B_U] summed log π_θ(y∣x) of the undesirable examples (B_U may differ from B_D).
        ref_chosen_logp: [B_D] reference log-probs of the desirable examples.
        ref_rejected_logp: [B_U] reference log-probs of the undesirable examples.
        kl_logp: [B_KL] policy log-probs of mismatched completions y′ (each prompt paired with another prompt's
            completion, TRL shifts by one in the batch); for a global-batch z₀, gather them across ranks first.
            None gives z₀ = 0 (TRL without the KL term).
        ref_kl_logp: [B_KL] reference log-probs of the same mismatched completions.
        beta: β.
        desirable_weight: λ_D ≥ 0. TRL warns unless λ_D·B_D / (λ_U·B_U) ∈ [1, 4/3].
        undesirable_weight: λ_U ≥ 0.

    Returns:
        [B_D + B_U] per-example loss, desirable examples first; each term lies in [0, λ].
    """
    if chosen_logp.shape != ref_chosen_logp.shape or rejected_logp.shape != ref_rejected_logp.shape:
        raise ValueError("kto: each policy log-prob tensor needs a reference tensor of the same shape")
    if (kl_logp is None) != (ref_kl_logp is None):
        raise ValueError("kto: pass both kl_logp and ref_kl_logp, or neither")
    z0 = torch.zeros((), dtype=chosen_logp.dtype, device=chosen_logp.device)
    if kl_logp is not None and ref_kl_logp is not None:
        z0 = (kl_logp - ref_kl_logp).mean().detach().clamp(min=0.0)
    h_d = chosen_logp - ref_chosen_logp.detach()
    h_u = rejected_logp - ref_rejected_logp.detach()
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (h_d - z0)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - h_u)))
    return torch.cat([desirable, undesirable])
