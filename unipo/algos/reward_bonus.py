"""Group-relative and behaviour bonuses, and scoring rules behind reward functions (ALGORITHMS.md §5), kind `reward`.

Shapers here follow `reward_shaping.py`'s contract (`fn(rewards [N], **inputs, **params) -> [N]`, NaN stays NaN).
A behaviour the reward functions cannot see in the text alone (a tool call, an auxiliary construction) is counted by
a reward function of the user's, read from `reward_components` at the index the shaper names (give that function
weight 0 when it should not add to the sum). The two scoring rules (`soft_multichoice`, `judge_expected_score`) are
the math behind the built-in reward functions of the same names, which every trainer runs. `reseek_judge` scores
a multi-turn agent's judgements of its search results from the environment's `turn_info`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from unipo.algos.policy_losses._common import group_mean
from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.reward_shaping import group_extreme, reward_column


@register(
    "reward",
    "gcpo_aux_recon",
    paper="GeometryZero: group-contrastive policy optimization (GCPO), reward for auxiliary constructions "
    "(seeds_000_001.md 000-08); reconstruction",
    tag="reconstructed",
)
def gcpo_aux_recon(
    rewards: torch.Tensor,
    *,
    correct: torch.Tensor,
    group_ids: torch.Tensor,
    reward_components: torch.Tensor,
    behaviour_index: int = 1,
    eta: float = 0.05,
    coef: float = 1.0,
) -> torch.Tensor:
    """Reconstruction of GeometryZero's group-contrastive masking (GCPO, seeds_000_001.md 000-08).

    In each group, acc₊ / acc₋ is the accuracy of the replies that use / do not use the behaviour (e.g. an auxiliary
    construction; flagged by the reward function at `behaviour_index`, >= 0.5). A reply that uses it gets
    r_aux = +1 if acc₊ − acc₋ > η, −1 if acc₊ − acc₋ < −η, and 0 otherwise (masked, also when either side is empty);
    r' = r + coef·r_aux. Replies without the behaviour are unchanged. η's value is ours.

    Args:
        rewards: [N].
        correct: [N] bool, the first reward function scored >= 1.
        group_ids: [N] prompt group of each reply.
        reward_components: [N, K] the reward functions' scores (the behaviour flag at `behaviour_index`).
        behaviour_index: the column of the behaviour flag.
        eta: the margin η.
        coef: the weight of r_aux.

    Returns:
        [N] shaped rewards.
    """
    warn_reconstruction("gcpo_aux_recon", "GeometryZero GCPO auxiliary reward")
    uses = torch.nan_to_num(
        reward_column(reward_components, behaviour_index, "gcpo_aux_recon", "the behaviour flag"), 0.0
    )
    uses = uses >= 0.5
    ok = correct.to(torch.float64)
    n_with, n_without = group_mean(uses.double(), group_ids), group_mean((~uses).double(), group_ids)
    acc_with = group_mean(ok * uses, group_ids) / n_with
    acc_without = group_mean(ok * ~uses, group_ids) / n_without
    gap = torch.nan_to_num(acc_with - acc_without, nan=0.0)  # a side with no replies: masked
    aux = torch.where(gap > eta, 1.0, torch.where(gap < -eta, -1.0, 0.0)) * uses
    return rewards + coef * aux.to(rewards.dtype)


@register(
    "reward",
    "icpo_expert_bonus_recon",
    paper="ICPO: expert-guided in-context policy optimization, bonus for correct off-policy samples "
    "(seeds_000_001.md 001-12); reconstruction",
    tag="reconstructed",
)
def icpo_expert_bonus_recon(
    rewards: torch.Tensor,
    *,
    correct: torch.Tensor,
    demo_mask: torch.Tensor,
    state: dict[str, float] | None = None,
    alpha: float = 0.5,
    anneal_steps: int = 100,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction of ICPO's expert bonus (seeds_000_001.md 001-12): r' = r + α_t·1[off-policy ∧ correct].

    The off-policy samples are the demonstrations a sampler injected (`demo_mask`); α_t = α·max(0, 1 − t/T) falls
    linearly to 0 over T = `anneal_steps` steps (the schedule is ours; the paper anneals to 0). Stateful: the step
    count t is checkpointed.

    Args:
        rewards: [N].
        correct: [N] bool.
        demo_mask: [N] bool, the injected (off-policy) samples.
        state: {"step": t} from earlier steps (None on the first).
        alpha: α, the bonus at step 0.
        anneal_steps: T.

    Returns:
        ([N] shaped rewards, the new state).
    """
    warn_reconstruction("icpo_expert_bonus_recon", "ICPO expert bonus")
    t = int((state or {}).get("step", 0))
    alpha_t = alpha * max(0.0, 1.0 - t / max(1, anneal_steps))
    bonus = (demo_mask.bool() & correct).to(rewards.dtype) * alpha_t
    return rewards + bonus, {"step": t + 1}


@register(
    "reward",
    "otc_tool",
    paper="Wang et al. 2025, Acting Less is Reasoning More: Teaching Model to Act Efficiently (OTC), arXiv:2504.14870",
    tag="PPO form checked: secondary; GRPO form: memory; c and α: ours",
)
def otc_tool(
    rewards: torch.Tensor,
    *,
    group_ids: torch.Tensor,
    correct: torch.Tensor,
    reward_components: torch.Tensor,
    calls_index: int = 1,
    form: str = "grpo",
    c: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """OTC's tool-efficiency reward (Optimal Tool Calls, arXiv:2504.14870): R = α·r_tool·r, with r the incoming
    (correctness) reward and m the reply's tool calls (the reward function at `calls_index`).

    - `form="ppo"`: r_tool = cos(m·π/(2m + c)) (1 with no call, towards 0 as calls grow).
    - `form="grpo"`: n = the fewest calls among the group's correct replies; f(m, n) = 0 if m = n = 0, m if n = 0,
      2nm/(m + n) otherwise; r_tool = 1 if f = n = 0, cos(m·π/(2m + c)) if n = 0, sin(f·π/(2n)) otherwise (1 at
      m = n, less for more or fewer calls). A group with no correct reply keeps r_tool = 1 (its R is 0 anyway when r
      is a 0/1 correctness).

    Args:
        rewards: [N] the correctness reward r.
        group_ids: [N].
        correct: [N] bool.
        reward_components: [N, K] (tool calls per reply at `calls_index`).
        calls_index: the column of the tool-call count.
        form: "grpo" or "ppo".
        c: the PPO form's smoothing constant.
        alpha: α.

    Returns:
        [N] shaped rewards.
    """
    if form not in ("grpo", "ppo"):
        raise ValueError(f"otc_tool: form must be 'grpo' or 'ppo', got {form!r}")
    m = torch.nan_to_num(reward_column(reward_components, calls_index, "otc_tool", "the tool-call count"), 0.0).double()
    decay = torch.cos(m * math.pi / (2 * m + c))
    if form == "ppo":
        return alpha * decay.to(rewards.dtype) * rewards
    fewest = group_extreme(torch.where(correct, m, math.inf), group_ids, "amin")
    n = torch.where(torch.isinf(fewest), torch.nan, fewest)
    f = torch.where(n == 0, m, 2 * n * m / (m + n).clamp(min=1e-12))
    f = torch.where((m == 0) & (n == 0), 0.0, f)
    tool = torch.where(n == 0, torch.where(f == 0, 1.0, decay), torch.sin(f * math.pi / (2 * n)))
    tool = torch.where(torch.isnan(n), 1.0, tool)
    return alpha * tool.to(rewards.dtype) * rewards


@register(
    "reward",
    "soft_multichoice",
    paper="Dang et al. 2025, Reinforcing Video Reasoning with Focused Thinking (TW-GRPO), arXiv:2505.24718, soft "
    "multi-choice reward (seeds_000_001.md 001-45)",
    tag="reconstructed",
)
def soft_multichoice(chosen: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """TW-GRPO's soft multiple-choice reward (arXiv:2505.24718; seeds_000_001.md 001-45), reconstructed.

    0 when any wrong option is chosen, else (#right options chosen)/(#right options). The rule behind the reward
    function `soft_multichoice`.

    Args:
        chosen: [N, C] bool, the options each reply chose.
        key: [N, C] bool, the right options.

    Returns:
        [N] rewards in [0, 1].
    """
    wrong = (chosen & ~key).any(dim=1)
    share = (chosen & key).sum(1).double() / key.sum(1).clamp(min=1).double()
    return torch.where(wrong, 0.0, share)


@register(
    "reward",
    "judge_expected_score",
    paper="Li et al. 2025, Uniworld-V2: Reinforce Image Editing with Diffusion Negative-aware Finetuning and MLLM "
    "Implicit Feedback (Edit-R1), arXiv:2510.16888 (seeds_002.md 002-27)",
    tag="reconstructed",
)
def judge_expected_score(score_logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Expected judge score (Edit-R1, arXiv:2510.16888; seeds_002.md 002-27), reconstructed.

    r = Σ_k s_k·softmax(z)_k over the judge's next-token logits z restricted to the score tokens (e.g. "0"…"9", or
    "no"/"yes" with s = (0, 1): P(yes)). The rule behind the reward function `judge`.

    Args:
        score_logits: [N, K] the judge's logits of the K score tokens.
        scores: [K] the score each token stands for.

    Returns:
        [N] expected scores.
    """
    return torch.softmax(score_logits.double(), dim=-1) @ scores.double()


@register(
    "reward",
    "reseek_judge",
    paper="ReSeek, a self-correcting search agent with a JUDGE action (TencentBAC 2025, "
    "github.com/TencentBAC/ReSeek; ALGORITHMS.md §9)",
    tag="checked: official code (the regex-reference variant's magnitudes and reference judgement)",
)
def reseek_judge(
    rewards: torch.Tensor,
    *,
    turn_info: Sequence[Sequence[dict]],
    right: float = 0.3,
    false_yes: float = -0.6,
    false_no: float = -0.3,
    answered_only: bool = True,
) -> torch.Tensor:
    """ReSeek's judge reward (https://github.com/TencentBAC/ReSeek), added to the answer reward.

    r ← r + Σ_t R_judge(j_t, ĵ_t) over the trajectory's judgements: R_judge = `right` when the agent's judgement j_t
    of a search result agrees with the reference ĵ_t, `false_yes` when it calls a useless result useful, `false_no`
    when it calls a useful one useless. The defaults and the reference (the result holds the gold answer:
    envs.builtin.SearchEnv with `judge`) are the official code's regex variant; its release scores the reference with
    a reranker instead, and a "yes" in an episode whose answer is right always counts as right there (not here). The
    paper states only the sign: ± for agreement. As in the official code, only a trajectory that ends in an answer
    (a step's `info["answered"]`, envs.ToolEnv) earns judge rewards (`answered_only`): without that, GRPO on the
    default model learned to search and judge until the turns ran out (measured 2026-12-03: over 12 steps the
    shaped reward rose from 0.00 to 0.26 and judge agreement from 0.38 to 0.87, the answer reward stayed at 0.00-0.03).
    A turn without a judgement adds nothing; NaN stays NaN.

    Args:
        rewards: [N] the trajectories' rewards (the environment's answer reward).
        turn_info: per trajectory, each environment step's `info`; a judged step's holds `judgement` = {said,
            reference} (bools: the agent and the reference call the result useful).
        right, false_yes, false_no: R_judge of an agreeing judgement and of the two disagreements.
        answered_only: judge rewards only for trajectories with an answered step.

    Returns:
        [N] shaped rewards.
    """

    def judge_reward(j: dict) -> float:
        return right if j["said"] == j["reference"] else false_yes if j["said"] else false_no

    bonus = [sum(judge_reward(i["judgement"]) for i in steps if i.get("judgement"))
             if not answered_only or any(i.get("answered") for i in steps) else 0.0
             for steps in turn_info]  # fmt: skip
    return rewards + torch.tensor(bonus, dtype=rewards.dtype, device=rewards.device)
