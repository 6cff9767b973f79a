"""Sequence-ratio surrogates: gspo, gspo_token, luspo, gmpo, vespo (ALGORITHMS.md §2.1), and REFUEL's pair
regression of sequence log-ratios (§9).

Each returns the per-token form whose stated aggregation equals the sequence objective (value and gradient).
"""

from __future__ import annotations

import torch

from unipo.algos.ops import masked_sum
from unipo.algos.policy_losses._common import (
    LOG_EPS,
    LOG_RATIO_BOUND,
    Metrics,
    check_clip,
    check_positive,
    clip_metrics,
    clipped_surrogate,
    const_log_ratio,
    log_ratio,
    no_clip_metrics,
    require,
    seq_mean,
    sequence_token_form,
    token_advantages,
    zero_masked,
)
from unipo.algos.registry import register


@register(
    "policy_loss",
    "gspo",
    paper="Zheng et al. 2025, Group Sequence Policy Optimization, arXiv:2507.18071",
    tag="checked: TRL, verl",
)
def gspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, Metrics]:
    """Group Sequence Policy Optimization, per-token form (Zheng et al. 2025, arXiv:2507.18071).

    s_i = exp((1/|y_i|)·Σ_t m·log ρ_{i,t}); log s_{i,t} = logp − sg(logp) + sg(log s_i), clamped ≤ 10 (verl);
    ℓ_{i,t} = −min(s_{i,t}·A, clip(s_{i,t}, 1−ε_low, 1+ε_high)·A). Every token's value is ℓ_i, so
    ``seq_mean_token_mean`` of ℓ is the GSPO objective (1/N)·Σ_i ℓ_i, with the same gradient.
    W = s_i·1[s_i not clipped] per token; under ``seq_mean_token_mean`` each token also gets 1/|y_i|.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] sequence advantages, or [N, T] (GSPO-token, verl's form).
        mask: [N, T] loss mask; the sequence mean runs over it.
        clip_low: ε_low (paper 3e-4).
        clip_high: ε_high (paper 4e-4).

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip``, computed on s_i; "ratio/mean" is s_i on every token).

    Note:
        Aggregate with ``seq_mean_token_mean``: TRL rejects sequence-level ratios with token-normalised
        aggregations (dr_grpo, dapo, cispo).
    """
    check_clip(clip_low, clip_high)
    log_seq_ratio = seq_mean(log_ratio(logp, old_logp, mask), mask)  # (N, T) -> (N,)
    seq_ratio = sequence_token_form(logp, log_seq_ratio, mask)
    return clipped_surrogate(seq_ratio, token_advantages(advantages, logp), 1.0 - clip_low, 1.0 + clip_high)


@register(
    "policy_loss",
    "gspo_token",
    paper="Zheng et al. 2025, Group Sequence Policy Optimization (GSPO-token), arXiv:2507.18071; verl gspo",
    tag="checked: verl",
)
def gspo_token(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO-token (Zheng et al. 2025, arXiv:2507.18071, §4.3; verl's ``gspo`` loss), for token-level advantages.

    log s_{i,t} = log π_θ(y_{i,t}) − sg(log π_θ(y_{i,t})) + sg(log s_i), clamped ≤ 10; ℓ_{i,t} = −min(s_{i,t}·A_{i,t},
    clip(s_{i,t}, 1−ε_low, 1+ε_high)·A_{i,t}). s_{i,t} has the value s_i (one clip decision per sequence) and the
    gradient s_i·∇log π_θ(y_{i,t}), so each token carries its own advantage (a critic's, a segment's); with one
    advantage per sequence it is GSPO exactly, which is how ``gspo`` is computed here.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N, T] token advantages ([N] broadcast: GSPO).
        mask: [N, T] loss mask.
        clip_low: ε_low (paper 3e-4).
        clip_high: ε_high (paper 4e-4).

    Returns:
        (per-token loss [N, T], metrics as ``gspo``). Aggregate with ``seq_mean_token_mean`` (the paper's).
    """
    return gspo(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)


@register(
    "policy_loss",
    "luspo",
    paper="TRL loss_type='luspo'; Liu et al. 2026, Length-Unbiased Sequence Policy Optimization, arXiv:2602.05261",
    tag="checked: TRL; the source paper: unknown",
)
def luspo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 2e-3,
    clip_high: float = 2.5e-3,
) -> tuple[torch.Tensor, Metrics]:
    """TRL luspo: GSPO scaled by sequence length (Liu et al. 2026, arXiv:2602.05261; implemented as TRL's form).

    L = mean_i(|y_i|·ℓ_i) with ℓ_i the GSPO sequence surrogate. The per-token form is ``gspo``'s (each token carries
    ℓ_i, with gradient s_i·∇logp_t), so **aggregate with** ``seq_mean_token_sum``: (1/N)·Σ_i Σ_t m·ℓ_i =
    mean_i(|y_i|·ℓ_i), value and gradient. W = s_i·1[s_i not clipped] per token, with no 1/|y_i|.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        clip_low: ε_low; the paper's 2e-3 (§5.1, as quoted in TRL's paper index), not GSPO's 3e-4.
        clip_high: ε_high; the paper's 2.5e-3 (GSPO: 4e-4).

    Returns:
        (per-token loss [N, T], metrics as ``gspo``).

    Note:
        log s_i is clamped ≤ 10 as in ``gspo`` (verl); TRL's luspo applies no clamp. The two differ only when
        s_i > e¹⁰, far outside the clip range, where the clipped branch carries no gradient either way.
    """
    return gspo(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)


@register(
    "policy_loss",
    "gmpo",
    paper="Zhao et al. 2025, Geometric-Mean Policy Optimization, arXiv:2507.20673",
    tag="checked: TRL, verl",
)
def gmpo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
) -> tuple[torch.Tensor, Metrics]:
    """Geometric-Mean Policy Optimization, per-token form (Zhao et al. 2025, arXiv:2507.20673; TRL gmpo, verl geo_mean).

    l̃_t = sgn(A)·min(sgn(A)·log ρ_t, sgn(A)·clip(log ρ_t, −ε_low, ε_high)); s̃_i = exp(mean_t m·l̃_t);
    ℓ_i = −A_i·s̃_i. Per token: value ℓ_i, gradient −A_i·s̃_i·∂l̃_t·∇logp_t, so ``seq_mean_token_mean`` gives
    mean_i ℓ_i and its gradient. W = s̃_i·1[token not clipped] per token (1/|y_i| from the aggregation).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N], or [N, T] (each token clips with its own sign; A_i is the masked token mean, as verl).
        mask: [N, T] loss mask.
        clip_low: ε_low in log space (ratio ≥ e^{−0.4}, the paper's recommendation quoted by TRL).
        clip_high: ε_high in log space.

    Returns:
        (per-token loss [N, T], metrics: token clip fractions (log ρ outside the sign's side of the range) and
        "ratio/mean" = s̃_i).
    """
    check_clip(clip_low, clip_high)
    lr = log_ratio(logp, old_logp, mask)
    adv = token_advantages(advantages, logp)
    sign = torch.sign(adv)
    clipped_lr = zero_masked(sign * torch.minimum(sign * lr, sign * torch.clamp(lr, -clip_low, clip_high)), mask)
    log_seq = seq_mean(clipped_lr, mask)  # (N, T) -> (N,)
    seq_adv = seq_mean(adv, mask)  # (N, T) -> (N,)
    # value s̃_i on each token, gradient s̃_i·∂l̃_t (the same construction as gspo's per-token form)
    s_tok = torch.exp(clipped_lr - clipped_lr.detach() + log_seq.detach()[:, None])
    loss = -seq_adv[:, None] * s_tok
    lr_d = lr.detach()
    metrics = clip_metrics((adv < 0) & (lr_d < -clip_low), (adv > 0) & (lr_d > clip_high), s_tok.detach(), loss)
    return loss, metrics


def _vespo_log_weight(
    lr: torch.Tensor, old_logp: torch.Tensor, rollout_logp: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    """log w_i = clamp(Σ_t m·log ρ_t [+ Σ_t m·log ρ^roll_t], log 1e-8, 20), detached: (N,)."""
    seq_log = masked_sum(lr.detach(), mask, dim=-1)  # (N, T) -> (N,)
    if rollout_logp is not None:
        require(rollout_logp, "rollout_logp", tuple(lr.shape), "the engine-mismatch ratio π_old/π_roll")
        log_roll = torch.clamp(const_log_ratio(old_logp, rollout_logp, mask), LOG_EPS, LOG_RATIO_BOUND)
        seq_log = seq_log + masked_sum(log_roll, mask, dim=-1)
    return torch.clamp(seq_log, LOG_EPS, LOG_RATIO_BOUND)


@register(
    "policy_loss",
    "vespo",
    paper="TRL loss_type='vespo'; Shen et al. 2026, VESPO: Variational Sequence-Level Soft Policy Optimization, "
    "arXiv:2602.10693",
    tag="checked: TRL; the source paper: unknown",
)
def vespo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollout_logp: torch.Tensor | None = None,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> tuple[torch.Tensor, Metrics]:
    """VESPO gamma-kernel sequence weighting, as TRL implements it (Shen et al. 2026, arXiv:2602.10693).

    log w_i = clamp(Σ_t m·log ρ_t [+ Σ_t m·log ρ^roll_t], log 1e-8, 20); φ_i = exp(λ + k·log w_i − λ·w_i) (detached,
    φ(1) = 1); ℓ_{i,t} = −φ_i·A·log π_θ(y_t), aggregated with ``token_mean``. W = φ_i, with (k, λ) from the sign of A.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T] ((k, λ) is chosen per token from A ≥ 0 / A < 0).
        mask: [N, T] loss mask.
        rollout_logp: optional [N, T] log π_roll of the sampling engine; its mismatch ratio ρ^roll = π_old/π_roll is
            folded into w (TRL's vllm correction; do not also wrap this loss in ``rollout_is``).
        k_pos: k for A ≥ 0 (TRL vespo_k_pos).
        lambda_pos: λ for A ≥ 0; must be > 0.
        k_neg: k for A < 0.
        lambda_neg: λ for A < 0; must be > 0.

    Returns:
        (per-token loss [N, T], metrics: clip fractions 0, "ratio/mean" = w_i, "vespo/phi" = φ_i).

    Note:
        The value is −φ·A·logp, not the PPO value form; only its gradient is comparable.
    """
    check_positive(lambda_pos=lambda_pos, lambda_neg=lambda_neg)
    lr = log_ratio(logp, old_logp, mask)
    log_w = _vespo_log_weight(lr, old_logp, rollout_logp, mask)[:, None]  # (N,) -> (N, 1)
    adv = token_advantages(advantages, logp)
    nonneg = adv >= 0
    k = torch.where(nonneg, torch.full_like(adv, k_pos), torch.full_like(adv, k_neg))
    lam = torch.where(nonneg, torch.full_like(adv, lambda_pos), torch.full_like(adv, lambda_neg))
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    loss = -phi * adv * zero_masked(logp, mask)
    metrics = no_clip_metrics(torch.exp(log_w), loss)
    metrics["vespo/phi"] = phi.detach()
    return loss, metrics


@register(
    "policy_loss",
    "refuel",
    paper="Gao et al. 2024, Regressing the Relative Future: Efficient Policy Optimization for Multi-turn RLHF "
    "(REFUEL), arXiv:2410.04612",
    tag="checked: official code refuel.py (ALGORITHMS.md §9)",
    facts={"pairs"},
)
def refuel(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    rewards: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    eta: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """REFUEL: regress two branches' relative log-ratio onto their relative future (Gao et al. 2024, arXiv:2410.04612).

    For the two branches y, y′ of a roll-in (sampled from π_t at the same turn h and finished with π_t, returns R,
    R′): ℓ = ((log(π_θ/π_t)(y_h) − log(π_θ/π_t)(y′_h)) − η·(R − R′))², the log-ratios summed over the masked tokens
    (the branch turn's: rollout/multiturn.py `branch`). It is REBEL's regression (`online` `rebel`) on
    turn-level pairs. Every token of both branches carries its pair's ℓ, so `seq_mean_token_mean` gives the mean
    over pairs (value and gradient).

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_t (the policy that sampled the branches; constant).
        advantages: unused (REFUEL regresses on the returns themselves); accepted for the family signature.
        mask: [N, T] loss mask (the branch turn's tokens).
        rewards: [N] the branches' returns R; required.
        group_ids: [N] the roll-in each branch belongs to; each must hold exactly two branches.
        eta: η > 0, the regression's scale of the return difference (official default 1).

    Returns:
        (per-token loss [N, T], metrics: "refuel/sign_agree" = sign(log-ratio difference)·sign(R − R′): +1 where
        they agree, −1 where they disagree, 0 where either is 0 (every pair on the first, on-policy pass);
        "ratio/mean" = the sequence ratio π_θ/π_t of the branch turn; the clip fractions are 0).
    """
    n = logp.shape[0]
    rewards = require(rewards, "rewards", (n,), "REFUEL regresses on the return difference")
    group_ids = require(group_ids, "group_ids", (n,), "the two branches of a roll-in form a pair")
    check_positive(eta=eta)
    same = (group_ids[:, None] == group_ids[None, :]).to(logp.dtype)
    if not bool((same.sum(-1) == 2).all()):
        raise ValueError("refuel needs exactly two branches per roll-in (rollout.group_size=2)")
    s = masked_sum(log_ratio(logp, old_logp, mask), mask, dim=-1)  # [N] log(π_θ/π_t) of the branch turn
    r = rewards.to(logp.dtype)
    diff, dr = 2 * s - same @ s, 2 * r - same @ r  # branch minus its partner (each group holds two)
    loss = (diff - eta * dr) ** 2
    metrics = no_clip_metrics(torch.exp(s.detach().clamp(max=LOG_RATIO_BOUND))[:, None].expand_as(logp), logp)
    metrics["refuel/sign_agree"] = (torch.sign(diff.detach()) * torch.sign(dr))[:, None].expand_as(logp)
    return zero_masked(loss[:, None].expand_as(logp), mask), metrics
