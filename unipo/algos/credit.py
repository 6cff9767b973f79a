"""Credit assignment over the turns of multi-turn trajectories (ALGORITHMS.md §9; kind `credit`).

A credit assigner runs after the advantage stage: it takes each trajectory's episode advantage A_i (from any §1
estimator on the trajectory reward) and the turn structure of the batch, and writes a per-token advantage Â_{i,t} on
the policy's tokens only (0 on the environment's tokens, whose `turn_ids` are -1).

Turn data (rollout/multiturn.py): `turn_ids` [N, T] numbers each token's policy turn (-1 elsewhere); `turn_rewards[i]`
lists the rewards the environment gave after each of trajectory i's turns; `state_keys[i][k]` is the canonical state
turn k acted in (the environment's `state_key`, else the text of its last reply; "" for the first prompt).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch

from unipo.algos.policy_losses._common import group_mean
from unipo.algos.registry import register, warn_reconstruction


def _broadcast(per_turn: list[list[float]], turn_ids: torch.Tensor) -> torch.Tensor:
    """[N, T] values: token t of trajectory i gets per_turn[i][turn_ids[i, t]], 0 where turn_ids is -1."""
    width = max((len(v) for v in per_turn), default=0) + 1
    table = torch.zeros(len(per_turn), width, dtype=torch.float32, device=turn_ids.device)
    for i, values in enumerate(per_turn):
        if values:
            table[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
    idx = turn_ids.clamp(min=0, max=width - 1)
    return table.gather(1, idx) * (turn_ids >= 0)


@register(
    "credit",
    "traj_broadcast",
    paper="Trajectory-level GRPO over agent rollouts, as TRL's GRPOTrainer trains tool-using rollouts "
    "(https://huggingface.co/docs/trl/grpo_trainer, environment_factory and tool_mask)",
    tag="checked: TRL",
)
def traj_broadcast(advantages: torch.Tensor, *, turn_ids: torch.Tensor) -> torch.Tensor:
    """Trajectory-level credit (TRL's `tool_mask`, https://huggingface.co/docs/trl/grpo_trainer): every policy token
    of trajectory i gets its episode advantage, Â_{i,t} = A_i·1[turn_ids_{i,t} ≥ 0]; environment tokens get 0.

    Args:
        advantages: [N] episode advantages (or [N, T], read at each policy token).
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.

    Returns:
        [N, T] per-token advantages.
    """
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(turn_ids)
    return adv[:, : turn_ids.shape[1]] * (turn_ids >= 0)


def _turn_returns(turn_rewards: list[float], turns: int, gamma: float) -> list[float]:
    """R_k = Σ_{j ≥ k} γ^{j−k}·r_j for each of `turns` turns (a turn with no reward, cut by the budget: r = 0)."""
    rewards = list(turn_rewards[:turns]) + [0.0] * max(0, turns - len(turn_rewards))
    out, running = [0.0] * turns, 0.0
    for k in reversed(range(turns)):
        running = rewards[k] + gamma * running
        out[k] = running
    return out


def _centred_returns(
    members: list[tuple[int, int]], returns: list[list[float]], std_normalize: bool, eps: float, unbiased: bool
) -> list[float]:
    """Each member turn's return minus the mean over `members` ((trajectory, turn) pairs), ÷ (their std + eps) when
    `std_normalize` (Bessel-corrected when `unbiased`)."""
    values = torch.tensor([returns[i][k] for i, k in members], dtype=torch.float64)
    centred = values - values.mean()
    if std_normalize:
        centred = centred / (values.std(unbiased=unbiased) + eps)
    return centred.tolist()


@register(
    "credit",
    "gigpo",
    paper="Feng et al. 2025, Group-in-Group Policy Optimization for LLM Agent Training (GiGPO), arXiv:2505.10978",
    tag="checked: verl-agent gigpo/core_gigpo.py",
)
def gigpo(
    advantages: torch.Tensor,
    *,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    turn_rewards: Sequence[Sequence[float]],
    state_keys: Sequence[Sequence[Hashable]],
    omega: float = 1.0,
    gamma: float = 0.95,
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GiGPO (Feng et al. 2025, arXiv:2505.10978, Eq. 5–8): Â = A^E + ω·A^S on the tokens of each turn.

    A^E is the episode advantage (the advantage stage's; the paper's Eq. 3 with `mode=mean_norm` is `dr_grpo`). The
    step advantage of turn k of trajectory i: its discounted return R_{i,k} = Σ_{j≥k} γ^{j−k}·r_{i,j} (Eq. 5) minus
    the mean return of every turn, in the same prompt group, that acted in the same anchor state (`state_keys`,
    Eq. 6–7), divided by that set's standard deviation (unbiased, + eps) when `std_normalize` (verl-agent's
    `mean_std_norm`; the default `mean_norm` does not divide). A turn alone in its anchor state gets A^S = 0. Turns
    of identical trajectories get A^S = 0 (ALGORITHMS.md §13 M1).

    Differences from verl-agent, which trains each turn as a sample of its own: its episode statistics count every
    step of a trajectory (`compute_mean_std_cross_steps`), ours count each trajectory once.

    Args:
        advantages: [N] episode advantages A^E.
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        group_ids: [N] the prompt group of each trajectory.
        turn_rewards: per trajectory, the environment's reward after each turn.
        state_keys: per trajectory, the anchor state of each turn.
        omega: ω, the weight of the step advantage (paper: 1).
        gamma: γ of the step returns (verl-agent: 0.95).
        std_normalize: divide the step advantage by its anchor group's standard deviation.
        eps: added to that standard deviation.

    Returns:
        [N, T] per-token advantages.
    """
    returns = [_turn_returns(list(r), len(keys), gamma) for r, keys in zip(turn_rewards, state_keys, strict=True)]
    anchors: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for i, keys in enumerate(state_keys):
        for k, key in enumerate(keys):
            anchors[(int(group_ids[i]), _hashable(key))].append((i, k))
    step = [[0.0] * len(keys) for keys in state_keys]
    for members in anchors.values():
        if len(members) < 2:
            continue
        for (i, k), a in zip(members, _centred_returns(members, returns, std_normalize, eps, True), strict=True):
            step[i][k] = a
    return traj_broadcast(advantages, turn_ids=turn_ids) + omega * _broadcast(step, turn_ids)


@register(
    "credit",
    "hgpo",
    paper="Hierarchy-of-Groups Policy Optimization (HGPO), "
    "https://github.com/langfengQ/verl-agent/tree/master/recipe/hgpo (ALGORITHMS.md seeds 001-30; paper not checked)",
    tag="checked: a public copy of the official verl-agent code (core_hgpo.py, appears to be a fork)",
)
def hgpo(
    advantages: torch.Tensor,
    *,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    turn_rewards: Sequence[Sequence[float]],
    state_keys: Sequence[Sequence[Hashable]],
    omega: float = 1.0,
    gamma: float = 0.95,
    history: int = 2,
    alpha: float = 1.0,
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """HGPO (https://github.com/langfengQ/verl-agent/tree/master/recipe/hgpo): Â = A^E + ω·A^S over history groups.

    For turn k of trajectory i and each level l = 0..`history` with k ≥ l, its level-l group is the turns of the same
    prompt group that act in the same state and whose previous l states are the same (l = 0: GiGPO's anchor group);
    a group of one is dropped. A_l = R_{i,k} − mean of the group's discounted returns R (÷ (population std + eps) when
    `std_normalize`, the code's `mean_std_norm`). A^S = Σ_l w_l·A_l / Σ_l w_l with w_l = (l + 1)^α over the levels
    whose A_l ≠ 0 (the code skips zero advantages); A^S = 0 when there is none. With `history` = 0 it is GiGPO's step
    advantage (mean_norm).

    Args:
        advantages: [N] episode advantages A^E.
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        group_ids: [N] the prompt group of each trajectory.
        turn_rewards: per trajectory, the environment's reward after each turn.
        state_keys: per trajectory, the anchor state of each turn.
        omega: ω, the weight of the step advantage.
        gamma: γ of the step returns.
        history: K, the longest shared history (the code's default `history_length` = 2).
        alpha: α of the level weights (l + 1)^α (the code: 1).
        std_normalize: divide by the group's standard deviation (population, as the code's np.std).
        eps: added to that standard deviation.

    Returns:
        [N, T] per-token advantages.
    """
    returns = [_turn_returns(list(r), len(keys), gamma) for r, keys in zip(turn_rewards, state_keys, strict=True)]
    levels: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for i, keys in enumerate(state_keys):
        hashed = [_hashable(key) for key in keys]
        for k in range(len(keys)):
            for level in range(min(history, k) + 1):
                levels[(int(group_ids[i]), level, tuple(hashed[k - level : k + 1]))].append((i, k))
    parts: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)  # (i, k) -> [(weight, A_l)]
    for (_, level, _), members in levels.items():
        if len(members) < 2:
            continue
        for (i, k), a in zip(members, _centred_returns(members, returns, std_normalize, eps, False), strict=True):
            if a != 0:
                parts[i, k].append(((level + 1) ** alpha, a))
    step = [[0.0] * len(keys) for keys in state_keys]
    for (i, k), weighted in parts.items():
        step[i][k] = sum(w * a for w, a in weighted) / sum(w for w, _ in weighted)
    return traj_broadcast(advantages, turn_ids=turn_ids) + omega * _broadcast(step, turn_ids)


_SALT = "SALT: step-level advantages from a trajectory graph (ALGORITHMS.md seeds 001-43, 002-37; citation not checked)"


@register("credit", "salt_recon", paper=_SALT, tag="reconstructed")
def salt_recon(
    advantages: torch.Tensor,
    *,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    state_keys: Sequence[Sequence[Hashable]],
    completion_ids: torch.Tensor,
) -> torch.Tensor:
    """Reconstruction of SALT's trajectory-graph credit (ALGORITHMS.md §9): turns that act in the same state with the
    same action, in one prompt's group, are one node of a graph; every turn of a node gets the mean episode advantage
    of the trajectories that pass through it, Â_{i,t} = mean_{j ∋ node(i, k)} A_j for the tokens t of turn k. A turn
    no other trajectory shares keeps A_i, so with all actions distinct this is `traj_broadcast`.

    The action is the turn's sampled token ids (exact, no text comparison); the state is its anchor (`state_keys`).

    Args:
        advantages: [N] episode advantages A_j (any §1 estimator on the trajectory reward).
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        group_ids: [N] the prompt group of each trajectory.
        state_keys: per trajectory, the anchor state of each turn.
        completion_ids: [N, T] the trajectories' token ids.

    Returns:
        [N, T] per-token advantages.
    """
    warn_reconstruction("salt_recon", _SALT)
    if advantages.dim() != 1:
        raise ValueError(f"salt_recon: advantages must be [N] episode advantages, got {list(advantages.shape)}")
    ids, turns = completion_ids.tolist(), turn_ids.tolist()
    nodes: dict[tuple, set[int]] = defaultdict(set)
    node_of: list[list[tuple]] = []
    for i, keys in enumerate(state_keys):
        actions: dict[int, list[int]] = defaultdict(list)
        for token, turn in zip(ids[i], turns[i], strict=True):
            if turn >= 0:
                actions[turn].append(token)
        node_of.append([(int(group_ids[i]), _hashable(key), tuple(actions[k])) for k, key in enumerate(keys)])
        for node in node_of[-1]:
            nodes[node].add(i)
    adv = advantages.tolist()
    per_turn = [[sum(adv[j] for j in nodes[node]) / len(nodes[node]) for node in row] for row in node_of]
    return _broadcast(per_turn, turn_ids).to(advantages.dtype)


def _turn_sums(values: torch.Tensor, turn_ids: torch.Tensor, turns: int) -> torch.Tensor:
    """[N, turns] the sum of `values` [N, T] over each policy turn's tokens."""
    idx = turn_ids.clamp(min=0, max=turns - 1)
    kept = torch.where(turn_ids >= 0, values, torch.zeros_like(values))
    return torch.zeros(values.shape[0], turns, dtype=values.dtype, device=values.device).scatter_add(1, idx, kept)


@register(
    "credit",
    "scores",
    paper="Kumar et al. 2024, Training Language Models to Self-Correct via Reinforcement Learning (SCoRe), "
    "arXiv:2409.12917",
    tag="memory; stage shape and bonus confirmed by secondary sources (ALGORITHMS.md §9); α, β defaults ours",
    inputs=lambda p: (
        {"turn_ids", "group_ids", "turn_rewards", "progress"}
        | ({"old_logp", "ref_logp"} if p["beta_first"] > 0 or p["beta"] > 0 else set())
    ),
)
def scores(
    advantages: torch.Tensor,
    *,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    turn_rewards: Sequence[Sequence[float]],
    progress: float,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    stage1_frac: float = 0.5,
    alpha: float = 10.0,
    beta_first: float = 0.1,
    beta: float = 0.01,
) -> torch.Tensor:
    """SCoRe's two-attempt credit (Kumar et al. 2024, arXiv:2409.12917): REINFORCE returns per attempt, stage by stage.

    r(y_k) = the environment's running score after attempt k (Σ_{j≤k} turn rewards: `self_correct` gives r(y₁), then
    r(y₂) − r(y₁)); KL_k = Σ over attempt k's tokens of log π_old − log π_ref (k1, in the reward).
    Stage I (the first `stage1_frac` of training): maximise r(y₂) − β₂·KL₁, so R₂ = r(y₂) and R₁ = r(y₂) − β₂·KL₁.
    Stage II: rewards r(y₁) − β₁·KL₁ and r(y₂) + α·(r(y₂) − r(y₁)) − β₁·KL₂ (the progress bonus), R₂ = the second,
    R₁ = both. Each attempt's tokens get R_k minus the mean R_k of its prompt's group (our baseline: the group mean).
    The estimator's episode advantages are not used. A trajectory with one attempt (cut by the budget) has r(y₂) =
    r(y₁) and KL₂ = 0.

    Args:
        advantages: [N] episode advantages (unused: SCoRe's returns replace them).
        turn_ids: [N, T] each token's attempt (0 or 1), -1 on the instruction's tokens and padding.
        group_ids: [N] the prompt group of each trajectory.
        turn_rewards: per trajectory, the environment's reward after each attempt.
        progress: the share of training done (stage I while it is below `stage1_frac`).
        old_logp, ref_logp: [N, T] log π_old and log π_ref of the sampled tokens; needed when a β > 0.
        stage1_frac: the share of training spent in stage I (0: stage II only).
        alpha: α of the progress bonus (the paper: α > 1).
        beta_first: β₂, stage I's KL weight on the first attempt (stronger than β₁).
        beta: β₁, stage II's KL weight on each attempt.

    Returns:
        [N, T] per-token advantages.
    """
    n = turn_ids.shape[0]
    first = torch.tensor([float(r[0]) if len(r) else 0.0 for r in turn_rewards], dtype=torch.float64)
    second = first + torch.tensor([float(sum(r[1:2])) for r in turn_rewards], dtype=torch.float64)
    kl = torch.zeros(n, 2, dtype=torch.float64)
    if beta_first > 0 or beta > 0:
        if old_logp is None or ref_logp is None:
            raise ValueError("scores with a KL weight > 0 needs old_logp and ref_logp [N, T]")
        kl = _turn_sums((old_logp - ref_logp).double(), turn_ids, 2)
    if progress < stage1_frac:
        returns = torch.stack([second - beta_first * kl[:, 0], second], 1)
    else:
        last = second + alpha * (second - first) - beta * kl[:, 1]
        returns = torch.stack([first - beta * kl[:, 0] + last, last], 1)
    baseline = torch.stack([group_mean(returns[:, k], group_ids) for k in range(2)], 1)
    per_turn = (returns - baseline).tolist()
    return _broadcast(per_turn, turn_ids).to(advantages.dtype)


_ARPO = "Dong et al. 2025, Agentic Reinforced Policy Optimization (ARPO), arXiv:2507.19849"


@register("credit", "arpo_agentic", paper=_ARPO, tag="memory (ALGORITHMS.md §9): hard and soft attribution")
def arpo_agentic(
    advantages: torch.Tensor,
    *,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    attribution: str = "soft",
) -> torch.Tensor:
    """ARPO's advantage attribution over branched trajectories (Dong et al. 2025, arXiv:2507.19849, §3; the branches
    come from the `arpo_branch` sampler, each holding its source's tokens before the branch turn).

    `soft` (the paper's default): Â_{i,t} = A_i on every policy token, GRPO on the full sequences; a prefix that d
    trajectories share is trained d times, each copy with its own trajectory's advantage. `hard`: the tokens of turn
    k of trajectory i get the mean advantage of the trajectories of its group that hold the same tokens up to the end
    of that turn and end their turn k there too (i included), Â_{i,t} = mean_{j ∈ S(i,k)} A_j; a turn no other
    trajectory shares keeps A_i. The
    copies of a shared token carry Σ_{j∈S} A_j either way, so with a token-sum or token-mean loss at the sampling
    policy (ratio 1) both give the same gradient, as the paper argues for `soft`.

    Shared prefixes are found from the token ids and the turn ids alone.

    Args:
        advantages: [N] episode advantages A_j (any §1 estimator on the trajectory reward).
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        group_ids: [N] the prompt group of each trajectory.
        completion_ids: [N, T] the trajectories' token ids.
        attribution: "soft" or "hard".

    Returns:
        [N, T] per-token advantages.
    """
    if attribution not in ("soft", "hard"):
        raise ValueError(f"arpo_agentic: attribution must be 'soft' or 'hard', got {attribution!r}")
    if attribution == "soft":
        return traj_broadcast(advantages, turn_ids=turn_ids)
    if advantages.dim() != 1:
        raise ValueError(f"arpo_agentic: advantages must be [N] episode advantages, got {list(advantages.shape)}")
    ids, turns, adv, groups = completion_ids.tolist(), turn_ids.tolist(), advantages.tolist(), group_ids.tolist()
    ends = [{k: t + 1 for t, k in enumerate(row) if k >= 0} for row in turns]  # turn -> the end of its last token
    per_turn = []
    for i, row_ends in enumerate(ends):
        values = [0.0] * (max(row_ends, default=-1) + 1)
        for k, e in row_ends.items():
            shared = [adv[j] for j in range(len(ids)) if groups[j] == groups[i] and ends[j].get(k) == e
                      and ids[j][:e] == ids[i][:e]]  # fmt: skip
            values[k] = sum(shared) / len(shared)
        per_turn.append(values)
    return _broadcast(per_turn, turn_ids).to(advantages.dtype)


_SEEUPO = (
    "SeeUPO: sequence-level sequential-update policy optimisation (ALGORITHMS.md seeds 001-06; citation not checked)"
)


@register("credit", "seeupo_recon", paper=_SEEUPO, tag="reconstructed", facts={"turn_sequential"})
def seeupo_recon(
    advantages: torch.Tensor,
    *,
    turn_ids: torch.Tensor,
    group_ids: torch.Tensor,
    turn_rewards: Sequence[Sequence[float]],
    rewards: torch.Tensor,
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Reconstruction of SeeUPO's per-turn credit (ALGORITHMS.md §9): each turn index k is a bandit of its own, with
    a group-relative advantage over the turn-k actions of the prompt's trajectories.

    The return of turn k is undiscounted, R_{i,k} = R_i − Σ_{j<k} r_{i,j}: the trajectory's reward minus the
    environment's rewards before turn k (Σ_{j≥k} r_{i,j} when the reward is the environment's). A_{i,k} = R_{i,k} −
    mean of R_{j,k} over the group's trajectories j that reached turn k, ÷ (their std + eps) when `std_normalize`
    (GRPO's form; our default); a turn no other scored trajectory of its group reached gets 0. The estimator's episode
    advantages are not used. The trainer then updates turn by turn, the last turn first (fact `turn_sequential`),
    each pass a REINFORCE step on that turn's tokens alone (recipe `seeupo`).

    Args:
        advantages: [N] episode advantages (unused: the per-turn returns replace them).
        turn_ids: [N, T] each token's policy turn, -1 on the environment's tokens and padding.
        group_ids: [N] the prompt group of each trajectory.
        turn_rewards: per trajectory, the environment's reward after each turn.
        rewards: [N] the trajectories' rewards R_i; NaN for an unscored one, which gets 0 and is in no group.
        std_normalize: divide by the std over the turn's group (unbiased).
        eps: added to that std.

    Returns:
        [N, T] per-token advantages.
    """
    warn_reconstruction("seeupo_recon", _SEEUPO)
    turns = (turn_ids.max(1).values + 1).clamp(min=0).tolist()  # policy turns of each trajectory
    returns = [[float(rewards[i]) - float(sum(r[:k])) for k in range(turns[i])] for i, r in enumerate(turn_rewards)]
    members: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for i, n_turns in enumerate(turns):
        for k in range(n_turns if not rewards[i].isnan() else 0):  # an unscored trajectory is in no group
            members[int(group_ids[i]), k].append((i, k))
    per_turn = [[0.0] * n_turns for n_turns in turns]
    for group in members.values():
        if len(group) < 2:
            continue
        for (i, k), a in zip(group, _centred_returns(group, returns, std_normalize, eps, True), strict=True):
            per_turn[i][k] = a
    return _broadcast(per_turn, turn_ids).to(advantages.dtype)


def _hashable(key: object) -> Hashable:
    if isinstance(key, list | tuple):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in key.items()))
    return key  # type: ignore[return-value]
