"""Hints, demonstrations, roll-ins, drafts and ground truth (ALGORITHMS.md §6.3): samplers that add guided
samples to a group or regenerate it with guidance."""

from __future__ import annotations

import torch

from unipo.algos.registry import register, warn_reconstruction
from unipo.algos.samplers._common import last_of_group, solved_per_group, unsolved_groups


@register(
    "sampler",
    "hpt",
    paper="Lv et al. 2025, Towards a Unified View of Large Language Model Post-Training (UPGE / HPT), arXiv:2509.04419",
    tag="checked: official code select_on_off_ada_balance (per-prompt switch); the solved threshold: ours",
    facts={"demonstrations"},
)
def hpt(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, switch_gate: int = 0, solved_above: float = 0.0
) -> torch.Tensor:
    """HPT's per-prompt switch between RL and SFT (Lv et al. 2025, arXiv:2509.04419; official `mix_trainer.py`).

    switch_q = #{i ∈ q: r_i > solved_above} ≤ switch_gate: a prompt the policy (almost) never solves drops its
    rollouts and trains on the dataset's demonstration with an SFT loss (pair with the `sft_nll` regularizer);
    the other prompts train with RL on their rollouts.

    Args:
        rewards: [N] rewards (NaN: unscored, not solved).
        group_ids: [N] prompt index of each completion.
        switch_gate: a prompt switches to SFT when at most this many of its rollouts are solved (official: 0).
        solved_above: a rollout counts as solved when its reward exceeds this (0: any positive reward) [ours].

    Returns:
        [N] bool, True for the completions of prompts that switch to their demonstration (constant per group).
    """
    return (solved_per_group(rewards, group_ids, solved_above) <= switch_gate)[group_ids]


@register(
    "sampler",
    "ghpo",
    paper="Liu et al. 2025, GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning, "
    "arXiv:2507.10628",
    tag="checked: official code ghpo_trainer.py (hint text, 25/50/75% character ladder, accuracy <= 0)",
    facts={"hints"},
)
def ghpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    reward_components: torch.Tensor | None = None,
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75),
    start_step: int = 0,
) -> torch.Tensor:
    """GHPO's difficulty-aware hints (Liu et al. 2025, arXiv:2507.10628; official `ghpo_trainer.py`).

    hint_q = max_i acc_i ≤ 0 over prompt q's G rollouts (acc: the first reward function, as the official
    `rewards_per_func[:, 0]`): such a group is regenerated on the prompt plus "The following text is the beginning
    part of the answer, which you can refer to for solving the problem:" and the first round(f·|s|) characters of the
    reference solution s, for f = 25%, then 50%, then 75% while the group still fails; the GRPO loss is computed on the
    hint-conditioned completions (their prompt includes the hint). A group with no scored completion is not hinted.

    Args:
        rewards: [N] combined rewards (unused: the rule reads the accuracy column).
        group_ids: [N] prompt index of each completion.
        reward_components: [N, K] each reward function's score; column 0 is the accuracy.
        fractions: the ladder of solution fractions, read by the collect stage (official 0.25, 0.5, 0.75).
        start_step: no hints before this step, read by the collect stage (official `start_hint_step`, 0).

    Returns:
        [N] bool, True for the completions of groups to regenerate with a hint (constant per group).
    """
    first = rewards if reward_components is None else reward_components[:, 0]
    return unsolved_groups(first, group_ids)


@register(
    "sampler",
    "dr_po",
    paper="Chang et al. 2024, Dataset Reset Policy Optimization for RLHF, arXiv:2404.08495",
    tag="checked: official code drpo.py with TRIL RollinProcessor (uniform prefix length, mixing probability beta)",
    facts={"roll_in"},
)
def dr_po(
    ref_lengths: torch.Tensor, *, generator: torch.Generator | None = None, reset_prob: float = 1.0
) -> torch.Tensor:
    """DR-PO dataset resets (Chang et al. 2024, arXiv:2404.08495; official `drpo.py`, TRIL `RollinProcessor`).

    With probability β (`reset_prob`, official 1.0) a rollout restarts from a state of the offline data: h ~ U{1, …,
    L−1} tokens of the reference response y (L = |y|; no reset when L < 2) are forced, then the policy continues;
    the full sequence is scored and the forced tokens get no policy gradient (m = 0). h = 0 is a standard rollout.

    Args:
        ref_lengths: [N] long, the token count L of each completion's reference response.
        generator: the trainer's random generator.
        reset_prob: β, the probability that a rollout is reset into the data (official default 1.0).

    Returns:
        [N] long prefix lengths h (0: no roll-in).
    """
    u = torch.rand(ref_lengths.shape, generator=generator)
    reset = torch.rand(ref_lengths.shape, generator=generator) < reset_prob
    h = 1 + (u * (ref_lengths - 1).clamp(min=0)).floor().long()  # uniform on 1 .. L-1
    return torch.where(reset & (ref_lengths >= 2), h.clamp(max=(ref_lengths - 1).clamp(min=0)), 0)


@register(
    "sampler",
    "refuel_branch",
    paper="Gao et al. 2024, Regressing the Relative Future: Efficient Policy Optimization for Multi-turn RLHF "
    "(REFUEL), arXiv:2410.04612",
    tag="checked: ALGORITHMS.md §9 (h uniform over the turns of a roll-in of π_t); for episodes of different lengths, "
    "uniform over each roll-in's own turns: ours",
    facts={"branch"},
)
def refuel_branch(turns: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """REFUEL's branch turn (Gao et al. 2024, arXiv:2410.04612, Algorithm 1): h ~ U{0, …, H_p − 1} over the H_p
    policy turns of prompt p's roll-in trajectory (H_p = 0, an episode that never started: h = 0). Two branches then
    restart at turn h, sample it afresh and finish the episode with π_t; only turn h is trained (`refuel`).

    Args:
        turns: [P] long, the number of policy turns of each roll-in.
        generator: the trainer's random generator.

    Returns:
        [P] long branch turns h (0-based).
    """
    u = torch.rand(turns.shape, generator=generator)
    return (u * turns.clamp(min=1)).floor().long().clamp(max=(turns - 1).clamp(min=0))


def _turn_start_means(values: torch.Tensor, turn_ids: torch.Tensor, window: int) -> torch.Tensor:
    """[N, K] the mean of `values` [N, T] over the first `window` tokens of each policy turn (NaN for no such turn)."""
    turns = int(turn_ids.max()) + 1 if turn_ids.numel() else 0
    out = torch.full((turn_ids.shape[0], max(turns, 1)), float("nan"))
    for k in range(turns):
        at_k = turn_ids == k
        first = at_k & (at_k.long().cumsum(1) <= window)
        count = first.sum(1)
        out[:, k] = torch.where(count > 0, (values.float() * first).sum(1) / count.clamp(min=1), float("nan"))
    return out


@register(
    "sampler",
    "arpo_branch",
    paper="Dong et al. 2025, Agentic Reinforced Policy Optimization (ARPO), arXiv:2507.19849",
    tag="memory (ALGORITHMS.md §9) and a public copy of the official rollout (initial_rollouts = M/2, beam_size 2, "
    "branch_probability 0.5, entropy_weight 0.2, restarts from the prompt while the budget lasts); ΔH relative to the "
    "first turn's entropy and branching only from the initial rollouts: ours",
    facts={"entropy_branch"},
)
def arpo_branch(
    entropy: torch.Tensor,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    budget: int,
    *,
    generator: torch.Generator | None = None,
    initial_frac: float = 0.5,
    window: int = 10,
    alpha: float = 0.5,
    beta: float = 0.2,
    beam_size: int = 2,
) -> torch.Tensor:
    """ARPO's entropy-based adaptive rollout (Dong et al. 2025, arXiv:2507.19849, §3): where to branch the initial
    trajectories of each prompt, and how many times.

    For t = 1, 2, … (the turns after a tool or environment reply, in the order a rollout reaches them) and each
    initial trajectory i with a turn t, in order: ΔH_{i,t} = (H_{i,t} − H_{i,0}) / H_{i,0}, where H_{i,t} is the
    policy's mean entropy over the first k = `window` tokens of turn t (H_{i,0}: of the first turn, the paper's
    H_initial); the
    branch probability is P = clip(α + β·ΔH_{i,t}, 0, 1), and each of `beam_size` − 1 draws u ~ U(0, 1) with u < P
    adds one branch at (i, t) while the prompt's `budget` lasts. Whatever budget is left restarts from the prompt
    (a branch at turn 0 of the prompt's first trajectory), as the official rollout does for finished samples.

    The paper normalises ΔH without saying how; dividing by the initial entropy is ours, and so is branching only
    from the initial trajectories (the official rollout lets branches branch again).

    Args:
        entropy: [N, T] the policy's entropy at each token of the N initial trajectories (at the sampling
            temperature).
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        group_ids: [N] the prompt of each trajectory (each prompt's trajectories together, in order).
        budget: branches per prompt (the group size M minus the initial trajectories).
        generator: the trainer's random generator.
        initial_frac: the share of the group size sampled as initial trajectories (read by the trainer; the official
            script: 8 of 16).
        window: k, the tokens at the start of each turn whose entropy is averaged (the paper's k; 10 is ours).
        alpha: α, the base branch probability (official `branch_probability` 0.5).
        beta: β, the weight of the entropy change (official `entropy_weight` 0.2).
        beam_size: each branch point draws `beam_size` − 1 times (official 2).

    Returns:
        [N, K] long, the number of branches at each (trajectory, turn) (K: the most turns of a trajectory); per
        prompt they sum to `budget`.
    """
    turn_entropy = _turn_start_means(entropy, turn_ids, window)
    n, k = turn_entropy.shape
    out = torch.zeros(n, k, dtype=torch.long)
    left = {g: budget for g in group_ids.tolist()}
    first = turn_entropy[:, 0]
    delta = (turn_entropy - first[:, None]) / first[:, None].clamp(min=1e-8)
    p = (alpha + beta * delta).clamp(0.0, 1.0)
    for t in range(1, k):
        for i in range(n):
            g = int(group_ids[i])
            if turn_entropy[i, t].isnan():
                continue
            for _ in range(beam_size - 1):
                if left[g] > 0 and float(torch.rand((), generator=generator)) < float(p[i, t]):
                    out[i, t] += 1
                    left[g] -= 1
    for g, rest in left.items():
        out[int((group_ids == g).nonzero()[0]), 0] += rest
    return out


@register(
    "sampler",
    "igpo_inpaint",
    paper="Zhao et al. 2025, Inpainting-Guided Policy Optimization for Diffusion LLMs (IGPO), arXiv:2509.10396",
    tag="checked: ALGORITHMS.md §6.3 from the official code (all-wrong trigger, r ~ U[0.2, 0.6] sorted, at most 4 "
    "replaced); the autoregressive form (the inpainted span is a prefix): ours",
    facts={"inpaint"},
)
def igpo_inpaint(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    reward_components: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    ratio_low: float = 0.2,
    ratio_high: float = 0.6,
    max_replace: int = 4,
) -> torch.Tensor:
    """IGPO inpainting for an autoregressive model (Zhao et al. 2025, arXiv:2509.10396; the prefix form is ours).

    When all G rollouts of a prompt are wrong (accuracy, the first reward function, ≤ 0), each is regenerated with a
    fraction r_i ~ U[r_lo, r_hi] of the reference solution fixed (sorted within the group); a diffusion LM fixes
    spans anywhere, here the fixed span is the first ⌊r_i·L⌋ tokens. Up to `max_replace` inpainted completions that
    are correct replace wrong originals. The fixed tokens stay in the loss and are marked `hint_mask`, for the
    `igpo_hint_mask` token weight (which keeps the top 20% of them by entropy).

    Args:
        rewards: [N] combined rewards (unused: the rule reads the accuracy column).
        group_ids: [N] prompt index of each completion.
        reward_components: [N, K] each reward function's score; column 0 is the accuracy.
        generator: the trainer's random generator (the ratios).
        ratio_low: r_lo (official 0.2).
        ratio_high: r_hi (official 0.6).
        max_replace: at most this many correct inpainted completions replace wrong ones per group (official 4),
            read by the collect stage.

    Returns:
        [N] float, the fraction r_i to fix for each completion (sorted ascending within a group; 0 outside the
        all-wrong groups).
    """
    first = rewards if reward_components is None else reward_components[:, 0]
    wrong = unsolved_groups(first, group_ids).cpu()
    r = ratio_low + (ratio_high - ratio_low) * torch.rand(group_ids.shape, generator=generator)
    ids = group_ids.cpu()
    by_r = torch.argsort(r)
    by_r = by_r[torch.argsort(ids[by_r], stable=True)]  # by group, then by r
    slots = torch.argsort(ids, stable=True)  # each group's completions in their order
    sorted_r = torch.empty_like(r)
    sorted_r[slots] = r[by_r]
    return torch.where(wrong, sorted_r, torch.zeros_like(r))


@register(
    "sampler",
    "gt_in_group_recon",
    paper="ViSurf: Visual Supervised-and-Reinforcement Fine-Tuning (seeds_003_004.md 003-30) and TempSamp-R1, "
    "https://github.com/HVision-NKU/TempSamp-R1",
    tag="reconstructed: the ground truth replaces one rollout and the advantage is over the whole group (ALGORITHMS.md "
    "§6.3); ViSurf's reward-control rules are unknown; `when: unsolved` and which rollout is replaced: ours",
    facts={"ground_truth"},
)
def gt_in_group_recon(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, reward_components: torch.Tensor | None = None,
    when: str = "always",
) -> torch.Tensor:  # fmt: skip
    """Reconstruction of the ground-truth-in-group sampler (ViSurf, TempSamp-R1; ALGORITHMS.md §6.3).

    The group of prompt q becomes G − 1 on-policy rollouts plus the dataset's reference response o_GT, scored by the
    reward functions like any rollout; the advantage is computed over the whole group, so o_GT (usually the best) is
    pushed up and the worse rollouts down. o_GT is off-policy: its ratio is taken against π_θ itself (π_den = sg(π_θ),
    as in LUFFY), which the update does on its first pass (old log-probs = the detached current ones). The collect
    stage replaces the rollout this marks (the last of each chosen group; the rollouts are i.i.d., so this equals
    sampling G − 1) by o_GT.

    Args:
        rewards: [N] combined rewards.
        group_ids: [N] prompt index of each completion.
        reward_components: [N, K] each reward function's score; column 0 is the accuracy (for `when: unsolved`).
        when: "always" (ViSurf, TempSamp-R1: every group) or "unsolved" (only groups whose accuracy is ≤ 0
            everywhere, as HPT and LUFFY-style mixing do) [ours].

    Returns:
        [N] bool, True for the rollout to replace by the ground truth (at most one per group).
    """
    if when not in ("always", "unsolved"):
        raise ValueError(f"gt_in_group_recon: when={when!r}; expected 'always' or 'unsolved'")
    chosen = last_of_group(group_ids)
    if when == "unsolved":
        chosen &= unsolved_groups(rewards if reward_components is None else reward_components[:, 0], group_ids)
    return chosen


@register(
    "sampler",
    "scaf_grpo",
    paper="Zhang et al. 2025, Scaf-GRPO: Scaffolded Group Relative Policy Optimization for Enhancing LLM Reasoning, "
    "arXiv:2510.19807",
    tag="checked: official code hint_mix_grpo/ray_trainer.py (warm-up steps, all-wrong trigger, cumulative hint "
    "levels per tier, the least hint that solves, one rollout replaced with its hinted prompt); the fallback tier "
    "from the reference solution: ours",
    facts={"tiered_hints"},
)
def scaf_grpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    reward_components: torch.Tensor | None = None,
    warmup_steps: int = 50,
    tiers: tuple[str, ...] = ("knowledge_components_parts", "solution_breakdown_parts"),
    per_tier: int = 4,
) -> torch.Tensor:
    """Scaf-GRPO's scaffolded hints (Zhang et al. 2025, arXiv:2510.19807; official `hint_mix_grpo` trainer).

    After `warmup_steps` guidance-free steps, a prompt whose G rollouts are all wrong (the first reward function ≤ 0)
    is sampled once at each hint level, from the least help to the most: for each tier column of the row (official:
    knowledge components, then solution breakdown; planning is disabled there), its first 1, …, 4 parts after
    "Knowledge Hints:" / "Solution Hints:". The first rollout of the group is replaced by the successful hinted
    rollout of the lowest level (reward > 0), generated on and trained with its hinted prompt, while its advantage
    is computed in the original group (`Rollouts.groups`), so the group has one success to learn from. A row
    without tier columns gets one tier from its reference solution [ours].

    Args:
        rewards: [N] combined rewards (unused: the rule reads the accuracy column).
        group_ids: [N] prompt index of each completion.
        reward_components: [N, K] each reward function's score; column 0 is the accuracy.
        warmup_steps: no hints up to this step (official `trainer.warmup_steps`, 50), read by the collect stage.
        tiers: the row columns holding each tier's hint parts, in order, read by the collect stage.
        per_tier: cumulative levels per tier (official 4), read by the collect stage.

    Returns:
        [N] bool, True for the completions of groups to rescue with hints (constant per group).
    """
    first = rewards if reward_components is None else reward_components[:, 0]
    return unsolved_groups(first, group_ids)


@register(
    "sampler",
    "igrpo",
    paper="Hatamizadeh et al. 2026, iGRPO: Self-Feedback-Driven LLM Reasoning, arXiv:2602.09000",
    tag="checked: abstract (best-of-N draft by the training reward, GRPO on draft-conditioned refinements, matched "
    "rollout budget); the prompt template and the draft/refinement split: ours",
    facts={"drafts"},
)
def igrpo(rewards: torch.Tensor, group_ids: torch.Tensor, *, draft_frac: float = 0.5) -> torch.Tensor:
    """iGRPO's draft selection (Hatamizadeh et al. 2026, arXiv:2602.09000).

    Stage 1 samples N drafts per prompt (no gradient) and keeps d* = argmax_i r_i (the first on ties; unscored drafts
    never win); stage 2 samples G − N refinements of the prompt x ⊕ d* and runs the GRPO update on them alone, so
    the step's total rollouts equal `rollout.group_size` (the matched budget). A prompt with no scored draft is
    refined from its bare prompt.

    Args:
        rewards: [N] the drafts' rewards.
        group_ids: [N] prompt index of each draft.
        draft_frac: N / `rollout.group_size` (stage 1's share of the budget), read by the collect stage [ours: 0.5].

    Returns:
        [N] bool, True for each prompt's best draft (at most one per group).
    """
    n = group_ids.numel()
    g = int(group_ids.max()) + 1 if n else 0
    score = torch.where(rewards.isnan(), float("-inf"), rewards.double())
    best = torch.full((g,), float("-inf"), dtype=torch.float64).scatter_reduce(0, group_ids.cpu(), score.cpu(), "amax")
    top = (score.cpu() == best[group_ids.cpu()]) & ~rewards.isnan().cpu()
    position = torch.where(top, torch.arange(n), n)
    first = torch.full((g,), n, dtype=torch.long).scatter_reduce(0, group_ids.cpu(), position, "amin")
    return (torch.arange(n) == first[group_ids.cpu()]).to(group_ids.device)


_R3L = "R³L: Reflect-then-Retry Reinforcement Learning (seeds_003_004.md 003-37, github.com/shiweijiezero/R3L)"


@register("sampler", "r3l_retry_recon", paper=_R3L, tag="reconstructed", facts={"retry"})
def r3l_retry_recon(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    reward_components: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_retries: int = 2,
    cut_low: float = 0.0,
    cut_high: float = 0.5,
) -> torch.Tensor:
    """Reconstruction of R³L's reflect-then-retry (seeds_003_004.md 003-37; from the abstract: language feedback
    diagnoses a failure, generation restarts from the failure point, and the retries, off-policy, are trained with
    pivotal credit and positive amplification). Ours: which failures are retried, the feedback and the failure point.

    The first `max_retries` failed attempts of each group (the first reward function ≤ 0, in batch order) are
    retried: the collect stage appends language feedback to the prompt (the failed attempt and that it was wrong:
    `rollout.inject.R3L_FEEDBACK`), forces the attempt's first ⌊c·L⌋ tokens (L its tokens before EOS) and lets the
    policy continue; the retry joins the group and is trained as an answer to the bare prompt, the forced prefix out
    of the loss, paired with its attempt for `r3l_pivot_recon`. Without a model that can point at its own mistake, the
    failure point c is drawn uniformly from [cut_low, cut_high].

    Args:
        rewards: [N] combined rewards (unused: the rule reads the accuracy column).
        group_ids: [N] prompt index of each completion.
        reward_components: [N, K] each reward function's score; column 0 is the accuracy.
        generator: the trainer's random generator (the failure points).
        max_retries: at most this many retries per group [ours: 2].
        cut_low: the least failure point, as a fraction of the attempt [ours: 0].
        cut_high: the greatest [ours: 0.5].

    Returns:
        [N] float: the failure point c ∈ [cut_low, cut_high] of each attempt to retry, NaN for the others.
    """
    warn_reconstruction("r3l_retry_recon", _R3L)
    if not 0.0 <= cut_low <= cut_high < 1.0:
        raise ValueError(f"r3l_retry_recon: need 0 <= cut_low <= cut_high < 1; got {cut_low}, {cut_high}")
    first = (rewards if reward_components is None else reward_components[:, 0]).cpu()
    ids = group_ids.cpu()
    failed = torch.nan_to_num(first, nan=0.0) <= 0
    earlier = (ids[None, :] == ids[:, None]) & failed[None, :] & torch.ones(len(ids), len(ids)).tril(-1).bool()
    chosen = failed & (earlier.sum(1) < max_retries)  # the group's first `max_retries` failures
    cut = cut_low + (cut_high - cut_low) * torch.rand(ids.shape, generator=generator)
    return torch.where(chosen, cut, float("nan")).to(group_ids.device)
