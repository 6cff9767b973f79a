"""Rollout samplers (ALGORITHMS.md §6): rules that decide which sampled groups a step trains on.

Signature of a group filter: `fn(rewards [N], group_ids [N], **params) -> keep [N] bool`, constant within each group
(a group is kept or dropped whole). The trainer's collect stage calls it on every generated batch and generates
more prompts until the step's batch is full (or its generation limit is reached), so the batch size is exact.
"""

from __future__ import annotations

import torch

from unipo.algos.registry import register


@register(
    "sampler",
    "dynamic_sampling",
    paper="Yu et al. 2025, DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476",
    tag="checked: verl docs (filter_groups)",
)
def dynamic_sampling(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, max_gen_batches: int = 10, min_std: float = 0.0
) -> torch.Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476, §3.2, Eq. 11: 0 < |{correct}| < G).

    keep_i = std_{g(i)}(r) > min_std: a group whose rewards are all equal has zero group-relative advantage and no
    gradient, so it is dropped and more prompts are generated until the batch holds `train.prompts_per_step` kept
    groups (verl `filter_groups`; the metric is the reward). NaN rewards (unscored) are left out of the spread.

    Args:
        rewards: [N] rewards of the step's completions.
        group_ids: [N] prompt index of each completion.
        max_gen_batches: generation rounds per step at most (verl `max_num_gen_batches`, default 10; <= 0: no
            limit), read by the collect stage; when it is reached the step trains on the groups kept so far.
        min_std: keep a group only when its reward std exceeds this (0: any spread).

    Returns:
        [N] bool, True for completions of kept groups.
    """
    count, std = _group_spread(rewards, group_ids)
    return ((count > 1) & (std > min_std))[group_ids]


def _group_spread(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([G] scored completions, [G] population std of their rewards) of each group; NaN rewards are left out."""
    valid = ~torch.isnan(rewards)
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    count = torch.zeros(g, dtype=rewards.dtype).index_add_(0, group_ids, valid.to(rewards.dtype))
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = torch.zeros(g, dtype=rewards.dtype).index_add_(0, group_ids, r) / count.clamp(min=1)
    dev = torch.where(valid, (rewards - mean[group_ids]) ** 2, torch.zeros_like(rewards))
    var = torch.zeros(g, dtype=rewards.dtype).index_add_(0, group_ids, dev) / count.clamp(min=1)
    return count, var.sqrt()


@register(
    "sampler",
    "low_var_group_filter",
    paper="UniWorld-V2 / Edit-R1 low-variance group filter, https://github.com/PKU-YuanGroup/UniWorld-V2",
    tag="reconstructed (ALGORITHMS.md §6.1: drop groups whose reward std is below tau); tau and the population std: "
    "ours",
)
def low_var_group_filter(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, min_std: float = 0.05, max_gen_batches: int = 1
) -> torch.Tensor:
    """Edit-R1's low-variance group filter (UniWorld-V2, https://github.com/PKU-YuanGroup/UniWorld-V2).

    keep_q = std_q(r) ≥ τ (population std over the scored completions of prompt q): when the reward comes from a noisy
    judge, a group whose scores barely differ carries mostly noise in its normalised advantages, so it is dropped.
    Unlike `dynamic_sampling` the step trains on the groups that survive (no regeneration by default), so its batch
    may shrink.

    Args:
        rewards: [N] rewards (NaN: unscored, left out of the std).
        group_ids: [N] prompt index of each completion.
        min_std: τ, the smallest reward std a kept group has [ours: 0.05 for rewards in [0, 1]].
        max_gen_batches: generation rounds per step at most, read by the collect stage (1: no regeneration; more:
            regenerate until the batch is full, as `dynamic_sampling`).

    Returns:
        [N] bool, True for completions of kept groups.
    """
    count, std = _group_spread(rewards, group_ids)
    return ((count > 1) & (std >= min_std))[group_ids]


@register(
    "sampler",
    "d3s_sample_recon",
    paper="D³S: Dynamic Dual-Level Down-Sampling (seeds_000_001.md 000-06, seeds_003_004.md 004-06; the code was "
    "promised, not published)",
    tag="reconstructed: mechanism from the abstract (keep the rollouts that maximise Var(A), aggressive early and "
    "relaxed later); the exact extremes search and the linear schedule: ours",
)
def d3s_sample_recon(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    progress: float = 0.0,
    keep_start: float = 0.5,
    keep_end: float = 1.0,
    min_keep: int = 2,
) -> torch.Tensor:
    """Reconstruction of D³S's sample-level down-sampling: per group, the k rollouts whose advantages vary most.

    k_q = clamp(round(n_q·ρ_t), min_keep, n_q) with ρ_t = keep_start + (keep_end − keep_start)·progress (aggressive
    early, relaxed later). Var(A) over a subset equals Var(r)/s² for a group-affine advantage A = (r − b)/s, so the
    kept subset maximises the population variance of the rewards. The maximum-variance k-subset of a set of numbers
    is its j smallest plus its k − j largest for some j, so every j is tried (ties: j nearest k/2). Unscored (NaN)
    completions are dropped.

    Args:
        rewards: [N] rewards.
        group_ids: [N] prompt index of each completion.
        progress: training progress in [0, 1] (trainer input).
        keep_start: ρ at the start of training [ours].
        keep_end: ρ at the end of training (1: no down-sampling) [ours].
        min_keep: the fewest rollouts a group keeps (2: a spread to learn from).

    Returns:
        [N] bool, True for the kept completions.
    """
    rho = keep_start + (keep_end - keep_start) * float(progress)
    r, ids = rewards.detach().double().cpu(), group_ids.cpu()
    keep = torch.zeros(r.numel(), dtype=torch.bool)
    for g in torch.unique(ids).tolist():
        members = ((ids == g) & ~r.isnan()).nonzero().squeeze(-1)
        n = members.numel()
        k = min(n, max(min_keep, round(n * rho)))
        if k >= n:
            keep[members] = True
            continue
        order = members[torch.argsort(r[members], stable=True)]
        s = r[order]
        c1 = torch.cat([s.new_zeros(1), s.cumsum(0)])
        c2 = torch.cat([s.new_zeros(1), (s * s).cumsum(0)])
        j = torch.arange(k + 1)  # j from the bottom, k - j from the top
        total = c1[j] + c1[n] - c1[n - k + j]
        squares = c2[j] + c2[n] - c2[n - k + j]
        var = squares / k - (total / k) ** 2
        best = torch.isclose(var, var.max(), rtol=0, atol=1e-12)
        jb = int(j[best][torch.argmin((j[best] - k / 2).abs())])
        keep[order[:jb]] = True
        keep[order[n - (k - jb) :]] = True
    return keep.to(group_ids.device)


def _solved_per_group(rewards: torch.Tensor, group_ids: torch.Tensor, solved_above: float) -> torch.Tensor:
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    solved = (~torch.isnan(rewards) & (rewards > solved_above)).to(torch.long)
    return torch.zeros(g, dtype=torch.long, device=rewards.device).index_add_(0, group_ids, solved)


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
    return (_solved_per_group(rewards, group_ids, solved_above) <= switch_gate)[group_ids]


@register(
    "sampler",
    "red_drop",
    paper="Yao et al. 2025, Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (REC, RED-Drop), "
    "arXiv:2509.24203",
    tag="checked: ALGORITHMS.md §6.1 from Trinity-RFT; positives as r > mean (ties kept): ours",
)
def red_drop(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """RED-Drop (Yao et al. 2025, arXiv:2509.24203): balance each group by dropping random negatives.

    In a group with more negatives (r_i < mean_g r) than positives (r_i > mean_g r), keep a uniformly random subset of
    #pos negatives and drop the rest, so #neg ≤ #pos in every group; the advantage stage then recomputes the group
    statistics on the kept completions (unequal groups). Completions at the mean and NaN (unscored) ones are kept.

    Args:
        rewards: [N] rewards.
        group_ids: [N] prompt index of each completion.
        generator: the trainer's random generator (which negatives are dropped).

    Returns:
        [N] bool, True for the completions kept.
    """
    valid = ~torch.isnan(rewards)
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    zeros = torch.zeros(g, dtype=rewards.dtype)
    count = zeros.index_add(0, group_ids, valid.to(rewards.dtype))
    mean = zeros.index_add(0, group_ids, torch.where(valid, rewards, 0.0)) / count.clamp(min=1)
    neg = valid & (rewards < mean[group_ids])
    pos = valid & (rewards > mean[group_ids])
    n_pos = torch.zeros(g, dtype=torch.long).index_add(0, group_ids, pos.long())
    # rank the negatives of each group in a random order; keep the first #pos of them
    noise = torch.rand(rewards.shape, generator=generator)
    order = torch.argsort(torch.where(neg, noise, 2.0) + 3.0 * group_ids.to(noise.dtype))  # by group, negatives first
    rank = torch.empty_like(order)
    start = torch.zeros(g, dtype=torch.long)
    start[1:] = torch.bincount(group_ids, minlength=g).cumsum(0)[:-1]
    rank[order] = torch.arange(rewards.numel()) - start[group_ids[order]]
    return ~neg | (rank < n_pos[group_ids])


def _unsolved_groups(first: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[N] True for the completions of groups where no completion scores > 0 and at least one is scored."""
    g = int(group_ids.max()) + 1 if group_ids.numel() else 0
    scored = torch.zeros(g, dtype=torch.long).index_add_(0, group_ids.cpu(), (~first.isnan()).long().cpu())
    solved = _solved_per_group(first.cpu(), group_ids.cpu(), 0.0)
    return ((solved == 0) & (scored > 0))[group_ids.cpu()].to(group_ids.device)


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
    return _unsolved_groups(first, group_ids)


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
    wrong = _unsolved_groups(first, group_ids).cpu()
    r = ratio_low + (ratio_high - ratio_low) * torch.rand(group_ids.shape, generator=generator)
    ids = group_ids.cpu()
    by_r = torch.argsort(r)
    by_r = by_r[torch.argsort(ids[by_r], stable=True)]  # by group, then by r
    slots = torch.argsort(ids, stable=True)  # each group's completions in their order
    sorted_r = torch.empty_like(r)
    sorted_r[slots] = r[by_r]
    return torch.where(wrong, sorted_r, torch.zeros_like(r))


def knapsack_value(n: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Knapsack RL's value of giving N rollouts to a prompt of pass rate p: (1 − p^N − (1−p)^N)·p(1−p)² (the chance
    that the group has both outcomes, times the information gain of one gradient at p); Value(N, 0) = Value(N, 1) = 0.
    """
    n, p = n.double(), p.double()
    return (1 - p**n - (1 - p) ** n) * p * (1 - p) ** 2


@register(
    "sampler",
    "knapsack_rl",
    paper="Li et al. 2025, Knapsack RL: Unlocking Exploration of LLMs via Optimizing Budget Allocation, "
    "arXiv:2509.25849",
    tag="checked: secondary summary + abstract (value and DP); the prior for unseen prompts and n_min: ours",
    facts={"budget"},
)
def knapsack_rl(
    pass_rates: torch.Tensor, *, total: int = 0, n_min: int = 2, n_max: int = 0, prior: float = 0.5
) -> torch.Tensor:
    """Knapsack RL budgets (Li et al. 2025, arXiv:2509.25849): per-prompt rollout counts by dynamic programming.

    max Σ_q Value(N_q, p̂_q) s.t. Σ_q N_q = N_total, n_min ≤ N_q ≤ n_max, with Value(N, p) = (1 − p^N − (1−p)^N)·p(1−p)²
    (`knapsack_value`). p̂_q is the prompt's pass rate when last sampled (the collect stage keeps them, checkpointed;
    an unseen prompt gets `prior` [ours]). Ties (e.g. prompts with p̂ ∈ {0, 1}, whose value is 0 for every N) go to the
    more even split.

    Args:
        pass_rates: [P] estimated pass rates p̂_q in [0, 1].
        total: N_total (0: P × `rollout.group_size`, the uniform split's budget; set by the collect stage).
        n_min: the fewest rollouts a prompt gets (2: a group baseline needs two) [ours; the paper's is unknown].
        n_max: the most a prompt gets (0: as many as the budget allows; the paper observed up to 93).
        prior: p̂ of a prompt not seen yet, read by the collect stage [ours].

    Returns:
        [P] long budgets N_q, summing to `total`.
    """
    p = pass_rates.double().clamp(0, 1)
    num = p.numel()
    hi = total - (num - 1) * n_min if n_max <= 0 else n_max
    if num * n_min > total or num * hi < total:
        raise ValueError(f"knapsack_rl: {num} prompts cannot share {total} rollouts with {n_min} <= N <= {hi}")
    counts = torch.arange(n_min, hi + 1)
    # value of each (prompt, count) with a tiny convex penalty that breaks ties toward even splits
    gain = knapsack_value(counts[None, :], p[:, None]) - 1e-12 * counts[None, :].double() ** 2
    budgets = torch.arange(total + 1)
    before = budgets[:, None] - counts[None, :]  # (budget b, count k) -> the budget left for the earlier prompts
    best = torch.full((num + 1, total + 1), float("-inf"), dtype=torch.float64)
    best[0, 0] = 0.0
    choice = torch.zeros((num + 1, total + 1), dtype=torch.long)
    for q in range(1, num + 1):  # best[q, b] = max_k best[q-1, b-k] + gain(q, k)
        cand = torch.where(before >= 0, best[q - 1, before.clamp(min=0)], float("-inf")) + gain[q - 1][None, :]
        best[q], j = cand.max(1)
        choice[q] = counts[j]
    out, b = torch.zeros(num, dtype=torch.long), total
    for q in range(num, 0, -1):
        out[q - 1] = choice[q, b]
        b -= int(choice[q, b])
    return out


@register(
    "sampler",
    "arpo_gui_replay",
    paper="Lu et al. 2025, ARPO: End-to-End Policy Optimization for GUI Agents with Experience Replay, "
    "arXiv:2505.16282",
    tag="memory (ALGORITHMS.md §6.3: one stored success replaces one rollout of an all-zero group); the success "
    "test and which rollout is replaced: ours",
    facts={"replay"},
)
def arpo_gui_replay(
    rewards: torch.Tensor, group_ids: torch.Tensor, stored: torch.Tensor, *, success_above: float = 0.0
) -> torch.Tensor:
    """ARPO's success replay (Lu et al. 2025, arXiv:2505.16282): a group whose rollouts all fail gets one of its task's
    stored successes in place of its last rollout, so the group has a reward spread to learn from.

    fail_q = max_i r_i ≤ `success_above` over the scored rollouts of prompt q; replace the last rollout of q when
    fail_q and a success of q is stored. The collect stage keeps the buffer (the latest success of each prompt, with
    its behaviour log-probs, checkpointed) and adds every new success after the replacement.

    Args:
        rewards: [N] the first reward function's scores (NaN: unscored).
        group_ids: [N] prompt index of each completion.
        stored: [P] bool, a success of prompt q is in the buffer.
        success_above: a rollout succeeds when its reward exceeds this (0: any positive reward).

    Returns:
        [N] bool, True for the rollouts to replace (at most one per group).
    """
    fail = _unsolved_groups(rewards - success_above, group_ids)
    return fail & _last_of_group(group_ids) & stored.to(group_ids.device)[group_ids]


def _last_of_group(group_ids: torch.Tensor) -> torch.Tensor:
    """[N] True for the last completion (in batch order) of each group."""
    n = group_ids.numel()
    g = int(group_ids.max()) + 1 if n else 0
    position = torch.arange(n, device=group_ids.device)
    last = torch.full((g,), -1, dtype=torch.long, device=group_ids.device)
    return position == last.scatter_reduce(0, group_ids, position, "amax")[group_ids]


PF_BATCH_METHODS = ("pow", "max_min", "max_random")
PF_PROMPT_METHODS = ("bon", "br", "bw")


@register(
    "sampler",
    "pf_ppo",
    paper="Shen and Zhang 2024, Policy Filtration in RLHF to Fine-Tune LLM for Code Generation (PF-PPO), "
    "arXiv:2409.06957",
    tag="checked: verl compute_pf_ppo_reweight_data (scope batch); paper's per-prompt subsets (scope prompt): memory",
    facts={"resample"},
)
def pf_ppo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    scope: str = "batch",
    method: str = "pow",
    weight_pow: float = 2.0,
) -> torch.Tensor:
    """Policy filtration (Shen and Zhang 2024, arXiv:2409.06957): train on the samples whose reward is most reliable.

    scope = "batch" (verl `use_pf_ppo`): resample N of the N samples with replacement, with weights w_i + 1e-8 where
    w_i = |r_i|^p (`pow`), w_i = 1[r_i ∈ {max r, min r}] (`max_min`) or w_i = 0.4 for the batch max, 0.1 otherwise
    (`max_random`). scope = "prompt" (the paper): per prompt keep the best only (`bon`), the best and one random other
    (`br`) or the best and the worst (`bw`). Unscored samples (NaN) get weight 0 (+1e-8) and are never "best".
    verl resamples after computing the advantages; the collect stage does it before, so advantage whitening over the
    batch sees the resampled batch [ours].

    Args:
        rewards: [N] rewards.
        group_ids: [N] prompt index of each completion.
        generator: the trainer's random generator.
        scope: "batch" (verl) or "prompt" (the paper).
        method: batch: "pow" (verl default), "max_min", "max_random"; prompt: "bon", "br", "bw".
        weight_pow: p of `pow` (verl default 2).

    Returns:
        [N] long, how many times each sample enters the batch (summing to N for scope "batch").
    """
    valid = ~rewards.isnan()
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    if scope == "batch":
        if method not in PF_BATCH_METHODS:
            raise ValueError(f"pf_ppo: method {method!r} with scope 'batch'; expected one of {PF_BATCH_METHODS}")
        hi = r[valid].max() if bool(valid.any()) else r.new_tensor(0.0)
        lo = r[valid].min() if bool(valid.any()) else r.new_tensor(0.0)
        if method == "pow":
            w = r.abs() ** weight_pow
        elif method == "max_min":
            w = ((r == hi) | (r == lo)).to(r.dtype)
        else:
            w = torch.where(r == hi, 0.4, 0.1).to(r.dtype)
        w = torch.where(valid, w, torch.zeros_like(w)) + 1e-8
        idx = torch.multinomial(w.cpu().double(), r.numel(), replacement=True, generator=generator)
        return torch.bincount(idx, minlength=r.numel()).to(group_ids.device)
    if scope != "prompt" or method not in PF_PROMPT_METHODS:
        raise ValueError(f"pf_ppo: scope {scope!r}, method {method!r}; expected scope 'batch' with one of "
                         f"{PF_BATCH_METHODS} or scope 'prompt' with one of {PF_PROMPT_METHODS}")  # fmt: skip
    keep = torch.zeros(r.numel(), dtype=torch.long)
    noise = torch.rand(r.shape, generator=generator)
    ids = group_ids.cpu()
    for g in torch.unique(ids).tolist():
        members = ((ids == g) & valid.cpu()).nonzero().squeeze(-1)
        if members.numel() == 0:
            continue
        scores = r.cpu()[members]
        best = members[int(torch.argmax(scores))]
        keep[best] = 1
        others = members[members != best]
        if method == "bw" and others.numel():
            keep[others[int(torch.argmin(r.cpu()[others]))]] = 1
        elif method == "br" and others.numel():
            keep[others[int(torch.argmax(noise[others]))]] = 1
    return keep.to(group_ids.device)


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
    chosen = _last_of_group(group_ids)
    if when == "unsolved":
        chosen &= _unsolved_groups(rewards if reward_components is None else reward_components[:, 0], group_ids)
    return chosen


@register(
    "sampler",
    "aepo",
    paper="Wang et al. 2025, Arbitrary Entropy Policy Optimization: Entropy Is Controllable in Reinforcement "
    "Fine-tuning (AEPO), arXiv:2510.08141",
    tag="checked: official code ray_trainer.py (AEPO branch) and config (H* 0.5, T 1.2 / 0.8, 60 samples, A > 0.05)",
    facts={"entropy_switch"},
)
def aepo(
    advantages: torch.Tensor,
    last_entropy: float,
    *,
    entropy_target: float = 0.5,
    temperature_high: float = 1.2,
    temperature_low: float = 0.8,
    prompt_frac: float = 0.25,
    max_samples: int = 60,
    adv_threshold: float = 0.05,
) -> torch.Tensor:
    """AEPO's temperature-switched REINFORCE samples (Wang et al. 2025, arXiv:2510.08141; official `ray_trainer.py`).

    After the step's advantages are computed, the first `prompt_frac` of its prompts are sampled again at temperature
    T = T_high if the last step's policy entropy H ≤ H* (`entropy_target`), else T_low; their advantages are computed
    like the batch's, the samples with A > 0.05 are kept with A := 1 (a REINFORCE term toward the hotter or colder
    distribution), and the first m = min(60, #kept) of them (m // 2 when H > H*) replace the first m samples of the
    batch, which keeps its own advantages. The entropy before the first step is 0 (so the first step samples hot).
    This function keeps the samples; the collect stage picks T from the same hyperparameters and swaps them in.

    Args:
        advantages: [M] the resampled completions' advantages (the first token's, as the official code reads).
        last_entropy: H, the mean token entropy of the last step's update.
        entropy_target: H* (official `entropy_base`, 0.5).
        temperature_high: T when H ≤ H* (official 1.2), read by the collect stage.
        temperature_low: T when H > H* (official 0.8), read by the collect stage.
        prompt_frac: the fraction of the step's prompts sampled again (official 1/4; at least one prompt), read by
            the collect stage.
        max_samples: at most this many samples replace the batch's first ones (official `reinforce_sample_num`, 60).
        adv_threshold: a resampled completion is kept when its advantage exceeds this (official 0.05).

    Returns:
        [M] bool, True for the resampled completions that enter the batch (the first m of those above the threshold).
    """
    above = advantages > adv_threshold
    m = min(max_samples, int(above.sum()))
    if last_entropy > entropy_target:
        m //= 2
    return above & (above.long().cumsum(0) <= m)


def aepo_temperature(last_entropy: float, params: dict) -> float:
    """AEPO's sampling temperature for the extra samples: T_high when the last entropy is at most H*, else T_low."""
    hot = last_entropy <= params["entropy_target"]
    return params["temperature_high"] if hot else params["temperature_low"]


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
    return _unsolved_groups(first, group_ids)


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
