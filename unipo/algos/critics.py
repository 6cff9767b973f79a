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


def _turn_spans(turn_ids: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end), each [N, K]: the first token of each row's policy turn k and one past its last (-1 where the row
    has no turn k). A turn's tokens must be contiguous, and a row's turns numbered 0, 1, ... without a gap."""
    n, t = turn_ids.shape
    turns = int(turn_ids.max()) + 1 if turn_ids.numel() else 0
    start = torch.full((n, max(turns, 1)), -1, dtype=torch.long, device=turn_ids.device)  # a column even with none
    end = start.clone()
    for k in range(turns):
        at = turn_ids == k
        has = at.any(1)
        first, last = at.int().argmax(1), t - 1 - at.flip(1).int().argmax(1)
        if bool((has & (last - first + 1 != at.sum(1))).any()):
            raise ValueError(f"{name}: the tokens of turn {k} must be contiguous in each row")
        if k and bool((has & (start[:, k - 1] < 0)).any()):
            raise ValueError(f"{name}: a row has turn {k} without turn {k - 1} (every turn must be trained)")
        start[:, k], end[:, k] = torch.where(has, first, -1), torch.where(has, last + 1, -1)
    return start, end


_ARCHER = "Zhou et al. 2024, ArCHer: Training Language Model Agents via Hierarchical Multi-Turn RL, arXiv:2402.19446"


@register(
    "critic",
    "archer",
    paper=_ARCHER,
    tag="checked: official code (YifeiZhou02/ArCHer archer/algorithms/archer/trainer.py); ours: one value head read "
    "before and after each utterance for V and Q, V's target on the sampled utterance, no twin critics",
    facts={"td_replay"},
)
def archer(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    turn_ids: torch.Tensor,
    turn_rewards: list[list[float]],
    target_values: torch.Tensor | None = None,
    gamma: float = 0.9,
    whiten_advantages: bool = False,
    eps: float = 1e-8,
) -> CriticTargets:
    """ArCHer's utterance-level critic and advantage (Zhou et al. 2024, arXiv:2402.19446; ALGORITHMS.md §10).

    Each policy turn k is one action a_k (an utterance) in state s_k (everything before it). One value model over
    prefixes gives both critics [ours]: V(s_k) = values[s_k's position] (the state before the turn's first token)
    and Q(s_k, a_k) = values[the position after its last token] (before the environment answers). With r_k the
    environment's reward after turn k (`turn_rewards`) and, on the last turn K−1, the rest of the trajectory reward
    R_i (so Σ_k r_k = R_i), the TD targets are those of the official trainer, from the target network (V̄, Q̄):

        y^Q_k = r_k + γ·V̄(s_{k+1})  (V̄ = 0 after the last turn: the episode ended);  y^V_k = Q̄(s_k, a_k),

    the official code taking Q̄ at a fresh action of the current policy, this function at the sampled one [ours]. The
    actor's advantage A_k = Q(s_k, a_k) − V(s_k), from `values` (the current critic), is broadcast to the turn's tokens
    (the official actor: −A·Σ_t log π over the utterance, i.e. REINFORCE at the sequence level). The trainer (fact
    `td_replay`) trains the value model on replayed trajectories towards these targets, ½·(V − y)² averaged over the
    targets, with a Polyak target (`critic.target_tau`; the official trainer: γ = 0.9, τ = 0.1, 3 critic steps).

    Args:
        rewards: [N] trajectory rewards R_i; a NaN row (unscored) gets A = 0 and no targets.
        values: [N, T+1] the current critic's values of every prefix (values[:, t]: before completion token t).
        mask: [N, T] completion mask (unused: the turns are `turn_ids`; shape-checked).
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        turn_rewards: per trajectory, the environment's reward after each turn (the last turn's is replaced by the
            rest of R_i).
        target_values: [N, T+1] the target network's values (None: `values`).
        gamma: γ between turns (the official default 0.9).
        whiten_advantages: normalise A over the batch's policy tokens (the official code does not).
        eps: added to the std in the whitening.

    Returns:
        CriticTargets: advantages [N, T]; returns and value_mask [N, T+1], the targets at the positions of V(s_k) and
        Q(s_k, a_k) of every turn of a scored row.
    """
    check_range("gamma", gamma, 0.0, 1.0)
    n, t = turn_ids.shape
    if mask is not None and mask.shape != turn_ids.shape:
        raise ValueError(f"archer: mask must be [N, T] = {[n, t]}, got {list(mask.shape)}")
    target = values if target_values is None else target_values
    for label, v in (("values", values), ("target_values", target)):
        if v.shape != (n, t + 1):
            raise ValueError(f"archer: {label} must be [N, T+1] = {[n, t + 1]}, got {list(v.shape)}")
    start, end = _turn_spans(turn_ids, "archer")
    has = start >= 0  # (N, K)
    if bool((has[:, 1:] & (end[:, :-1] == start[:, 1:])).any()):
        raise ValueError("archer: the environment gave no token between two turns, so Q(s_k, a_k) and V(s_{k+1}) "
                         "would share a position")  # fmt: skip
    turns = has.sum(1).tolist()
    r = torch.zeros(has.shape, dtype=torch.float32, device=values.device)  # r_k, the last turn's the rest of R_i
    for i, (k_i, given) in enumerate(zip(turns, turn_rewards, strict=True)):
        if k_i:
            before = [float(x) for x in list(given)[: k_i - 1]]
            r[i, : len(before)] = torch.tensor(before, dtype=torch.float32)
            r[i, k_i - 1] = float(rewards[i]) - sum(before)
    valid = has & ~rewards.isnan()[:, None]
    s_pos, e_pos = start.clamp(min=0), end.clamp(min=0)
    adv_turn = torch.where(valid, values.gather(1, e_pos) - values.gather(1, s_pos), 0.0)
    next_v = torch.cat([torch.where(has[:, 1:], target.gather(1, s_pos[:, 1:]), 0.0), r.new_zeros(n, 1)], 1)
    y_q, y_v = r + gamma * next_v, target.gather(1, e_pos)
    returns = torch.zeros_like(values, dtype=torch.float32)
    value_mask = torch.zeros_like(returns, dtype=torch.bool)
    rows, ks = valid.nonzero(as_tuple=True)
    for pos, y in ((start, y_v), (end, y_q)):
        returns[rows, pos[rows, ks]] = y[rows, ks].float()
        value_mask[rows, pos[rows, ks]] = True
    policy = turn_ids >= 0
    adv = torch.where(policy, adv_turn.gather(1, turn_ids.clamp(min=0, max=has.shape[1] - 1)), 0.0)
    if whiten_advantages:
        adv = whiten(adv, policy & ~rewards.isnan()[:, None], eps=eps)
    return CriticTargets(adv, returns, value_mask)
