"""Reward shaping and multi-reward combination (ALGORITHMS.md §5), registry kind `reward`.

A shaper maps the step's sequence rewards to shaped rewards before the advantages: `fn(rewards [N], **inputs,
**params) -> [N]`, run in the order a recipe lists them under `algo.shaping` (each sees the previous one's output).
NaN (unscored) stays NaN. A shaper with the fact `token_rewards` returns per-token rewards [N, T] instead, which a
critic estimator that takes `token_rewards` turns into advantages (RTO).

The trainer inputs a shaper may take (from the collect and reference stages):

- `lengths` [N] completion lengths in tokens (EOS included), `max_len` the token budget (`rollout.max_new_tokens`),
  `truncated` [N] (the reply hit the budget without an EOS), `group_ids` [N];
- `reward_components` [N, K] each reward function's score (NaN: None or failed);
- `correct` [N] bool: the first reward function scored >= 1 (the task's metric in every built-in task: list a
  correctness reward first);
- `prompt_keys` a list of N strings identifying each completion's prompt (for per-prompt memories);
- `turn_info` (multi-turn trajectories only) per trajectory, each environment step's `info` dict;
- `ref_logp`, `teacher_logp` [N, T]: the reference's and a frozen second model's (`model.teacher_path`) log-probs of
  the sampled tokens (the reference stage runs before the shape stage);
- `state`: a stateful shaper's own state (None on the first step) — it then returns `(shaped, new_state)`, and the
  trainer keeps the state in every checkpoint.
"""

from __future__ import annotations

import math

import torch

from unipo.algos.policy_losses._common import group_mean
from unipo.algos.registry import register, warn_reconstruction


def group_extreme(values: torch.Tensor, group_ids: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-completion group min (`amin`) or max (`amax`) of `values` over the completion's group."""
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    v = values.to(torch.float64)
    fill = math.inf if reduce == "amin" else -math.inf
    out = torch.full((g,), fill, dtype=v.dtype).scatter_reduce(0, group_ids, v, reduce=reduce)
    return out[group_ids]


def reward_column(reward_components: torch.Tensor, index: int, who: str, what: str) -> torch.Tensor:
    """Column `index` of the reward functions' scores, read by a shaper as `what` (a flag or a count); ValueError
    unless it is a function after the first (the first is the correctness reward)."""
    if not 0 < index < reward_components.shape[1]:
        k = reward_components.shape[1]
        raise ValueError(f"{who}: {what} is reward function {index} of {k}: list the correctness reward first, then "
                         f"the function that gives {what}")  # fmt: skip
    return reward_components[:, index]


@register(
    "reward",
    "weighted_sum",
    paper="TRL reward_weights / sum_then_normalize (the default combination of several reward functions)",
    tag="checked: TRL",
)
def weighted_sum(components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of reward functions (TRL `reward_weights`, https://huggingface.co/docs/trl/grpo_trainer).

    r = Σ_k w_k·r_k over the functions that scored (a None is left out of the sum, as TRL's nansum); NaN when every
    function gave None. The combination every trainer applies to the reward functions' scores.

    Args:
        components: [N, K] scores, NaN for None.
        weights: [K] weights.

    Returns:
        [N] combined rewards.
    """
    total = torch.nansum(components * weights.to(components.dtype), dim=1)
    return torch.where(torch.isnan(components).all(dim=1), torch.nan, total)


@register(
    "reward",
    "gated_hierarchical_recon",
    paper="ChatShopBuddy hierarchical reward (seeds 000-01) and RL-Struct (seeds 004-01); reconstruction",
    tag="reconstructed",
)
def gated_hierarchical_recon(
    rewards: torch.Tensor, *, reward_components: torch.Tensor, thresholds: tuple[float, ...] = (1.0,)
) -> torch.Tensor:
    """Reconstruction of the gated hierarchical reward of ChatShopBuddy (HRM) and RL-Struct.

    The reward functions in the order listed: R = r₁ + 1[r₁ ≥ τ₁]·(r₂ + 1[r₂ ≥ τ₂]·(r₃ + …))
    (RL-Struct's order: structure → format → content → validity). A later level only counts once every earlier one
    passed its gate. Replaces the weighted sum (the incoming `rewards` are ignored). A None counts as 0 and closes
    its gate; every level None gives NaN. Reconstruction (ALGORITHMS.md R2): the papers' exact gates are not public.

    Args:
        rewards: [N] ignored (the combination this shaper replaces).
        reward_components: [N, K] scores of the K levels.
        thresholds: τ₁ … τ_{K−1}, one gate per level that has a level after it (default 1.0: a binary check
            passed).

    Returns:
        [N] gated rewards.
    """
    warn_reconstruction("gated_hierarchical_recon", "ChatShopBuddy / RL-Struct")
    k = reward_components.shape[1]
    if len(thresholds) < k - 1:
        raise ValueError(
            f"gated_hierarchical_recon: {k} reward functions need {k - 1} thresholds, got {len(thresholds)}"
        )
    r = torch.nan_to_num(reward_components, nan=0.0)
    total = r[:, k - 1]
    for level in range(k - 2, -1, -1):
        total = r[:, level] + (r[:, level] >= thresholds[level]).to(r.dtype) * total
    return torch.where(torch.isnan(reward_components).all(dim=1), torch.nan, total)


@register(
    "reward",
    "dapo_overlong",
    paper="Yu et al. 2025, DAPO, arXiv:2503.14476, §3.4 soft overlong punishment (Eq. 13)",
    tag="checked: verl docs (overlong_buffer)",
)
def dapo_overlong(
    rewards: torch.Tensor,
    *,
    lengths: torch.Tensor,
    max_len: int,
    buffer_len: int | None = None,
    penalty: float = 1.0,
) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, Eq. 13).

    With e = |y| − (L_max − L_buf): r ← r + min(−(e/L_buf)·c, 0).

    0 up to L_max − L_buf tokens, falling linearly to −c at L_max (§13 W1). DAPO's recipe: L_max = 20480, L_buf =
    4096 (a fifth of L_max), c = 1.

    Args:
        rewards: [N].
        lengths: [N] completion lengths in tokens.
        max_len: L_max, the token budget (the trainer passes `rollout.max_new_tokens`).
        buffer_len: L_buf; None: max_len // 5 (DAPO's 4096 / 20480, scaled to the budget; ours).
        penalty: c, the punishment at L_max.

    Returns:
        [N] shaped rewards.
    """
    buf = max(1, max_len // 5) if buffer_len is None else buffer_len
    if not 0 < buf <= max_len:
        raise ValueError(f"dapo_overlong: buffer_len must be in (0, max_len={max_len}], got {buf}")
    excess = lengths.to(rewards.dtype) - (max_len - buf)
    return rewards + torch.clamp(-(excess / buf) * penalty, max=0.0)


@register(
    "reward",
    "stop_penalty",
    paper="OpenRLHF stop_properly_penalty_coef; oat non_stop_penalty; TRL online-DPO missing_eos_penalty",
    tag="checked: anchor names; the form is TRL's missing_eos_penalty (subtract c)",
)
def stop_penalty(rewards: torch.Tensor, *, truncated: torch.Tensor, penalty: float = 1.0) -> torch.Tensor:
    """Stop penalty, TRL's `missing_eos_penalty` (https://huggingface.co/docs/trl/online_dpo_trainer).

    r ← r − c for a reply that hit the token budget without an EOS (OpenRLHF's `stop_properly_penalty_coef` and
    oat's `non_stop_penalty` set such a reply's reward to a constant instead, an option not offered here).

    Args:
        rewards: [N].
        truncated: [N] bool, the reply has no EOS within the budget.
        penalty: c.

    Returns:
        [N] shaped rewards.
    """
    return rewards - penalty * truncated.to(rewards.dtype)


@register(
    "reward",
    "reward_scale_clip",
    paper="Zheng et al. 2023, Secrets of RLHF in Large Language Models Part I: PPO (PPO-max), arXiv:2307.04964",
    tag="checked: MOSS-RLHF code",
)
def reward_scale_clip(
    rewards: torch.Tensor,
    *,
    state: dict[str, float] | None = None,
    normalize: bool = False,
    clip: float = 10.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-max reward scaling and clipping (Zheng et al. 2023, arXiv:2307.04964, §5.3; MOSS-RLHF).

    r ← r / σ_run (or (r − μ_run)/σ_run with `normalize`, MOSS-RLHF `use_reward_norm`),
    then r ← clip(r, −c, c). μ_run, σ_run are the running mean and (population) std of every reward seen so far,
    this batch included (updated first, as MOSS-RLHF's running-mean-std does). Stateful: the count, mean and M2 of
    the running moments are checkpointed. While σ_run < eps (e.g. all rewards so far equal) rewards are not scaled
    (ours; dividing by eps would blow them up to the clip). NaN rewards are left out of the moments.

    Args:
        rewards: [N].
        state: {count, mean, m2} of the rewards seen on earlier steps (None on the first).
        normalize: subtract the running mean too (MOSS-RLHF `use_reward_norm`).
        clip: c of the final clip (MOSS-RLHF 10).
        eps: below this running std the rewards are not scaled.

    Returns:
        ([N] scaled rewards, the new state).
    """
    s = state or {"count": 0.0, "mean": 0.0, "m2": 0.0}
    valid = rewards[~torch.isnan(rewards)].double()
    n = float(valid.numel())
    if n:  # Chan et al.'s parallel update of (count, mean, M2)
        b_mean, b_m2 = float(valid.mean()), float(((valid - valid.mean()) ** 2).sum())
        total = s["count"] + n
        delta = b_mean - s["mean"]
        s = {"count": total, "mean": s["mean"] + delta * n / total,
             "m2": s["m2"] + b_m2 + delta**2 * s["count"] * n / total}  # fmt: skip
    std = math.sqrt(s["m2"] / s["count"]) if s["count"] else 0.0
    shaped = rewards - s["mean"] if normalize else rewards
    if std >= eps:
        shaped = shaped / std
    return shaped.clamp(-clip, clip), s


def _kimi_lambda(lengths: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    length = lengths.to(torch.float64)
    lo, hi = group_extreme(length, group_ids, "amin"), group_extreme(length, group_ids, "amax")
    span = hi - lo
    return torch.where(span > 0, 0.5 - (length - lo) / span.clamp(min=1e-12), torch.zeros_like(length))


@register(
    "reward",
    "kimi_length",
    paper="Kimi Team 2025, Kimi k1.5: Scaling Reinforcement Learning with LLMs, arXiv:2501.12599, §2.3.3",
    tag="memory",
)
def kimi_length(
    rewards: torch.Tensor, *, lengths: torch.Tensor, group_ids: torch.Tensor, correct: torch.Tensor, coef: float = 1.0
) -> torch.Tensor:
    """Kimi k1.5 length reward (Kimi Team 2025, arXiv:2501.12599, §2.3.3), added with weight `coef`.

    λ = 0.5 − (|y| − len_min)/(len_max − len_min) over the group (λ = 0 when every reply has the same length);
    r_len = λ for a correct reply, min(0, λ) for a wrong one, so a wrong reply's length reward is never positive
    (§13 W3). r ← r + coef·r_len. The weight is a recipe choice (1 here).

    Args:
        rewards: [N].
        lengths: [N] reply lengths in tokens.
        group_ids: [N] prompt of each reply.
        correct: [N] bool.
        coef: weight of the length reward.

    Returns:
        [N] shaped rewards.
    """
    lam = _kimi_lambda(lengths, group_ids)
    r_len = torch.where(correct, lam, lam.clamp(max=0.0))
    return rewards + coef * r_len.to(rewards.dtype)


@register(
    "reward",
    "grpo_lambda",
    paper="Dai, Liu, Si 2025, Stable Reinforcement Learning for Efficient Reasoning (GRPO-λ), arXiv:2505.18086",
    tag="gate: checked (abstract); penalty: kimi_length (unipo's choice, the paper's form is unknown)",
)
def grpo_lambda(
    rewards: torch.Tensor,
    *,
    lengths: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor,
    threshold: float = 0.5,
    alpha: float = 1.0,
) -> torch.Tensor:
    """GRPO-λ group-gated length reward (Dai, Liu, Si 2025, Stable RL for Efficient Reasoning, arXiv:2505.18086).

    A group whose accuracy (1/G)·Σ 1[correct] reaches λ gets the length reward, r ← r + α·r_len; other groups keep
    r (with r = 1[correct] this is the paper's r = 1[correct] + α·r_len). r_len is `kimi_length`'s — unipo's
    default, not the paper's (whose penalty form is unknown, ALGORITHMS.md §5.2); `threshold` λ = 0.5 and α = 1 are
    ours as well.

    Args:
        rewards: [N].
        lengths: [N] reply lengths in tokens.
        group_ids: [N] prompt of each reply.
        correct: [N] bool.
        threshold: λ, the group accuracy from which the length reward applies.
        alpha: α, its weight.

    Returns:
        [N] shaped rewards.
    """
    acc = group_mean(correct.to(torch.float64), group_ids)
    shaped = kimi_length(rewards, lengths=lengths, group_ids=group_ids, correct=correct, coef=alpha)
    return torch.where(acc >= threshold, shaped, rewards)


@register(
    "reward",
    "hapo_recon",
    paper="Huang et al. 2025, HAPO: Training Language Models to Reason Concisely via History-Aware Policy "
    "Optimization (seeds 000-40); reconstruction of its length function",
    tag="reconstructed",
)
def hapo_recon(
    rewards: torch.Tensor,
    *,
    lengths: torch.Tensor,
    correct: torch.Tensor,
    prompt_keys: list[str],
    state: dict[str, float] | None = None,
    coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction of HAPO's history-aware length reward (https://github.com/HCY123902/HAPO).

    Each prompt remembers h_q, the shortest correct reply seen for it on earlier
    steps. r_len = cos(π/2·clip(|y|/h_q, 0, 2)) for a correct reply (shorter than h_q: positive, longer: negative)
    and min(0, ·) for a wrong one (a short wrong reply is not punished); 0 for a prompt with no history yet.
    r ← r + coef·r_len; then h_q ← min(h_q, this step's correct lengths). Stateful: the per-prompt memory {prompt
    key: h_q} is checkpointed. Reconstruction (ALGORITHMS.md R2) of the cosine form.

    Args:
        rewards: [N].
        lengths: [N] reply lengths in tokens.
        correct: [N] bool.
        prompt_keys: N strings, the prompt of each reply.
        state: {prompt key: h_q} from earlier steps (None on the first).
        coef: weight of the length reward.

    Returns:
        ([N] shaped rewards, the new memory).
    """
    warn_reconstruction("hapo_recon", "HAPO (history-aware length reward)")
    memory = dict(state or {})
    h = torch.tensor([memory.get(k, math.nan) for k in prompt_keys], dtype=torch.float64)
    x = (lengths.to(torch.float64) / h).clamp(0.0, 2.0)
    r_len = torch.cos(math.pi / 2 * x)
    r_len = torch.where(correct, r_len, r_len.clamp(max=0.0))
    r_len = torch.nan_to_num(r_len, nan=0.0)  # no history yet
    for key, length, ok in zip(prompt_keys, lengths.tolist(), correct.tolist(), strict=True):
        if ok:
            memory[key] = min(memory.get(key, math.inf), float(length))
    return rewards + coef * r_len.to(rewards.dtype), memory


@register(
    "reward",
    "noisy_verifier",
    paper="Cai et al. 2025, Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect Verifiers, "
    "arXiv:2510.00915",
    tag="checked: secondary",
    facts={"affine_in_reward"},
)
def noisy_verifier(
    rewards: torch.Tensor, *, mode: str = "backward", rho0: float = 0.0, rho1: float = 0.0
) -> torch.Tensor:
    """Noisy-verifier corrections (Cai et al. 2025, RLVR under Imperfect Verifiers, arXiv:2510.00915).

    A binary verifier with false-positive rate ρ₀ = P(r̃=1∣r=0) and false-negative rate ρ₁ = P(r̃=0∣r=1):

    - backward: R̂ = (r̃ − ρ₀)/(1 − ρ₀ − ρ₁), unbiased: E[R̂∣r] = r (§13 W2).
    - forward: the score-function weight r̃ + ρ₁ − 1, i.e. ρ₁ for r̃ = 1 and ρ₁ − 1 for r̃ = 0 (needs only ρ₁).

    Where it sits: both are affine in r̃ with constant ρ, so group z-scoring (`grpo`) cancels them exactly and
    mean-centring only rescales; the trainer warns when a group-normalising estimator follows. They matter with a
    fixed baseline (e.g. `reinforce`-style estimators without a group baseline, or a critic).

    Args:
        rewards: [N] binary verifier rewards r̃.
        mode: "backward" or "forward".
        rho0: ρ₀ (backward only).
        rho1: ρ₁.

    Returns:
        [N] corrected rewards (backward) or score-function weights (forward).
    """
    if mode == "backward":
        if rho0 + rho1 >= 1:
            raise ValueError(f"noisy_verifier: needs rho0 + rho1 < 1, got {rho0} + {rho1}")
        return (rewards - rho0) / (1.0 - rho0 - rho1)
    if mode == "forward":
        return rewards + rho1 - 1.0
    raise ValueError(f"noisy_verifier: mode must be 'backward' or 'forward', got {mode!r}")


@register(
    "reward",
    "fapo",
    paper="Ding et al. 2025, FAPO: Flawed-Aware Policy Optimization for Efficient and Reliable Reasoning (seeds "
    "002-03)",
    tag="checked: verl recipe reward_fn_reasoning.py",
)
def fapo(
    rewards: torch.Tensor,
    *,
    correct: torch.Tensor,
    reward_components: torch.Tensor,
    flaw_index: int = 1,
    penalty: float = 1.0,
) -> torch.Tensor:
    """FAPO flawed-positive penalty (https://github.com/volcengine/verl/tree/main/recipe/fapo).

    Base r = +1 for a correct reply and −1 otherwise; a correct reply whose process a generative
    reward model flags as flawed gets r − λ. With λ = 1, r ∈ {+1 clean, 0 flawed-positive, −1 wrong} (§13 W3).
    The flaw flag is the reward function at `flaw_index` (>= 0.5: a wrong step was found; the GenRM is the user's
    reward function). Replaces the incoming reward. NaN when the correctness reward is unscored.

    Args:
        rewards: [N] ignored (replaced).
        correct: [N] bool, the first reward function scored >= 1.
        reward_components: [N, K] the reward functions' scores.
        flaw_index: the column of the flaw flag.
        penalty: λ.

    Returns:
        [N] rewards in {1, 1 − λ, −1}.
    """
    flawed = torch.nan_to_num(reward_column(reward_components, flaw_index, "fapo", "the flaw flag"), nan=0.0) >= 0.5
    base = torch.where(correct, 1.0, -1.0).to(rewards.dtype)
    out = base - penalty * (correct & flawed).to(rewards.dtype)
    return torch.where(torch.isnan(reward_components[:, 0]), torch.nan, out)
