"""Logistic (Bradley-Terry) DPO-family losses as implemented by TRL ``DPOTrainer`` (ALGORITHMS.md §7.1).

All are functions of the margin z = β·Δ, Δ = h_w − h_l, except ``aot`` (sorted margins) and ``rpo`` (adds an NLL
term). At policy = reference every one of them takes its value at Δ = 0 (log 2 for ``dpo``, ``cdpo``, ``rdpo``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.algos.ops import check_choice
from unipo.algos.preference._common import (
    batch_token_nll,
    check_positive,
    check_unit,
    log_ratios,
    per_token,
    smoothed_logistic,
)
from unipo.algos.registry import register

_DPO = "Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290"
_RDPO = "Chowdhury, Kini, Natarajan 2024, Provably Robust DPO, arXiv:2403.00409"


@register("preference", "dpo", paper=_DPO, tag="checked: TRL")
def dpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """Sigmoid DPO loss (Rafailov et al. 2023, arXiv:2305.18290, eq. 7; TRL ``loss_type="sigmoid"``).

    L = −log σ(β·Δ), Δ = (logp_w − ref_logp_w) − (logp_l − ref_logp_l). Equals log 2 when policy = reference.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β, inverse temperature of the implicit reward β·h.

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return -F.logsigmoid(beta * (h_w - h_l))


@register(
    "preference",
    "cdpo",
    paper="Mitchell 2023, A note on DPO with noisy preferences (conservative DPO), https://ericmitchell.ai/cdpo.pdf",
    tag="checked: TRL; memory (OpenRLHF anchor)",
)
def cdpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Conservative DPO (Mitchell 2023, https://ericmitchell.ai/cdpo.pdf; TRL ``sigmoid`` with ``label_smoothing``).

    L = −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ): DPO against the soft label (1−ε, ε). ε = 0 gives ``dpo``.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        label_smoothing: ε ∈ [0, ½], the assumed probability that a label is wrong. TRL's default is 0 (plain DPO);
            unipo defaults to 0.1 so that this id differs from ``dpo``.

    Returns:
        [B] per-pair loss.
    """
    check_unit(label_smoothing, "label_smoothing", upper=0.5)
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return smoothed_logistic(beta * (h_w - h_l), label_smoothing)


def _unbiased_flip(z: torch.Tensor, flip_rate: float) -> torch.Tensor:
    # Chowdhury et al. 2024, eq. 4: the importance-corrected loss whose expectation over label flips is the clean loss.
    if not 0.0 <= flip_rate < 0.5:
        raise ValueError(f"flip_rate must lie in [0, 0.5); got {flip_rate}")
    return ((1.0 - flip_rate) * -F.logsigmoid(z) - flip_rate * -F.logsigmoid(-z)) / (1.0 - 2.0 * flip_rate)


@register("preference", "rdpo", paper=_RDPO, tag="checked: TRL")
def rdpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    flip_rate: float = 0.1,
) -> torch.Tensor:
    """Robust DPO, unbiased under label flips (Chowdhury, Kini, Natarajan 2024, arXiv:2403.00409, eq. 4).

    L = [(1−ε)·(−log σ(βΔ)) − ε·(−log σ(−βΔ))] / (1−2ε). If each label is flipped with probability ε, the expected
    loss equals the clean ``dpo`` loss exactly. ε = 0 gives ``dpo``. Can be negative. TRL calls it
    ``loss_type="robust"``: ``robust`` is an alias of this id (`registry.ALIASES`), so recipes ported from TRL keep
    their loss name.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        flip_rate: ε ∈ [0, ½), the assumed label-flip rate (TRL ``label_smoothing``, TRL default 0).

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return _unbiased_flip(beta * (h_w - h_l), flip_rate)


@register(
    "preference",
    "rpo",
    paper="Liu et al. 2024, Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an "
    "Adversarial Regularizer, arXiv:2405.16436",
    tag="checked: TRL (sigmoid + sft terms); paper defaults: secondary (TRL paper index, App. E.1)",
)
def rpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_len: torch.Tensor,
    chosen_len_mean: torch.Tensor | None = None,
    beta: float = 0.01,
    nll_coef: float = 0.005,
    nll_norm: str = "batch_tokens",
) -> torch.Tensor:
    """Regularized PO = DPO + SFT on the chosen response (Liu et al. 2024, arXiv:2405.16436; TRL
    ``loss_type=["sigmoid", "sft"]``).

    L_b = −log σ(βΔ_b) + w·NLL_b. With ``nll_norm="batch_tokens"`` (TRL's ``sft`` term) NLL_b = −logp_w,b / L̄, L̄ the
    mean chosen length over the optimizer step's pairs, so the mean over pairs of the NLL term is the NLL averaged over
    every chosen token of the batch: −Σ_b logp_w,b / Σ_b |y_w,b|. With ``"sequence"`` NLL_b = −logp_w,b / |y_w,b|,
    each pair's own token mean (Iterative RPO's length-normalised NLL, recipe ``irpo``). The two differ when lengths
    differ.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        chosen_len: [B] number of completion tokens of y_w.
        chosen_len_mean: scalar L̄ over the whole optimizer step (the trainer passes it, so that micro-batching does
            not change the normalisation); None: the mean of ``chosen_len``.
        beta: β; default 0.01, the paper's (App. E.1, as quoted in TRL's paper index).
        nll_coef: w ≥ 0, the NLL weight; default 0.005, the paper's as TRL applies it (``loss_weights=[1, 0.005]``).
            Whether the paper's 0.005 is η or the product η·β is unverified (ALGORITHMS.md §7). Iterative RPO's 1.0 is
            the ``irpo`` recipe.
        nll_norm: "batch_tokens" (TRL, default) or "sequence".

    Returns:
        [B] per-pair loss.
    """
    check_choice("nll_norm", nll_norm, ("batch_tokens", "sequence"))
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    if nll_norm == "sequence":
        nll = -per_token(chosen_logp, chosen_len, "chosen_len")
    else:
        nll = batch_token_nll(chosen_logp, chosen_len, chosen_len_mean)
    return -F.logsigmoid(beta * (h_w - h_l)) + nll_coef * nll


@register(
    "preference",
    "discopop",
    paper="Lu et al. 2024, Discovering Preference Optimization Algorithms with and for LLMs, arXiv:2406.08414",
    tag="checked: TRL",
)
def discopop(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    tau: float = 0.05,
) -> torch.Tensor:
    """DiscoPOP log-ratio modulated loss (Lu et al. 2024, arXiv:2406.08414; TRL ``discopop``).

    L = (1−μ)·(−log σ(βΔ)) + μ·exp(−βΔ), μ = σ(βΔ/τ): a blend of the logistic and exponential losses.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        tau: τ > 0, temperature of the modulation (TRL ``discopop_tau``).

    Returns:
        [B] per-pair loss.
    """
    check_positive(tau, "tau")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    z = beta * (h_w - h_l)
    mix = torch.sigmoid(z / tau)
    return (1.0 - mix) * -F.logsigmoid(z) + mix * torch.exp(-z)


@register(
    "preference",
    "exo_pair",
    paper="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, arXiv:2402.00856",
    tag="checked: TRL",
)
def exo_pair(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
) -> torch.Tensor:
    """EXO, pairwise (Ji et al. 2024, arXiv:2402.00856; TRL ``exo_pair``).

    L = KL(q‖p_ε) = q_w·(log q_w − log(1−ε)) + q_l·(log q_l − log ε), q_w = σ(βΔ), q_l = σ(−βΔ): reverse KL from
    the model's preference distribution to the smoothed label. Non-negative; 0 at q_w = 1 − ε.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        label_smoothing: ε ∈ (0, ½); must be > 0 (log ε). Paper and TRL docs: 1e-3.

    Returns:
        [B] per-pair loss.
    """
    if not 0.0 < label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in (0, 0.5) for exo_pair; got {label_smoothing}")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    z = beta * (h_w - h_l)
    log_q_w, log_q_l = F.logsigmoid(z), F.logsigmoid(-z)
    log_eps = torch.log(torch.tensor([1.0 - label_smoothing, label_smoothing], dtype=z.dtype, device=z.device))
    return log_q_w.exp() * (log_q_w - log_eps[0]) + log_q_l.exp() * (log_q_l - log_eps[1])


_AOT = "Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, arXiv:2406.05882"


@register("preference", "aot", paper=_AOT, tag="checked: TRL", facts={"couples_batch"})
def aot(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Alignment via Optimal Transport, paired (Melnyk et al. 2024, arXiv:2406.05882; TRL ``aot``).

    L_k = −(1−ε)·log σ(β·d_k) − ε·log σ(−β·d_k), d = sort_B(logp_w − logp_l) − sort_B(ref_logp_w − ref_logp_l):
    first-order stochastic dominance of the policy's log-ratio quantiles over the reference's. Batch size 1 = DPO.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        label_smoothing: ε ∈ [0, ½].

    Returns:
        [B] loss per sorted quantile k (not per original pair; the sort couples the batch, so use large batches: the
        trainer computes it on the whole step in one pass, whatever `train.micro_batch_size`).
    """
    if chosen_logp.dim() != 1:
        raise ValueError(f"aot sorts over the batch and needs [B] log-probs; got {tuple(chosen_logp.shape)}")
    log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)  # shape check
    policy = torch.sort(chosen_logp - rejected_logp).values
    ref = torch.sort((ref_chosen_logp - ref_rejected_logp).detach()).values
    return smoothed_logistic(beta * (policy - ref), label_smoothing)


@register("preference", "aot_unpaired", paper=_AOT, tag="checked: TRL", facts={"couples_batch"})
def aot_unpaired(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Alignment via Optimal Transport, unpaired (Melnyk et al. 2024, arXiv:2406.05882; TRL ``aot_unpair``).

    L_k = −(1−ε)·log σ(β·d_k) − ε·log σ(−β·d_k), d = sort_B(h_w) − sort_B(h_l): the chosen log-ratio distribution
    dominates the rejected one.

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        beta: β.
        label_smoothing: ε ∈ [0, ½].

    Returns:
        [B] loss per sorted quantile k.
    """
    if chosen_logp.dim() != 1:
        raise ValueError(f"aot_unpaired sorts over the batch and needs [B] log-probs; got {tuple(chosen_logp.shape)}")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return smoothed_logistic(beta * (torch.sort(h_w).values - torch.sort(h_l).values), label_smoothing)
