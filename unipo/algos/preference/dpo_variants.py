"""DPO variants that change the score, weight the pair or add a term to the logistic loss (ALGORITHMS.md §7.1):
sigmoid_norm, f_dpo, ld_dpo, wpo, dpop, lr_dpo, the plain SFT loss on chosen responses, and spo_aux_recon (DPO plus a
self-supervised preference-degree classifier).

Same signature as the family (``unipo.algos.preference``): summed log-probs [B] in, per-pair loss [B] out; ``ld_dpo``
takes per-token [B, T] log-probs with masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.algos.ops import check_choice
from unipo.algos.preference._common import batch_token_nll, check_positive, check_unit, log_ratios, per_token
from unipo.algos.registry import register, warn_reconstruction

_F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


@register(
    "preference",
    "sigmoid_norm",
    paper="TRL loss_type='sigmoid_norm' (length-normalised DPO); Rafailov et al. 2023, DPO, arXiv:2305.18290",
    tag="memory (TRL)",
)
def sigmoid_norm(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Length-normalised DPO (TRL ``sigmoid_norm``; DPO of Rafailov et al. 2023, arXiv:2305.18290).

    L = −log σ(β·(h_w/|y_w| − h_l/|y_l|)): DPO on per-token mean log-ratios, so a long response does not dominate.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        chosen_len: [B] tokens of y_w.
        rejected_len: [B] tokens of y_l.
        beta: β.

    Returns:
        [B] per-pair loss; log 2 at policy = reference.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return -F.logsigmoid(
        beta * (per_token(h_w, chosen_len, "chosen_len") - per_token(h_l, rejected_len, "rejected_len"))
    )


@register(
    "preference",
    "f_dpo",
    paper="Wang et al. 2023, Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence "
    "Constraints, arXiv:2309.16240 (TRL f_divergence_type)",
    tag="checked: TRL",
)
def f_dpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    alpha: float = 1.0,
) -> torch.Tensor:
    """f-DPO (Wang et al. 2023, arXiv:2309.16240), as TRL's ``f_divergence_type``: −log σ(β·z) with z the difference
    of f′(u) between chosen and rejected, u = π_θ/π_ref = e^h.

    z = h_w − h_l (reverse KL: DPO); (e^{−α·h_l} − e^{−α·h_w})/α (α-divergence, TRL's form (1 − u^{−α})/α with the
    constant dropped; α → 0 is reverse KL); α = 1 of it is the forward KL, e^{−h_l} − e^{−h_w}; and for the
    Jensen-Shannon divergence z = (h_w − h_l) − (softplus(h_w) − softplus(h_l)) (f′ = log(2u/(1 + u))).

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        divergence: "reverse_kl" (DPO), "forward_kl", "js" or "alpha".
        alpha: α > 0 of the α-divergence (TRL ``alpha_divergence_coef``, default 1.0); used by "alpha" only.

    Returns:
        [B] per-pair loss; log 2 at policy = reference for every divergence.

    Note:
        TRL caps the exponentials (``cap_exp``) to avoid overflow; here the exponent is clamped at 50.
    """
    check_choice("divergence", divergence, _F_DIVERGENCES)
    check_positive(alpha, "alpha")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    if divergence == "reverse_kl":
        z = h_w - h_l
    elif divergence == "js":
        z = (h_w - h_l) - (F.softplus(h_w) - F.softplus(h_l))
    else:
        a = 1.0 if divergence == "forward_kl" else alpha
        z = (torch.exp((-a * h_l).clamp(max=50.0)) - torch.exp((-a * h_w).clamp(max=50.0))) / a
    return -F.logsigmoid(beta * z)


@register(
    "preference",
    "ld_dpo",
    paper="Liu et al. 2024, Length Desensitization in Direct Preference Optimization, arXiv:2409.06411 (TRL ld_alpha)",
    tag="memory (TRL ld_alpha)",
)
def ld_dpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float = 0.1,
    ld_alpha: float = 0.5,
) -> torch.Tensor:
    """Length-desensitised DPO (Liu et al. 2024, arXiv:2409.06411; TRL ``ld_alpha``).

    DPO on log π(y) := Σ_{t≤ℓ*} log π_t + α·Σ_{t>ℓ*} log π_t with ℓ* = min(|y_w|, |y_l|), for policy and reference
    alike: the tokens past the shorter response's length count α times, so the longer response's surplus does not
    dominate Δ. α = 1 is DPO.

    Args:
        chosen_logp: [B, T] per-token log π_θ of y_w (completion-aligned, right-padded).
        rejected_logp: [B, T] per-token log π_θ of y_l.
        ref_chosen_logp: [B, T] per-token log π_ref of y_w.
        ref_rejected_logp: [B, T] per-token log π_ref of y_l.
        chosen_mask: [B, T] tokens of y_w.
        rejected_mask: [B, T] tokens of y_l.
        beta: β.
        ld_alpha: α ∈ [0, 1], the weight of the surplus tokens (TRL leaves it off; 0.5 is unipo's default).

    Returns:
        [B] per-pair loss.
    """
    check_unit(ld_alpha, "ld_alpha")
    public = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1))[:, None]
    position = torch.arange(chosen_logp.shape[-1], device=chosen_logp.device)[None, :]
    weight = torch.where(position < public, 1.0, ld_alpha)

    def score(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (torch.where(mask.bool(), logp, torch.zeros_like(logp)) * weight).sum(-1)

    h_w = score(chosen_logp, chosen_mask) - score(ref_chosen_logp.detach(), chosen_mask)
    h_l = score(rejected_logp, rejected_mask) - score(ref_rejected_logp.detach(), rejected_mask)
    return -F.logsigmoid(beta * (h_w - h_l))


@register(
    "preference",
    "wpo",
    paper="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, arXiv:2406.11827",
    tag="checked: TRL (use_weighting)",
)
def wpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_log_sum_pi_squared: torch.Tensor,
    rejected_log_sum_pi_squared: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Weighted preference optimisation (Zhou et al. 2024, arXiv:2406.11827, eq. 2; TRL ``use_weighting``).

    L = sg(ω)·(−log σ(βΔ)), ω = min(1, exp(ℓ_w + ℓ_l)), ℓ = (1/|y|)·Σ_t [log π_θ(y_t) − log Σ_v π_θ(v∣s_t)²]: a pair
    counts in proportion to how likely the current policy is to produce it, each token's probability measured
    against the policy's own "typical" token probability Σ_v π(v)² at that position, so that off-policy pairs
    weigh less. With ω ≡ 1 (as when both responses are the policy's greedy, certain tokens) it is DPO (§13 P4).

    Args:
        chosen_logp, rejected_logp: [B] summed log π_θ of y_w and y_l.
        ref_chosen_logp, ref_rejected_logp: [B] the reference's.
        chosen_log_sum_pi_squared, rejected_log_sum_pi_squared: [B] Σ_t log Σ_v π_θ(v∣s_t)² over each response's
            tokens (the trainer's forward keeps them; TRL computes them under no_grad).
        chosen_len, rejected_len: [B] tokens of y_w and y_l.
        beta: β.

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    with torch.no_grad():
        ell_w = per_token(chosen_logp - chosen_log_sum_pi_squared, chosen_len, "chosen_len")
        ell_l = per_token(rejected_logp - rejected_log_sum_pi_squared, rejected_len, "rejected_len")
        weight = torch.exp(ell_w + ell_l).clamp(max=1.0)
    return weight * -F.logsigmoid(beta * (h_w - h_l))


@register(
    "preference",
    "dpop",
    paper="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive, arXiv:2402.13228",
    tag="memory (oat dpo_positive_lambda)",
)
def dpop(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    lam: float = 50.0,
) -> torch.Tensor:
    """DPO-Positive (Pal et al. 2024, Smaug, arXiv:2402.13228).

    L = −log σ(β·(Δ − λ·max(0, log π_ref(y_w) − log π_θ(y_w)))): a penalty once the chosen response's likelihood
    falls below the reference's, which plain DPO allows while it widens the margin.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        lam: λ ≥ 0 (the paper's 50, recalled; λ = 0 is DPO).

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    if lam < 0:
        raise ValueError(f"lam must be >= 0; got {lam}")
    return -F.logsigmoid(beta * (h_w - h_l - lam * torch.relu(-h_w)))


@register(
    "preference",
    "lr_dpo",
    paper="Park et al. 2024, Disentangling Length from Quality in Direct Preference Optimization, arXiv:2403.19159",
    tag="memory (oat len_reg_alpha)",
)
def lr_dpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.01,
) -> torch.Tensor:
    """Length-regularised DPO (Park et al. 2024, arXiv:2403.19159).

    L = −log σ(βΔ − α·(|y_w| − |y_l|)): a chosen response longer than the rejected one must win by more.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        chosen_len: [B] tokens of y_w.
        rejected_len: [B] tokens of y_l.
        beta: β.
        alpha: α ≥ 0, per token of length difference (0.01 is unipo's default; α = 0 is DPO).

    Returns:
        [B] per-pair loss.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0; got {alpha}")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    length_gap = (chosen_len - rejected_len).to(h_w.dtype)
    return -F.logsigmoid(beta * (h_w - h_l) - alpha * length_gap)


@register("preference", "sft", paper="TRL loss_type='sft' (NLL on the chosen responses)", tag="checked: TRL")
def sft(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    chosen_len_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """SFT on the chosen responses, TRL's ``sft`` loss term (https://github.com/huggingface/trl, DPOTrainer).

    L_b = −logp_w,b / L̄, L̄ the mean chosen length of the optimizer step: the mean over pairs is the NLL averaged over
    every chosen token of the batch, −Σ_b logp_w,b / Σ_b |y_w,b| (TRL), not a mean of per-sequence means. Rejected
    responses and the reference are unused.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B]; unused.
        ref_chosen_logp: [B]; unused.
        ref_rejected_logp: [B]; unused.
        chosen_len: [B] tokens of y_w.
        chosen_len_mean: the step's mean chosen length (the trainer passes it, so micro-batching does not change the
            normalisation); None: the mean of ``chosen_len``.

    Returns:
        [B] per-pair loss.
    """
    return batch_token_nll(chosen_logp, chosen_len, chosen_len_mean)


_SPO = "Li et al. 2024, Self-supervised Preference Optimization (SPO), arXiv:2409.17791"


@register("preference", "spo_aux_recon", paper=f"{_SPO} (seeds_000_001.md 001-47)", tag="reconstructed")
def spo_aux_recon(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    degree_logits: torch.Tensor,
    degree_labels: torch.Tensor,
    beta: float = 0.1,
    weight: float = 0.1,
    max_removed: int = 2,
) -> torch.Tensor:
    """Reconstruction of SPO, Self-supervised Preference Optimization (Li et al. 2024, arXiv:2409.17791): DPO plus a
    self-supervised preference-degree loss. Known from the abstract: responses whose key content is removed have a
    lower preference degree, a self-supervised module classifies the degree, and its loss is added to the alignment
    loss; from a review: key content is found by RAKE. Ours (the paper body was not read): the copies, the classifier
    and every default. The trainer builds copies j = 0..K of each chosen response without its min(j, P) best RAKE
    phrases (`unipo.data.keyphrases`) and classifies how many were removed with a linear head (starting at zero) on
    the policy's last hidden state after the copy, trained with the policy:

        L = −log σ(β·(h_w − h_l)) + λ·(1/(K + 1))·Σ_j CE(softmax(z_j), k_j),

    h the log-ratios log π_θ/π_ref, z_j the head's logits for copy j and k_j its label. The degree term's gradient
    reaches the policy through the hidden states.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        degree_logits: [B, K + 1, K + 1] the classifier's logits for each copy of the chosen response.
        degree_labels: [B, K + 1] how many key phrases each copy lost (0..K).
        beta: DPO's β (0.1, DPO's usual value).
        weight: λ, the degree loss's weight (0.1 is ours).
        max_removed: K, the most key phrases a copy loses (2 is ours); the classifier has K + 1 classes.

    Returns:
        [B] per-pair loss.
    """
    warn_reconstruction("spo_aux_recon", _SPO)
    check_positive(beta, "spo_aux_recon: beta")
    classes = max_removed + 1
    if degree_logits.shape != (*chosen_logp.shape, classes, classes) or degree_labels.shape != degree_logits.shape[:2]:
        raise ValueError(f"spo_aux_recon with max_removed={max_removed} needs [B, {classes}, {classes}] degree_logits "
                         f"and [B, {classes}] degree_labels; got {tuple(degree_logits.shape)} and "
                         f"{tuple(degree_labels.shape)}")  # fmt: skip
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    ce = F.cross_entropy(degree_logits.flatten(0, 1).float(), degree_labels.flatten().long(), reduction="none")
    return -F.logsigmoid(beta * (h_w - h_l)) + weight * ce.view(degree_labels.shape).mean(-1).to(h_w.dtype)
