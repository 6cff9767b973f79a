"""Policy surrogate losses (ALGORITHMS.md §2.1).

Signature of the family: ``fn(logp, old_logp, advantages, mask, **hparams) -> (per_token_loss [N, T], metrics)``.

Conventions shared by every loss here:

- ρ = exp(clamp(logp − old_logp, −20, 20)) (verl's guard). ``old_logp`` and ``advantages`` are constants
  (detached inside), so passing ``old_logp = logp`` gives the on-policy gradient.
- The log-ratio (and, where the loss uses it directly, ``logp``) is replaced by 0 on masked tokens, so padding
  with any value (even −inf) cannot leak NaN into the loss or its gradient. The per-token loss on masked
  tokens is a harmless finite value; the aggregation (§3) drops it.
- ``advantages`` is [N] (broadcast to every token) or [N, T].
- Metrics are detached per-token float tensors [N, T]; the trainer masks and averages them once, so no loss calls
  ``.item()``. Keys: ``clip/frac`` (the token's gradient is cut or capped), ``clip/frac_low``, ``clip/frac_high``,
  ``ratio/mean`` (the ratio the surrogate uses: token ρ, or the sequence ratio s_i for GSPO); ``dual_clip`` adds
  ``clip/frac_dual``.
- Each docstring states the effective weight W with ∇ℓ = −W·A·∇logp (ALGORITHMS.md §0.4).
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register
from unipo.ops import masked_sum

Metrics = dict[str, torch.Tensor]

_LOG_RATIO_BOUND = 20.0
_GSPO_LOG_RATIO_MAX = 10.0
_CAP_MODES = ("absolute", "relative")


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where (not x * mask) so that a NaN/inf at a padded position gives value 0 and gradient exactly 0.
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def _log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, old_logp and mask must all be [N, T]; got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    return torch.clamp(_zero_masked(logp - old_logp.detach(), mask), -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)


def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    advantages = advantages.detach().to(like.dtype)
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages[:, None].expand_as(like)  # (N,) -> (N, T)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(f"advantages must be [N] or [N, T] = {tuple(like.shape)}; got {tuple(advantages.shape)}")


def _check_clip(clip_low: float, clip_high: float) -> None:
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0; got clip_low={clip_low}, clip_high={clip_high}")


def _clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, Metrics]:
    """−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) and its clip indicators, for a token or sequence ratio."""
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    r = ratio.detach()
    # These are exactly the tokens whose gradient the clip removes (ALGORITHMS.md §13 U2).
    low = (adv < 0) & (r < 1.0 - clip_low)
    high = (adv > 0) & (r > 1.0 + clip_high)
    metrics = {
        "clip/frac": (low | high).to(loss.dtype),
        "clip/frac_low": low.to(loss.dtype),
        "clip/frac_high": high.to(loss.dtype),
        "ratio/mean": r,
    }
    return loss, metrics


@register("policy_loss", "ppo_clip", paper="Schulman et al. 2017, PPO, arXiv:1707.06347", tag="checked: TRL, verl")
def ppo_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate, per token (Schulman et al. 2017, arXiv:1707.06347, eq. 7).

    ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A). W = ρ·1[not clipped], where clipped means
    (A > 0 ∧ ρ > 1+ε_high) or (A < 0 ∧ ρ < 1−ε_low).

    Args:
        logp: [N, T] log π_θ of the sampled tokens.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask (1 = token counts).
        clip_low: ε_low.
        clip_high: ε_high. clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476; 0.28).

    Returns:
        (per-token loss [N, T], metrics {"clip/frac", "clip/frac_low", "clip/frac_high", "ratio/mean"}).
    """
    _check_clip(clip_low, clip_high)
    ratio = torch.exp(_log_ratio(logp, old_logp, mask))
    return _clipped_surrogate(ratio, _token_advantages(advantages, logp), clip_low, clip_high)


@register(
    "policy_loss",
    "dual_clip",
    paper="Ye et al. 2020, Mastering Complex Control in MOBA Games with Deep RL (dual-clip PPO), arXiv:1912.09729",
    tag="checked: verl",
)
def dual_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 3.0,
) -> tuple[torch.Tensor, Metrics]:
    """Dual-clip PPO (Ye et al. 2020, arXiv:1912.09729).

    ℓ = min(ℓ_ppo, −c·A) if A < 0, else ℓ_ppo. W = ρ·1[not clipped]·1[not (A < 0 ∧ ρ > c)]: for A < 0 and ρ > c
    the loss is the constant −c·A, which bounds the step on a very off-policy negative token.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        clip_low: ε_low.
        clip_high: ε_high.
        dual_clip: c, the lower bound on the ratio's effect for negative advantages (verl clip_ratio_c); must be > 1.

    Returns:
        (per-token loss [N, T], metrics as ``ppo_clip`` plus "clip/frac_dual").
    """
    if dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1; got {dual_clip}")
    loss_ppo, metrics = ppo_clip(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    adv = _token_advantages(advantages, logp)
    bound = -dual_clip * adv
    negative = adv < 0
    loss = torch.where(negative, torch.minimum(loss_ppo, bound), loss_ppo)
    dual = negative & (loss_ppo.detach() > bound)
    metrics["clip/frac_dual"] = dual.to(loss.dtype)
    metrics["clip/frac"] = torch.maximum(metrics["clip/frac"], metrics["clip/frac_dual"])
    return loss, metrics


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
    _check_clip(clip_low, clip_high)
    log_ratio = _log_ratio(logp, old_logp, mask)
    lengths = mask.to(logp.dtype).sum(-1).clamp(min=1)
    log_seq_ratio = masked_sum(log_ratio, mask, dim=-1) / lengths  # (N, T) -> (N,)
    logp_m = _zero_masked(logp, mask)
    log_s = logp_m - logp_m.detach() + log_seq_ratio.detach()[:, None]  # value log s_i, gradient ∇logp_{i,t}
    seq_ratio = torch.exp(torch.clamp(log_s, max=_GSPO_LOG_RATIO_MAX))
    return _clipped_surrogate(seq_ratio, _token_advantages(advantages, logp), clip_low, clip_high)


@register(
    "policy_loss",
    "cispo",
    paper="MiniMax 2025, MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention (CISPO), "
    "arXiv:2506.13585",
    tag="checked: TRL, verl",
)
def cispo(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cap: float = 5.0,
    cap_mode: str = "absolute",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped IS-weight policy optimisation (MiniMax 2025, MiniMax-M1, arXiv:2506.13585).

    ℓ = −sg(ŵ)·A·logp with ŵ = min(ρ, cap) (cap_mode="absolute", TRL) or clip(ρ, 1−ε_low, 1+ε_high)
    (cap_mode="relative", verl). W = sg(ŵ): a clipped token keeps a capped gradient instead of none.

    Args:
        logp: [N, T] log π_θ.
        old_logp: [N, T] log π_old (constant).
        advantages: [N] or [N, T].
        mask: [N, T] loss mask.
        cap: upper bound on ŵ in "absolute" mode (TRL epsilon_high ≈ 5).
        cap_mode: "absolute" or "relative".
        clip_low: ε_low, used in "relative" mode.
        clip_high: ε_high, used in "relative" mode.

    Returns:
        (per-token loss [N, T], metrics {"clip/frac", "clip/frac_low", "clip/frac_high", "ratio/mean"}; here
        "clipped" means ŵ ≠ ρ; "clip/frac_low" is 0 in "absolute" mode).

    Note:
        The value is −ŵ·A·logp, not the PPO value form; only its gradient is comparable. The paper aggregates
        with ``token_mean``.
    """
    if cap_mode not in _CAP_MODES:
        raise ValueError(f"cap_mode={cap_mode!r} is not allowed; choose one of {', '.join(map(repr, _CAP_MODES))}")
    if cap <= 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    _check_clip(clip_low, clip_high)
    ratio = torch.exp(_log_ratio(logp, old_logp, mask)).detach()
    if cap_mode == "absolute":
        weight = torch.clamp(ratio, max=cap)
        low = torch.zeros_like(ratio, dtype=torch.bool)
        high = ratio > cap
    else:
        weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
        low = ratio < 1.0 - clip_low
        high = ratio > 1.0 + clip_high
    loss = -weight * _token_advantages(advantages, logp) * _zero_masked(logp, mask)
    metrics = {
        "clip/frac": (low | high).to(loss.dtype),
        "clip/frac_low": low.to(loss.dtype),
        "clip/frac_high": high.to(loss.dtype),
        "ratio/mean": ratio,
    }
    return loss, metrics
