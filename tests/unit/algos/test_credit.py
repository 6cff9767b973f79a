"""Credit over the turns of multi-turn trajectories (ALGORITHMS.md §9), against hand-worked values and §13 M1."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos

TURN_IDS = torch.tensor(
    [[0, 0, -1, 1, 1, -1], [0, -1, 1, -1, 2, 2], [0, 0, 0, -1, -1, -1], [0, -1, 1, 1, -1, -1]]
)  # -1: the environment's tokens and padding
GROUPS = torch.tensor([0, 0, 0, 1])
TURN_REWARDS = [[0.0, 1.0], [0.0, 0.0, 1.0], [1.0], [0.0, 1.0]]
STATE_KEYS = [["", "a"], ["", "a", "b"], [""], ["", "a"]]
EPISODE = torch.tensor([1.0, -1.0, 0.5, 2.0])


def test_traj_broadcast_gives_each_policy_token_its_trajectory_advantage():
    out = algos.get("credit", "traj_broadcast")(EPISODE, turn_ids=TURN_IDS)
    want = EPISODE[:, None] * (TURN_IDS >= 0)
    assert torch.equal(out, want) and out[0].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def _gigpo(**kw):
    return algos.get("credit", "gigpo")(EPISODE, turn_ids=TURN_IDS, group_ids=GROUPS, turn_rewards=TURN_REWARDS,
                                        state_keys=STATE_KEYS, **kw)  # fmt: skip


def test_gigpo_hand_worked():
    # gamma 0.5: returns i0 (0.5, 1), i1 (0.25, 0.5, 1), i2 (1), i3 (0.5, 1)
    # anchor "" of group 0: {0.5, 0.25, 1}, mean 7/12 -> (-1/12, -1/3, 5/12); anchor "a" of group 0: {1, 0.5} -> ±1/4;
    # "b" and every anchor of group 1 hold one turn -> 0
    out = _gigpo(omega=2.0, gamma=0.5)
    want = torch.tensor([
        [1 - 1 / 6, 1 - 1 / 6, 0, 1.5, 1.5, 0],
        [-1 - 2 / 3, 0, -1.5, 0, -1, -1],
        [0.5 + 5 / 6] * 3 + [0, 0, 0],
        [2, 0, 2, 2, 0, 0],
    ])  # fmt: skip
    torch.testing.assert_close(out, want)


def test_gigpo_std_normalised_step_advantage():
    out = _gigpo(omega=1.0, gamma=0.5, std_normalize=True, eps=0.0)
    std = torch.tensor([0.5, 0.25, 1.0]).std()  # unbiased, as verl-agent's torch.std
    torch.testing.assert_close(out[0, 0], 1.0 + (0.5 - 7 / 12) / std)
    torch.testing.assert_close(out[1, 2], torch.tensor(-1.0 - 0.25 / (0.5 / 2**0.5)))  # {1, 0.5}: std = 0.5/sqrt(2)


def test_gigpo_identical_trajectories_get_no_step_advantage():
    # §13 M1: identical trajectories have identical returns in identical states, so A^S = 0 and GiGPO = traj_broadcast
    turn_ids = torch.tensor([[0, -1, 1, 1]] * 3)
    out = algos.get("credit", "gigpo")(torch.tensor([0.3, 0.3, 0.3]), turn_ids=turn_ids, group_ids=torch.zeros(3),
                                       turn_rewards=[[0.0, 1.0]] * 3, state_keys=[["", (1, 5)]] * 3)  # fmt: skip
    torch.testing.assert_close(out, algos.get("credit", "traj_broadcast")(torch.tensor([0.3] * 3), turn_ids=turn_ids))


def test_gigpo_turn_cut_by_the_budget_has_return_zero_and_keys_may_be_lists():
    # the second trajectory's last turn was cut (no reward after it): its return is 0; list keys match tuple keys
    gigpo = algos.get("credit", "gigpo")
    out = gigpo(torch.zeros(2), turn_ids=torch.tensor([[0, 1], [0, 1]]), group_ids=torch.zeros(2),
                turn_rewards=[[0.0, 1.0], [0.0]], state_keys=[["", [1, 2]], ["", (1, 2)]], gamma=1.0)  # fmt: skip
    assert out.tolist() == [[0.5, 0.5], [-0.5, -0.5]]


@pytest.mark.parametrize("name", ["traj_broadcast", "gigpo"])
def test_environment_tokens_get_no_advantage(name):
    fn = algos.get("credit", name)
    kw = {} if name == "traj_broadcast" else {"group_ids": GROUPS, "turn_rewards": TURN_REWARDS,
                                               "state_keys": STATE_KEYS}  # fmt: skip
    assert (fn(EPISODE, turn_ids=TURN_IDS, **kw)[TURN_IDS < 0] == 0).all()


def _hgpo(**kw):
    return algos.get("credit", "hgpo")(EPISODE, turn_ids=TURN_IDS, group_ids=GROUPS, turn_rewards=TURN_REWARDS,
                                       state_keys=STATE_KEYS, **kw)  # fmt: skip


def test_hgpo_without_history_is_gigpo():
    torch.testing.assert_close(_hgpo(history=0, omega=2.0, gamma=0.5), _gigpo(omega=2.0, gamma=0.5))


def test_hgpo_hand_worked_levels():
    # three trajectories of one prompt, states ("", "x", "y"), ("", "z", "y"), ("", "x", "y"); reward 1 after the last
    # turn of the first two, 0 for the third; γ = 1, so every turn's return is its trajectory's reward: 1, 1, 0.
    # turn 2 ("y"): level 0 {1, 1, 0} -> A_0 = 1/3, 1/3, -2/3; level 1 (previous state too): ("x","y") holds
    # trajectories 0 and 2 -> ±1/2, ("z","y") is alone; level 2 ("", "x", "y") the same pair -> ±1/2.
    # trajectory 0: (1·1/3 + 2·1/2 + 3·1/2)/(1 + 2 + 3) = 17/36; trajectory 1: 1/3 alone; trajectory 2: (−2/3 − 1 −
    # 3/2)/6 = −19/36. Turn 1: "x" {1, 0} -> ±1/2 at level 0 and level 1 ("", "x") -> ±1/2; "z" alone -> 0.
    # Turn 0 (""): {1, 1, 0} -> 1/3, 1/3, −2/3 at level 0 only.
    turn_ids = torch.tensor([[0, 1, 2]] * 3)
    keys = [["", "x", "y"], ["", "z", "y"], ["", "x", "y"]]
    rewards = [[0, 0, 1.0], [0, 0, 1.0], [0, 0, 0.0]]
    hgpo = algos.get("credit", "hgpo")
    out = hgpo(torch.zeros(3), turn_ids=turn_ids, group_ids=torch.zeros(3), gamma=1.0, turn_rewards=rewards,
               state_keys=keys)  # fmt: skip
    want = torch.tensor([[1 / 3, 1 / 2, 17 / 36], [1 / 3, 0.0, 1 / 3], [-2 / 3, -1 / 2, -19 / 36]])
    torch.testing.assert_close(out, want)
    # α = 0: the levels weigh the same; trajectory 0's last turn (1/3 + 1/2 + 1/2)/3
    flat = hgpo(torch.zeros(3), turn_ids=turn_ids, group_ids=torch.zeros(3), gamma=1.0, alpha=0, turn_rewards=rewards,
                state_keys=keys)  # fmt: skip
    torch.testing.assert_close(flat[0, 2], torch.tensor(4 / 9))


def test_hgpo_identical_trajectories_get_no_step_advantage():
    # §13 M1, as for GiGPO: every level's group has equal returns
    turn_ids = torch.tensor([[0, -1, 1, 1]] * 3)
    out = algos.get("credit", "hgpo")(torch.tensor([0.3] * 3), turn_ids=turn_ids, group_ids=torch.zeros(3),
                                      turn_rewards=[[0.0, 1.0]] * 3, state_keys=[["", (1, 5)]] * 3)  # fmt: skip
    torch.testing.assert_close(out, algos.get("credit", "traj_broadcast")(torch.tensor([0.3] * 3), turn_ids=turn_ids))


def test_salt_merges_turns_with_the_same_state_and_action():
    # trajectories 0–2 of one prompt open with the same action (tokens 7 7) in state ""; 0 and 1 then take action 5 in
    # state "a", trajectory 2 action 6 in state "a"; trajectory 3 (another prompt) opens with 7 7 too
    ids = torch.tensor([[7, 7, 9, 5], [7, 7, 9, 5], [7, 7, 9, 6], [7, 7, 0, 0]])
    turn_ids = torch.tensor([[0, 0, -1, 1], [0, 0, -1, 1], [0, 0, -1, 1], [0, 0, -1, -1]])
    keys = [["", "a"], ["", "a"], ["", "a"], [""]]
    adv = torch.tensor([1.0, 0.5, -1.5, 2.0])
    out = algos.get("credit", "salt_recon")(adv, turn_ids=turn_ids, group_ids=torch.tensor([0, 0, 0, 1]),
                                            state_keys=keys, completion_ids=ids)  # fmt: skip
    first = (1.0 + 0.5 - 1.5) / 3  # the shared opening: the mean over the three trajectories through it
    want = torch.tensor([[first, first, 0, 0.75], [first, first, 0, 0.75], [first, first, 0, -1.5], [2.0, 2.0, 0, 0]])
    torch.testing.assert_close(out, want)
    # every action distinct: trajectory-level credit
    distinct = ids + 10 * torch.arange(4)[:, None]
    out = algos.get("credit", "salt_recon")(adv, turn_ids=turn_ids, group_ids=torch.tensor([0, 0, 0, 1]),
                                            state_keys=keys, completion_ids=distinct)  # fmt: skip
    torch.testing.assert_close(out, algos.get("credit", "traj_broadcast")(adv, turn_ids=turn_ids))


def test_scores_returns_per_attempt_in_each_stage():
    # one prompt, three trajectories; turn rewards (r1, r2 − r1): wrong→right, right→right, right→wrong
    # tokens: attempt 0, the instruction (-1), attempt 1; log π_old − log π_ref = 0.5 on every token
    turn_ids = torch.tensor([[0, 0, -1, 1]] * 3)
    rewards = [[0.0, 1.0], [1.0, 0.0], [1.0, -1.0]]
    old, ref = torch.full((3, 4), -1.0), torch.full((3, 4), -1.5)
    fn = algos.get("credit", "scores")

    def run(progress):
        return fn(torch.zeros(3), turn_ids=turn_ids, group_ids=torch.zeros(3), turn_rewards=rewards, progress=progress,
                  old_logp=old, ref_logp=ref, stage1_frac=0.5, alpha=2.0, beta_first=0.4, beta=0.1)  # fmt: skip

    # stage I: r(y2) = 1, 1, 0; KL1 = 2·0.5 = 1 -> R1 = r2 − 0.4 = 0.6, 0.6, −0.4 (mean 4/15), R2 = r2 (mean 2/3)
    stage1 = run(0.25)
    torch.testing.assert_close(stage1[:, 0], torch.tensor([1 / 3, 1 / 3, -2 / 3]))
    torch.testing.assert_close(stage1[:, 3], torch.tensor([1 / 3, 1 / 3, -2 / 3]))
    assert (stage1[:, 2] == 0).all()  # the instruction's tokens
    # stage II: KL1 = 1, KL2 = 0.5; last = r2 + 2(r2 − r1) − 0.05 = 2.95, 0.95, −2.05 (mean 0.6167);
    # R1 = r1 − 0.1 + last = 2.85, 1.85, −1.15 (mean 1.1833)
    stage2 = run(0.75)
    torch.testing.assert_close(stage2[:, 3], torch.tensor([2.95, 0.95, -2.05]) - 1.85 / 3)
    torch.testing.assert_close(stage2[:, 0], torch.tensor([2.85, 1.85, -1.15]) - 3.55 / 3)
    assert algos.entry("credit", "scores").needs({"beta_first": 0.0, "beta": 0.0}) == {
        "turn_ids", "group_ids", "turn_rewards", "progress"}  # fmt: skip
    with pytest.raises(ValueError, match="needs old_logp and ref_logp"):
        fn(torch.zeros(3), turn_ids=turn_ids, group_ids=torch.zeros(3), turn_rewards=rewards, progress=0.0)


def test_seeupo_gives_each_turn_its_group_relative_return_to_go():
    # group 0: three trajectories (2, 1 and 2 turns); group 1: one scored trajectory and one unscored (NaN reward)
    turn_ids = torch.tensor([[0, 0, -1, 1], [0, 0, -1, -1], [0, -1, 1, 1], [0, -1, -1, -1], [0, 0, -1, 1]])
    turn_rewards = [[0.5, 1.0], [0.0], [1.0, 0.0], [2.0], [0.0, 1.0]]
    rewards = torch.tensor([1.5, 0.0, 1.0, 2.0, float("nan")])
    fn = algos.get("credit", "seeupo_recon")
    kw = {"turn_ids": turn_ids, "group_ids": torch.tensor([0, 0, 0, 1, 1]), "turn_rewards": turn_rewards,
          "rewards": rewards}  # fmt: skip
    out = fn(torch.zeros(5), std_normalize=False, **kw)
    # turn 0: returns 1.5, 0, 1 (mean 5/6); turn 1: R − r_0 = 1.0 and 0.0 (mean 0.5), the second trajectory has none
    torch.testing.assert_close(out[:3, 0], torch.tensor([1.5, 0.0, 1.0]) - 5 / 6)
    torch.testing.assert_close(out[[0, 2], 3], torch.tensor([0.5, -0.5]))
    assert (out[turn_ids < 0] == 0).all()
    assert (out[3:] == 0).all()  # alone in its group once the unscored trajectory leaves it
    scaled = fn(torch.zeros(5), std_normalize=True, eps=0.0, **kw)
    torch.testing.assert_close(scaled[:3, 0], (torch.tensor([1.5, 0.0, 1.0]) - 5 / 6) / (7 / 12) ** 0.5)
    torch.testing.assert_close(scaled[[0, 2], 3], torch.tensor([0.5, -0.5]) / 0.5**0.5)
    assert "turn_sequential" in algos.entry("credit", "seeupo_recon").facts


def _arpo_group():
    # a: turns 0 and 1; b: a branch of a at turn 1 (a's turn 0 and the reply replayed); c: a fresh trajectory
    ids = torch.tensor([[1, 2, 9, 3, 4], [1, 2, 9, 5, 0], [7, 8, 0, 0, 0]])
    turn_ids = torch.tensor([[0, 0, -1, 1, 1], [0, 0, -1, 1, -1], [0, 0, -1, -1, -1]])
    return ids, turn_ids, torch.zeros(3, dtype=torch.long), torch.tensor([1.0, -1.0, 0.5])


def test_arpo_hard_attribution_gives_a_shared_prefix_the_mean_advantage_of_its_branches():
    ids, turn_ids, groups, adv = _arpo_group()
    fn = algos.get("credit", "arpo_agentic")
    hard = fn(adv, turn_ids=turn_ids, group_ids=groups, completion_ids=ids, attribution="hard")
    # a's and b's turn 0 are shared: (1 − 1)/2 = 0; their turns 1 differ and c shares nothing
    torch.testing.assert_close(hard, torch.tensor([[0.0, 0, 0, 1, 1], [0, 0, 0, -1, 0], [0.5, 0.5, 0, 0, 0]]))
    soft = fn(adv, turn_ids=turn_ids, group_ids=groups, completion_ids=ids, attribution="soft")
    torch.testing.assert_close(soft, algos.get("credit", "traj_broadcast")(adv, turn_ids=turn_ids))
    with pytest.raises(ValueError, match="attribution must be 'soft' or 'hard'"):
        fn(adv, turn_ids=turn_ids, group_ids=groups, completion_ids=ids, attribution="mean")


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_arpo_hard_and_soft_carry_the_same_advantage_sum_on_every_shared_token(branch_points, seed):
    # a random branching tree: each new trajectory copies an earlier one up to the start of one of its turns and
    # samples its own tokens from there; per distinct (prefix, token) node, the copies' advantages sum alike
    g = torch.Generator().manual_seed(seed)
    trajs = [[(k, int(x)) for k in range(3) for x in torch.randint(1, 50, (2,), generator=g)]]
    for source, turn in branch_points:
        base = trajs[source % len(trajs)]
        keep = [tok for tok in base if tok[0] < turn]
        trajs.append(keep + [(k, int(x)) for k in range(turn, 3) for x in torch.randint(50, 99, (2,), generator=g)])
    width = max(len(t) for t in trajs)
    ids = torch.tensor([[x for _, x in t] + [0] * (width - len(t)) for t in trajs])
    turn_ids = torch.tensor([[k for k, _ in t] + [-1] * (width - len(t)) for t in trajs])
    adv = torch.randn(len(trajs), generator=g)
    kw = {"turn_ids": turn_ids, "group_ids": torch.zeros(len(trajs), dtype=torch.long), "completion_ids": ids}
    fn = algos.get("credit", "arpo_agentic")
    hard, soft = fn(adv, attribution="hard", **kw), fn(adv, attribution="soft", **kw)
    sums: dict[tuple, list[float]] = {}
    for i in range(len(trajs)):
        for t in range(len(trajs[i])):
            node = tuple(ids[i, : t + 1].tolist())
            pair = sums.setdefault(node, [0.0, 0.0])
            pair[0] += float(hard[i, t])
            pair[1] += float(soft[i, t])
    for h, s in sums.values():
        assert h == pytest.approx(s, abs=1e-5)
