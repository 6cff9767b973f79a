"""REINFORCE-style baselines (ALGORITHMS.md §1.1): batch whitening, greedy and batch-mean baselines, and the
per-token optimal baseline.

``reinforce_pp`` and ``optimal_token_baseline`` work on tokens and return [N, T]; their outcome reward r_i sits on
the last valid token of response i. Masked tokens (padding, tool output) carry no reward and get A = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.algos.advantages._group import (
    check_choice,
    check_mask,
    check_range,
    check_rewards,
    check_token_tensor,
    group_index,
    group_moments,
    group_stats,
    group_sum,
    safe_div,
    whiten,
)
from unipo.algos.ops import masked_sum
from unipo.algos.registry import register

_REINFORCE_PP = "Hu 2025, REINFORCE++: Stabilizing Critic-Free Policy Optimization, arXiv:2501.03262"


@register("advantage", "reinforce_pp_baseline", paper=_REINFORCE_PP, tag="checked: verl", facts={"group_centred"})
def reinforce_pp_baseline(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++-baseline: group-mean baseline, then batch whitening (Hu 2025, arXiv:2501.03262).

    A_{i,t} = whiten_B(r_i − mean_G r), where whiten_B(x) = (x − mean_B x) / (std_B x + eps) over the valid
    tokens of the batch (verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``).

    Args:
        rewards: [N] float sequence rewards; NaN rewards are left out of every statistic and get A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: [N, T] loss mask. When given, the mean and Bessel-corrected std run over all valid tokens
            (sequence i counted |y_i| times, as in verl) and the result is [N, T], 0 on masked tokens.
            When None, they run over the valid sequences and the result is [N].
        eps: added to the std. 1e-8 is verl's constant (verl writes rsqrt(var + 1e-8); the two forms differ
            by O(eps) relative).

    Returns:
        [N, T] advantages if ``mask`` is given, else [N].

    Note:
        Call it on the whole rollout batch (before micro-batching) so that the whitening is batch-wide.
    """
    rewards = check_rewards(rewards, group_ids)
    valid, centred, _, _ = group_stats(rewards, group_ids)
    if mask is None:
        return whiten(centred, valid, eps=eps)
    m = check_mask(mask, rewards.shape[0], "reinforce_pp_baseline")
    token_mask = m & valid[:, None]  # (N,) -> (N, T)
    return whiten(centred[:, None].expand(m.shape), token_mask, eps=eps)


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_{i,t} = Σ_{t′≥t valid} γ^{k(t′)−k(t)}·r_{i,t′}, k = index among the valid tokens of row i; 0 where masked.

    Masked tokens are skipped: they carry no reward and do not count in the discount. The valid tokens are packed
    to the left (stable sort), a reverse cumsum (γ = 1) or a log-depth doubling scan (γ < 1, only positive powers
    of γ, so no overflow) runs over them, and the result is scattered back.
    """
    m = mask.bool()
    order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)  # valid tokens first, in order
    r = torch.where(m, token_rewards, torch.zeros_like(token_rewards)).gather(1, order)
    if gamma == 1.0:
        g = r.flip(1).cumsum(1).flip(1)
    else:
        g, shift, factor = r, 1, gamma
        while shift < r.shape[1]:  # after this step g_t = Σ_{k < 2·shift} γ^k r_{t+k}
            g = g + factor * F.pad(g[:, shift:], (0, shift))
            shift, factor = 2 * shift, factor * factor
    out = torch.zeros_like(g).scatter(1, order, g)
    return torch.where(m, out, torch.zeros_like(out))


def _last_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Outcome reward on the last valid token of each row: (N,) -> (N, T). Rows with no valid token get nothing.
    pos = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
    last = torch.where(mask, pos, torch.full_like(pos, -1)).amax(1).clamp(min=0)
    r = torch.where(torch.isnan(rewards), torch.zeros_like(rewards), rewards)
    return torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device).scatter(1, last[:, None], r[:, None])


def kl_token_rewards(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    kl_coef: float,
    name: str,
) -> torch.Tensor:
    """r_{i,t} = −β·(log π_old − log π_ref)_{i,t} + 1[t = last valid]·r_i: outcome reward on the last token plus the
    k1 KL penalty in the reward (ALGORITHMS.md §4.1); 0 outside `mask`. `name` is the estimator, for errors."""
    token_rewards = _last_token_rewards(rewards, mask)
    if kl_coef > 0:
        if old_logp is None or ref_logp is None:
            missing = "old_logp" if old_logp is None else "ref_logp"
            raise ValueError(f"{name} with kl_coef={kl_coef} > 0 needs {missing} [N, T] (keyword tensor)")
        old = check_token_tensor(old_logp, "old_logp", mask, rewards, name)
        ref = check_token_tensor(ref_logp, "ref_logp", mask, rewards, name)
        token_rewards = token_rewards - kl_coef * torch.where(mask, old - ref, torch.zeros_like(old))
    return token_rewards


@register(
    "advantage",
    "reinforce_pp",
    paper=_REINFORCE_PP,
    tag="checked: verl; KL-in-reward part: memory",
    inputs=lambda p: {"old_logp", "ref_logp"} if p["kl_coef"] > 0 else set(),
)
def reinforce_pp(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ token advantage: KL-penalised token rewards, returns, batch whitening (Hu 2025, arXiv:2501.03262).

    r_{i,t} = −β·(log π_old − log π_ref)_{i,t} + 1[t = T_i]·r_i; G_{i,t} = Σ_{t′≥t} γ^{t′−t}·r_{i,t′};
    A = whiten_B(G) over every valid token of the batch.

    Args:
        rewards: [N] float outcome rewards, placed on the last valid token; a NaN row is left out (A = 0).
        group_ids: [N]; unused (REINFORCE++ has no group baseline), accepted for the family signature.
        mask: [N, T] loss mask (required). Masked tokens are skipped by the return (see ``discounted_returns``;
            verl instead restarts the return at a masked token, which differs only for interior masks).
        old_logp: [N, T] log π_old of the sampled tokens; required when kl_coef > 0.
        ref_logp: [N, T] log π_ref of the sampled tokens; required when kl_coef > 0.
        kl_coef: β of the k1 KL penalty in the reward (verl ``kl_ctrl.kl_coef``, default 0.001; OpenRLHF
            ``init_kl_coef``). Our default 0 drops the term, so no reference model is needed.
        gamma: γ ∈ [0, 1] (paper and verl: 1).
        eps: added to the std in the whitening (verl's 1e-8).

    Returns:
        [N, T] advantages, 0 on masked tokens.

    Note:
        Call it on the whole rollout batch so that the whitening is batch-wide; pair it with ``ppo_clip``.
    """
    check_range("kl_coef", kl_coef, 0.0)
    check_range("gamma", gamma, 0.0, 1.0)
    rewards = check_rewards(rewards, group_ids)
    m = check_mask(mask, rewards.shape[0], "reinforce_pp")
    token_mask = m & ~torch.isnan(rewards)[:, None]
    token_rewards = kl_token_rewards(rewards, token_mask, old_logp, ref_logp, kl_coef, "reinforce_pp")
    returns = discounted_returns(token_rewards, token_mask, gamma)
    return whiten(returns, token_mask, eps=eps)


@register(
    "advantage",
    "remax",
    paper="Li et al. 2023, ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning "
    "Large Language Models, arXiv:2310.10505",
    tag="checked: verl (baseline reward tensor); the greedy baseline itself: memory",
)
def remax(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    baseline_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """ReMax advantage: reward minus the reward of the greedy response (Li et al. 2023, arXiv:2310.10505).

    A_i = r_i − r(x, ŷ_greedy) (outcome reward: the return Σ_{t′≥t} r_{i,t′} is r_i on every token). No std scaling.

    Args:
        rewards: [N] float sequence rewards of the sampled responses; NaN → A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: unused; accepted for the family signature.
        baseline_rewards: the reward of the greedy decode (required): [N], one per completion (verl's
            ``reward_baselines``), or [P], one per group in ascending ``group_ids`` order. A length of N is
            always read per completion.

    Returns:
        [N] advantages; A = 0 when the sample's reward equals the greedy one (§13 V4).
    """
    rewards = check_rewards(rewards, group_ids)
    if baseline_rewards is None:
        raise ValueError("remax needs baseline_rewards [N] or [P] (the reward of the greedy decode; keyword tensor)")
    if baseline_rewards.dim() != 1:
        raise ValueError(f"baseline_rewards must be 1-D [N] or [P]; got {tuple(baseline_rewards.shape)}")
    baseline = baseline_rewards.detach().to(device=rewards.device, dtype=rewards.dtype)
    n = rewards.shape[0]
    if baseline.shape[0] != n:
        inverse, n_groups = group_index(group_ids)
        if baseline.shape[0] != n_groups:
            raise ValueError(
                f"baseline_rewards must have N = {n} (per completion) or P = {n_groups} (per group) entries; "
                f"got {baseline.shape[0]}"
            )
        baseline = baseline[inverse]  # (P,) -> (N,)
    valid = ~torch.isnan(rewards)
    return torch.where(valid, rewards - baseline, torch.zeros_like(rewards))


@register(
    "advantage",
    "flash_reinforce",
    paper="Flash-REINFORCE batch-mean baseline, as shipped by OpenRLHF (advantage estimator flash_reinforce)",
    tag="checked: anchors.md",
)
def flash_reinforce(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Batch-mean baseline for one sample per prompt (OpenRLHF, https://github.com/OpenRLHF/OpenRLHF).

    A_i = r_i − mean_B r over the valid completions of the batch (n = 1 per prompt), centred before any micro-batch
    or rank split. The advantage alone is not the method: pair it with the ``flash_reinforce`` policy loss (unclipped
    detached ratio to the behaviour policy, binary-KL sequence gate), as the recipe does; pairing it with
    ``rollout_is`` (which wraps ``ppo_clip``) does not reproduce FlashREINFORCE.

    Args:
        rewards: [N] float sequence rewards; NaN → left out of the mean, A = 0.
        group_ids: [N]; unused (the baseline ignores groups), accepted for the family signature.
        mask: optional [N, T] loss mask; a row with no valid token is left out of the mean and gets A = 0 (as in
            verl's test of the same estimator).

    Returns:
        [N] advantages.
    """
    rewards = check_rewards(rewards, group_ids)
    valid = ~torch.isnan(rewards)
    if mask is not None:
        valid = valid & check_mask(mask, rewards.shape[0], "flash_reinforce").any(1)
    mean = masked_sum(rewards, valid) / valid.to(rewards.dtype).sum().clamp(min=1)
    return torch.where(valid, rewards - mean, torch.zeros_like(rewards))


@register(
    "advantage",
    "optimal_token_baseline",
    paper="Optimal Token Baseline (OTB), verl optimal_token_baseline (variance-minimising per-token baseline)",
    tag="checked: verl",
)
def optimal_token_baseline(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    sum_pi_squared: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    eps: float = 1e-8,
    handle_zero_tail: bool = True,
    singleton: str = "raw",
) -> torch.Tensor:
    """Optimal token baseline (verl, https://github.com/volcengine/verl, ``compute_optimal_token_baseline_advantage``).

    e_{i,t} = 1 − 2π_old(y_{i,t}) + Σ_v π_old(v)², W_{i,t} = Σ_{t′≤t} m·e, B_t = Σ_G G·W / (Σ_G W + eps) at position t,
    A_{i,t} = G_{i,t} − B_t, with the return G_{i,t} = r_i on every valid token (outcome reward).

    Args:
        rewards: [N] float outcome rewards; a NaN row is left out of the baseline and gets A = 0.
        group_ids: [N] long prompt index of each completion.
        mask: [N, T] loss mask (required).
        old_logp: [N, T] log π_old of the sampled tokens (required).
        sum_pi_squared: [N, T] Σ_v π_old(v∣s_{i,t})² (required; verl ``calculate_sum_pi_squared``).
        rollout_is_weights: optional [N, T] truncated rollout IS weights ρ̄; e is multiplied by ρ̄².
        eps: added to the denominator (verl: 1e-8).
        handle_zero_tail: zero the baseline where only one response of the group still has tokens, i.e. past the
            second-longest response (verl default True; for right-padded masks this is verl's rule exactly).
        singleton: a one-response group gets "raw" (A = G; default: verl computes no baseline for it) or "zero"
            (A = 0; unipo's option, as ``grpo``'s default).

    Returns:
        [N, T] advantages, 0 on masked tokens.
    """
    check_range("eps", eps, 0.0)
    check_choice("singleton", singleton, ("zero", "raw"))
    rewards = check_rewards(rewards, group_ids)
    m = check_mask(mask, rewards.shape[0], "optimal_token_baseline")
    old = check_token_tensor(old_logp, "old_logp", m, rewards, "optimal_token_baseline")
    spp = check_token_tensor(sum_pi_squared, "sum_pi_squared", m, rewards, "optimal_token_baseline")
    inverse, n_groups = group_index(group_ids)
    valid, count, _, _ = group_moments(rewards, inverse, n_groups)
    tok = (m & valid[:, None]).to(rewards.dtype)  # (N, T)
    returns = torch.where(valid, rewards, torch.zeros_like(rewards))[:, None] * tok
    energy = 1 - 2 * old.exp() + spp
    if rollout_is_weights is not None:
        energy = energy * check_token_tensor(rollout_is_weights, "rollout_is_weights", m, rewards, "otb") ** 2
    w = (energy * tok).cumsum(1) * tok  # W_{i,t}, 0 on masked tokens
    baseline = safe_div(group_sum(returns * w, inverse, n_groups), group_sum(w, inverse, n_groups) + eps)  # (G, T)
    baseline = baseline[inverse]
    if handle_zero_tail:
        alone = group_sum(tok, inverse, n_groups)[inverse] == 1  # only this response has a token here
        baseline = torch.where(alone, torch.zeros_like(baseline), baseline)
    adv = (returns - baseline) * tok
    one = (valid & (count[inverse] == 1))[:, None]  # (N, 1): a one-response group
    return torch.where(one, returns if singleton == "raw" else torch.zeros_like(adv), adv)


@register(
    "advantage",
    "tir_otb",
    paper="Optimal Token Baseline for multi-turn (tool-integrated) trajectories, verl tir_optimal_token_baseline "
    "(https://github.com/volcengine/verl, compute_multi_turn_optimal_token_baseline_advantage)",
    tag="checked: verl",
)
def tir_otb(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    sum_pi_squared: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    eps: float = 1e-8,
    handle_zero_tail: bool = True,
    singleton: str = "raw",
) -> torch.Tensor:
    """Multi-turn optimal token baseline (verl, https://github.com/volcengine/verl, ``tir_optimal_token_baseline``).

    ``optimal_token_baseline`` with positions counted over the policy's own tokens: each row's loss-mask tokens (the
    environment's tokens between turns are out of the mask) are moved left into one contiguous sequence, the baseline
    B_k = Σ_G G·W / (Σ_G W + eps) is taken at the k-th policy token of every trajectory of the group, and the
    advantages go back to their tokens. W_{i,k} = Σ_{k′≤k} (1 − 2π_old + Σ_v π_old²) over policy tokens only, as
    verl's cumulative sum under the response mask. On a mask without holes it is ``optimal_token_baseline``.

    Args:
        rewards: [N] float outcome rewards; a NaN row is left out of the baseline and gets A = 0.
        group_ids: [N] long prompt index of each trajectory.
        mask: [N, T] loss mask, 0 on the environment's tokens (required).
        old_logp: [N, T] log π_old of the sampled tokens (required).
        sum_pi_squared: [N, T] Σ_v π_old(v∣s_{i,t})² (required).
        rollout_is_weights: optional [N, T] truncated rollout IS weights ρ̄; e is multiplied by ρ̄².
        eps: added to the denominator (verl: 1e-8).
        handle_zero_tail: zero the baseline past the second-longest trajectory's policy-token count.
        singleton: "raw" (A = G, verl) or "zero" for a one-trajectory group.

    Returns:
        [N, T] advantages, 0 on masked tokens.
    """
    m = check_mask(mask, rewards.shape[0], "tir_otb")
    lengths = m.sum(1)
    order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, : int(lengths.max()) if m.numel() else 0]
    packed = torch.arange(order.shape[1], device=m.device) < lengths[:, None]  # (N, K): the k-th policy token

    def pack(x: torch.Tensor | None, name: str) -> torch.Tensor | None:
        return None if x is None else check_token_tensor(x, name, m, rewards, "tir_otb").gather(1, order)

    adv = optimal_token_baseline(rewards, group_ids, mask=packed, old_logp=pack(old_logp, "old_logp"),
                                 sum_pi_squared=pack(sum_pi_squared, "sum_pi_squared"),
                                 rollout_is_weights=pack(rollout_is_weights, "rollout_is_weights"), eps=eps,
                                 handle_zero_tail=handle_zero_tail, singleton=singleton)  # fmt: skip
    return torch.zeros(m.shape, dtype=adv.dtype, device=adv.device).scatter(1, order, adv * packed)
