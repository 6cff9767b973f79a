"""Listwise, reward-aware and auxiliary preference losses (ALGORITHMS.md §7.3).

``lipo_lambda`` is listwise: ``(logp, ref_logp, *, scores)`` with [B, L] lists of L responses per prompt.
``copg`` regresses on scalar rewards; ``hypo`` adds a KL term on fresh samples; ``tgdpo`` weights tokens by a
frozen DPO model's token rewards and takes per-token [B, T] log-probs. ALGORITHMS.md §7.3 marks TGDPO's weighting
unknown; it is read here from the official code (dvlab-research/TGDPO), so the plain id is registered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.algos.preference._common import check_positive, log_ratios
from unipo.algos.registry import register, warn_reconstruction

_TGDPO = "TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct Preference Optimization (Zhu et al. 2025)"


@register(
    "preference",
    "lipo_lambda",
    paper="Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank, arXiv:2402.01878",
    tag="memory",
)
def lipo_lambda(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    scores: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """LiPO-λ listwise loss with LambdaLoss weights (Liu et al. 2024, arXiv:2402.01878, eq. 9–10).

    L = −Σ_{ψ_i > ψ_j} Δ_ij·log σ(s_i − s_j), s = β·h, Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|, G = 2^ψ − 1,
    D(τ) = log₂(1 + τ), τ_i = rank of y_i under sg(s) (1 = best; ties broken by list position). K = 2 reduces to
    DPO × |G₁ − G₂|·(1 − 1/log₂3).

    Args:
        logp: [B, L] summed log π_θ of each of the L listed responses.
        ref_logp: [B, L] summed log π_ref of the same responses.
        scores: [B, L] labels ψ (e.g. reward scores or graded preferences); larger is better.
        beta: β.

    Returns:
        [B] per-list loss (summed over ordered pairs, not averaged).
    """
    if not (logp.dim() == 2 and logp.shape == ref_logp.shape == scores.shape):
        raise ValueError(
            "lipo_lambda needs [B, L] logp, ref_logp and scores; got "
            f"{[tuple(t.shape) for t in (logp, ref_logp, scores)]}"
        )
    s = beta * (logp - ref_logp.detach())  # [B, L]
    with torch.no_grad():
        # Rank 1 = highest s; the LambdaLoss weights are constants of the step.
        order = torch.argsort(s, dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order)
        positions = torch.arange(1, s.shape[-1] + 1, device=s.device).expand_as(order)
        rank.scatter_(-1, order, positions)
        inv_discount = 1.0 / torch.log2(1.0 + rank.to(s.dtype))  # [B, L]
        gain = torch.pow(2.0, scores.to(s.dtype)) - 1.0
        weight = (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_discount[:, :, None] - inv_discount[:, None, :]
        ).abs()
        better = scores[:, :, None] > scores[:, None, :]  # [B, L, L]: pair (i, j) with ψ_i > ψ_j
        weight = torch.where(better, weight, torch.zeros_like(weight))
    pair_loss = -F.logsigmoid(s[:, :, None] - s[:, None, :])  # [B, L, L]
    return (weight * pair_loss).sum(dim=(-2, -1))


@register(
    "preference",
    "copg",
    paper="Flet-Berliac et al. 2024, Contrastive Policy Gradient: Aligning LLMs on Sequence-Level Scores in a "
    "Supervised-Friendly Fashion, arXiv:2406.19185",
    tag="memory",
)
def copg(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Contrastive Policy Gradient as a loss (Flet-Berliac et al. 2024, arXiv:2406.19185; gradient of eq. 9).

    L = (R(y) − R(y′) − β·(h(y) − h(y′)))² / (2β); ∇L = −(R^β(y) − R^β(y′))·∇(log π(y) − log π(y′)), R^β = R − β·h.
    Any full-support pair distribution gives the minimiser π ∝ π_ref·exp(R/β), without importance sampling.

    Args:
        chosen_logp: [B] summed log π_θ(y∣x) of the first response (need not be preferred).
        rejected_logp: [B] summed log π_θ(y′∣x) of the second response.
        ref_chosen_logp: [B] summed log π_ref(y∣x).
        ref_rejected_logp: [B] summed log π_ref(y′∣x).
        chosen_rewards: [B] scalar reward R(y).
        rejected_rewards: [B] scalar reward R(y′).
        beta: β > 0, KL coefficient.

    Returns:
        [B] per-pair loss.
    """
    check_positive(beta, "beta")
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    residual = (chosen_rewards - rejected_rewards).to(h_w.dtype) - beta * (h_w - h_l)
    return residual**2 / (2.0 * beta)


@register(
    "preference",
    "hypo",
    paper="Song et al. 2024, The Importance of Online Data: Understanding Preference Fine-tuning via Coverage, "
    "arXiv:2406.01462",
    tag="memory (structure); KL estimator checked: secondary (NeurIPS'24 poster summary)",
)
def hypo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    sample_logp: torch.Tensor,
    ref_sample_logp: torch.Tensor,
    beta: float = 0.1,
    kl_coef: float = 0.1,
) -> torch.Tensor:
    """Hybrid Preference Optimisation, HyPO (Song et al. 2024, arXiv:2406.01462, Algorithm 1).

    L = −log σ(βΔ) + λ·KL̂ on offline DPO pairs plus k fresh samples y_1..y_k ∼ π_θ(·∣x) per prompt (no reward
    model). KL̂ estimates the sequence reverse KL(π_θ‖π_ref) with k-sample RLOO (the paper's hyperparameter table
    lists "k for RLOO"): its value is mean_j h(y_j), h = log π_θ − log π_ref, and its gradient
    (1/k)·Σ_j sg(h(y_j) − (1/(k−1))·Σ_{l≠j} h(y_l))·∇log π_θ(y_j). With k = 1 there is no baseline:
    sg(h(y))·∇log π_θ(y), the same expectation with more variance (not the paper's estimator).

    Args:
        chosen_logp: [B] summed log π_θ(y_w∣x).
        rejected_logp: [B] summed log π_θ(y_l∣x).
        ref_chosen_logp: [B] summed log π_ref(y_w∣x).
        ref_rejected_logp: [B] summed log π_ref(y_l∣x).
        sample_logp: [B, k] (or [B] for k = 1) summed log π_θ(y_j∣x) of the fresh samples (with gradient); the
            trainer draws k = ``rollout.group_size``.
        ref_sample_logp: [B, k] (or [B]) summed log π_ref(y_j∣x) of the same samples.
        beta: β.
        kl_coef: λ ≥ 0, weight of the KL term (the paper's value is not recorded here; 0.1 is unipo's default).

    Returns:
        [B] per-pair loss.
    """
    h_w, h_l = log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    logp = sample_logp if sample_logp.dim() == 2 else sample_logp[:, None]
    h = (logp - (ref_sample_logp if ref_sample_logp.dim() == 2 else ref_sample_logp[:, None])).detach()
    k = h.shape[-1]
    coef = h - (h.sum(-1, keepdim=True) - h) / (k - 1) if k > 1 else h  # h minus the leave-one-out mean
    # value mean_j h_j; gradient (1/k)·Σ_j coef_j·∇logp_j (the second term is 0 in value)
    kl = h.mean(-1) + (coef * (logp - logp.detach())).mean(-1)
    return -F.logsigmoid(beta * (h_w - h_l)) + kl_coef * kl


@register(
    "preference",
    "tgdpo",
    paper=_TGDPO + ", arXiv:2506.14574",
    tag="checked: official code dvlab-research/TGDPO src/llamafactory/train/tgdpo/trainer.py (sigmoid loss)",
)
def tgdpo(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    guide_chosen_logp: torch.Tensor,
    guide_rejected_logp: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
) -> torch.Tensor:
    """TGDPO, token-level reward guidance (Zhu et al. 2025, arXiv:2506.14574; weighting as in the official code).

    L = −log σ(Σ_t β·(1 + α·r̂^w_t)·h(y^w_t) − Σ_t β·(1 − α·r̂^l_t)·h(y^l_t)), h(y_t) = log π_θ(y_t) − log π_ref(y_t),
    r̂_t = β·(log π_dpo(y_t) − log π_ref(y_t)): token rewards of a frozen, separately trained DPO model π_dpo (the
    guide). The sign flips on the rejected response: a token the guide rewards counts more in a chosen response and
    less in a rejected one. α = 0 is DPO. Defaults β = 0.1, α = 0.5: the official example config.

    Args:
        chosen_logp: [B, T] per-token log π_θ of y_w.
        rejected_logp: [B, T'] per-token log π_θ of y_l.
        ref_chosen_logp: [B, T] per-token log π_ref of y_w.
        ref_rejected_logp: [B, T'] per-token log π_ref of y_l.
        chosen_mask: [B, T] 1 for completion tokens of y_w.
        rejected_mask: [B, T'] 1 for completion tokens of y_l.
        guide_chosen_logp: [B, T] per-token log π_dpo of y_w (constants).
        guide_rejected_logp: [B, T'] per-token log π_dpo of y_l (constants).
        beta: β, the DPO coefficient (also scales the guide's token rewards).
        alpha: α, the strength of the token guidance.

    Returns:
        [B] per-pair loss.
    """

    def weighted_sum(logp, ref, mask, guide, sign: float) -> torch.Tensor:
        if not logp.shape == ref.shape == mask.shape == guide.shape:
            raise ValueError("tgdpo: token log-probs, reference, mask and guide log-probs must share one shape")
        reward = beta * (guide.detach() - ref.detach()).to(logp.dtype)
        weight = beta * (1.0 + sign * alpha * reward)
        return (weight * (logp - ref.detach()) * mask.to(logp.dtype)).sum(-1)  # [B, T] -> [B]

    margin = weighted_sum(chosen_logp, ref_chosen_logp, chosen_mask, guide_chosen_logp, 1.0) - weighted_sum(
        rejected_logp, ref_rejected_logp, rejected_mask, guide_rejected_logp, -1.0
    )
    return -F.logsigmoid(margin)


_BRAIN = "Pandey et al. 2024, BRAIn: Bayesian Reward-conditioned Amortized Inference, arXiv:2402.02479"


@register("preference", "brain_recon", paper=f"{_BRAIN} (seeds_000_001.md 001-36)", tag="reconstructed")
def brain_recon(logp: torch.Tensor, ref_logp: torch.Tensor, *, scores: torch.Tensor) -> torch.Tensor:
    """Reconstruction of BRAIn (Pandey et al. 2024, arXiv:2402.02479): its gradient estimator with the self-normalised
    baseline as the first author's code writes it (`gradient_estimators.py` of gauravpandeyamu/BRAIn_experiments);
    the reward's form σ(r − r̄) with r̄ the list's mean is from a triage note, not checked against the paper.

    The posterior p(y∣x, good) ∝ π_ref(y∣x)·σ(r(x, y) − r̄) is distilled into π_θ by self-normalised importance
    sampling over the L listed responses, which are taken as samples of π_ref (the proposal q = π_ref, as for lists
    generated by the initial model):

    - target weights α̂ = softmax_i(log σ(r_i − r̄) + log π_ref(y_i) − log q(y_i)) = softmax_i log σ(r_i − r̄);
    - the self-normalised baseline β̂ = softmax_i(log π_θ(y_i) − log q(y_i)) = softmax_i(log π_θ − log π_ref)(y_i);
    - L = −Σ_i sg(α̂_i − β̂_i)·log π_θ(y_i∣x), whose gradient is the estimator −Σ_i (α̂_i − β̂_i)·∇log π_θ(y_i).

    Both weight vectors sum to 1, so the gradient vanishes exactly when π_θ ∝ π_ref·σ(r − r̄) on the list: the
    posterior is the fixed point.

    Args:
        logp: [B, L] summed log π_θ of each listed response.
        ref_logp: [B, L] summed log π_ref of the same responses (the proposal's).
        scores: [B, L] rewards r of the responses.

    Returns:
        [B] per-list loss.
    """
    warn_reconstruction("brain_recon", _BRAIN)
    if not (logp.dim() == 2 and logp.shape == ref_logp.shape == scores.shape):
        shapes = [tuple(t.shape) for t in (logp, ref_logp, scores)]
        raise ValueError(f"brain_recon needs [B, L] logp, ref_logp and scores; got {shapes}")
    r = scores.to(logp.dtype)
    alpha = torch.softmax(F.logsigmoid(r - r.mean(-1, keepdim=True)), -1)
    baseline = torch.softmax(logp.detach() - ref_logp.detach(), -1)
    return -((alpha - baseline) * logp).sum(-1)


@register(
    "preference",
    "dro_offline",
    paper="Richemond et al. 2024, Offline Regularised Reinforcement Learning for Large Language Models Alignment "
    "(DRO), arXiv:2405.19107",
    tag="memory",
    facts={"single_trajectory"},
)
def dro_offline(
    logp: torch.Tensor, ref_logp: torch.Tensor, *, scores: torch.Tensor, value: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """arXiv:2405.19107 (DRO, Direct Reward Optimisation): single-trajectory data (x, y, r), no pairs. The policy and a
    learned value V_φ(x) jointly minimise

        L(θ, φ) = ½·E[(r(x, y) − V_φ(x) − β·log(π_θ(y∣x)/π_ref(y∣x)))²],

    whose minimiser is the KL-regularised optimum π* ∝ π_ref·exp(r/β) with V = β·log Z(x) (the soft value). Its θ
    gradient is −β·E[(r − V − β·h)·∇log π_θ] (h the log-ratio): a policy gradient with baseline V plus a pull towards
    π_ref. The trainer learns V_φ with a value model (a copy of the policy's backbone and a scalar head at zero,
    `critic.*`, as the paper's DRO-V) on the same loss. Each listed response is one trajectory with its reward; the
    list only groups trajectories of the same prompt, and the paper's rows `{prompt, completion, score}` train as lists
    of one (fact `single_trajectory`).

    Args:
        logp: [B, L] summed log π_θ of each response.
        ref_logp: [B, L] summed log π_ref of the same responses.
        scores: [B, L] rewards r.
        value: [B] V_φ(x) of each prompt (with gradient into the value model).
        beta: β, the KL regularisation (> 0; 0.1 is ours).

    Returns:
        [B] per-prompt loss: the mean over its responses of ½(r − V − β·h)².
    """
    check_positive(beta, "dro_offline: beta")
    if not (logp.dim() == 2 and logp.shape == ref_logp.shape == scores.shape and value.shape == logp.shape[:1]):
        shapes = [tuple(t.shape) for t in (logp, ref_logp, scores, value)]
        raise ValueError(f"dro_offline needs [B, L] logp, ref_logp and scores and [B] value; got {shapes}")
    residual = scores.to(logp.dtype) - value.to(logp.dtype)[:, None] - beta * (logp - ref_logp.detach())
    return 0.5 * residual.pow(2).mean(-1)
