"""Critic-based advantage estimation (ALGORITHMS.md §10): GAE over a learned value function, and the value loss.

Signature of a critic estimator: `fn(rewards [N], values [N, T+1], mask [N, T], **inputs, **params) ->
CriticTargets(advantages [N, T], returns [N, T], value_mask [N, T])`. `values[:, t]` is V(s_t), the value of the state
before completion token t, so `values[:, L]` is the state after a row's last token (L = its length): a trainer gets
all T + 1 from one forward over prompt + completion. The outcome reward r_i sits on the last valid token; masks are
contiguous prefixes (the completion's tokens). The value loss (`clipped_value_loss`) is shared by every estimator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unipo.algos.advantages._group import check_mask, check_range, whiten
from unipo.algos.advantages.baselines import discounted_returns, kl_token_rewards
from unipo.algos.ops import masked_sum
from unipo.algos.registry import register, warn_reconstruction


class CriticTargets(NamedTuple):
    """What a critic estimator gives the update: the policy's advantages, the critic's regression targets, and the
    tokens whose value error trains the critic."""

    advantages: torch.Tensor
    returns: torch.Tensor
    value_mask: torch.Tensor


def _gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016, arXiv:1506.02438) on one contiguous completion per row.

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t), with V(s_L) replaced by `bootstrap` (0: the episode ended);
    A_t = Σ_l (γλ)^l·δ_{t+l} over the valid tokens; R_t = A_t + V(s_t). Both 0 outside the mask.
    """
    m = mask.bool()
    length = m.sum(1)  # (N,)
    pos = torch.arange(m.shape[1], device=m.device)
    last = pos[None] == (length - 1)[:, None]  # (N, T): the row's last valid token
    next_v = torch.where(last, bootstrap.to(values.dtype)[:, None], values[:, 1:])
    v = values[:, :-1]
    delta = torch.where(m, token_rewards + gamma * next_v - v, torch.zeros_like(v))
    adv = discounted_returns(delta, m, gamma * lam)
    return adv, torch.where(m, adv + v, torch.zeros_like(v))


def _targets(
    name: str,
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    cut: torch.Tensor | None,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    gamma: float,
    lam: float,
    kl_coef: float,
    whiten_adv: bool,
    adv_clip: float,
    eps: float,
    dense: torch.Tensor | None = None,
) -> CriticTargets:
    """The estimators' shared body. `cut` [N] bool: rows cut off by the token budget that are bootstrapped with
    V(s_L), get no outcome reward and do not train the critic (T-PPO); None: every reply ends the episode (PPO).
    `dense` [N, T]: per-token rewards that replace the outcome on the last token (a NaN row is unscored)."""
    check_range("gamma", gamma, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)
    check_range("kl_coef", kl_coef, 0.0)
    check_range("adv_clip", adv_clip, 0.0)
    m = check_mask(mask, rewards.shape[0], name)
    if values.shape != (m.shape[0], m.shape[1] + 1):
        raise ValueError(f"{name}: values must be [N, T+1] = {[m.shape[0], m.shape[1] + 1]}, got {list(values.shape)}")
    if bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError(f"{name}: the mask must be a contiguous prefix of each row (one completion per row)")
    if dense is not None and dense.shape != m.shape:
        raise ValueError(f"{name}: token_rewards must be [N, T] = {list(m.shape)}, got {list(dense.shape)}")
    unscored = torch.isnan(rewards) if dense is None else torch.isnan(dense).any(1)
    m = m & ~unscored[:, None]  # an unscored row gets A = 0 and does not train the critic
    cut = torch.zeros_like(m[:, 0]) if cut is None else cut.bool()
    outcome = torch.where(cut | unscored, torch.zeros_like(rewards), rewards)
    if dense is not None:
        outcome = torch.zeros_like(outcome)  # the outcome is in the per-token rewards
    token_rewards = kl_token_rewards(outcome, m, old_logp, ref_logp, kl_coef, name)
    if dense is not None:
        token_rewards = token_rewards + torch.where(m, dense.to(token_rewards.dtype), 0.0)
    at_cut = values.gather(1, m.sum(1, keepdim=True)).squeeze(1)  # V(s_L)
    adv, returns = _gae(token_rewards, values, m, torch.where(cut, at_cut, torch.zeros_like(at_cut)), gamma, lam)
    if whiten_adv:
        adv = whiten(adv, m, eps=eps)
    if adv_clip > 0:
        adv = adv.clamp(-adv_clip, adv_clip)
    return CriticTargets(adv, returns, m & ~cut[:, None])


_KL_INPUTS = {"old_logp", "ref_logp"}


@register(
    "critic",
    "ppo_gae",
    paper="Ouyang et al. 2022, Training language models to follow instructions with human feedback, "
    "arXiv:2203.02155; GAE: Schulman et al. 2016, arXiv:1506.02438",
    tag="checked: verl (compute_gae_advantage_return, compute_value_loss); MOSS-RLHF (advantage clip)",
    inputs=lambda p: {"token_rewards"} | (_KL_INPUTS if p["kl_coef"] > 0 else set()),
)
def ppo_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_coef: float = 0.0,
    whiten_advantages: bool = True,
    adv_clip: float = 0.0,
    eps: float = 1e-8,
) -> CriticTargets:
    """PPO advantages from a learned critic by GAE (Ouyang et al. 2022, arXiv:2203.02155; arXiv:1506.02438).

    verl / OpenRLHF `gae`, token level:

    r_{i,t} = −β·(log π_old − log π_ref)_{i,t} + 1[t = T_i]·r_i;  δ_t = r_t + γ·V(s_{t+1}) − V(s_t) with V = 0 after
    the last token (finished or cut off, as verl); A_t = Σ_l (γλ)^l·δ_{t+l};  R_t = A_t + V(s_t) (the critic's
    target, before whitening); A whitened over the batch's valid tokens, then clipped to ±`adv_clip` when > 0.

    Args:
        rewards: [N] outcome rewards; a NaN row (unscored) gets A = 0 and does not train the critic.
        values: [N, T+1] V(s_t) of the critic that is being trained (before this step's update), detached.
        mask: [N, T] completion mask (contiguous prefix per row).
        old_logp, ref_logp: [N, T] log π_old and log π_ref of the sampled tokens; needed when kl_coef > 0.
        token_rewards: [N, T] per-token rewards of a `token_rewards` shaper (RTO), used in place of the outcome on the
            last token (the KL penalty is still added); a row with a NaN is unscored. None: r_i on the last token.
        gamma: γ (verl and the paper: 1).
        lam: λ (verl: 0.95 for the actor; ALGORITHMS.md §10 default).
        kl_coef: β of the KL penalty in the reward (0: none, no reference model needed; PPO-max: 0.02).
        whiten_advantages: normalise A over the batch (verl's GAE always does).
        adv_clip: clip the whitened advantages to ±adv_clip (PPO-max 0.5; 0: off).
        eps: added to the std in the whitening.

    Returns:
        CriticTargets: advantages [N, T], returns [N, T] and the value mask (valid tokens of scored rows).
    """
    return _targets("ppo_gae", rewards, values, mask, None, old_logp, ref_logp, gamma, lam, kl_coef,
                    whiten_advantages, adv_clip, eps, token_rewards)  # fmt: skip


_T_PPO = "T-PPO: Truncated Proximal Policy Optimization, 2025 (ALGORITHMS.md seeds 001-08; citation not checked)"


@register(
    "critic",
    "t_ppo_recon",
    paper=_T_PPO,
    tag="reconstructed",
    inputs=lambda p: {"truncated"} | (_KL_INPUTS if p["kl_coef"] > 0 else set()),
)
def t_ppo_recon(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    truncated: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_coef: float = 0.0,
    whiten_advantages: bool = True,
    eps: float = 1e-8,
) -> CriticTargets:
    """Reconstruction of T-PPO's Extended GAE for truncated responses (ALGORITHMS.md §10).

    A response cut off at L is not an ended episode: Â_t = Σ_{l=0}^{L−t−1} (γλ)^l·δ_{t+l} with δ_{L−1} bootstrapped
    by V(s_L), the critic's value of the state after the cut, and no outcome reward (the reply is unfinished; the
    KL part of the token rewards stays). The critic trains only on finished responses (its value mask leaves
    truncated rows out). With no truncated response it equals `ppo_gae`.

    Args:
        rewards, values, mask, old_logp, ref_logp, gamma, lam, kl_coef, whiten_advantages, eps: as `ppo_gae`.
        truncated: [N] bool, True where the response was cut off by the token budget (required).

    Returns:
        CriticTargets with the value mask restricted to finished rows.
    """
    warn_reconstruction("t_ppo_recon", _T_PPO)
    if truncated is None or truncated.shape != rewards.shape:
        raise ValueError(f"t_ppo_recon needs truncated [N] = {list(rewards.shape)} (keyword tensor)")
    return _targets("t_ppo_recon", rewards, values, mask, truncated, old_logp, ref_logp, gamma, lam, kl_coef,
                    whiten_advantages, 0.0, eps)  # fmt: skip


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *, value_clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss per token (verl `compute_value_loss`; ALGORITHMS.md §10):

    ½·max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²); `value_clip` = ε_v ≤ 0 turns the clip off (½·(V − R)²).
    Aggregate it over the value mask with its own global token count.

    Returns:
        per-token loss [N, T] and metrics `critic/clip_frac` (tokens where the clipped error is the larger).
    """
    unclipped = (values - returns) ** 2
    if value_clip <= 0:
        return 0.5 * unclipped, {}
    clipped = (old_values + (values - old_values).clamp(-value_clip, value_clip) - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), {"critic/clip_frac": (clipped > unclipped).float()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over the masked tokens: 1 for a perfect critic, 0 for a constant one (NaN: Var R = 0)."""
    m = mask.bool()
    n = m.sum().clamp(min=1)

    def var(x: torch.Tensor) -> torch.Tensor:
        mean = masked_sum(x, m) / n
        return masked_sum((x - mean) ** 2, m) / n

    denom = var(returns)
    return float("nan") if float(denom) == 0 else float(1 - var(returns - values) / denom)
