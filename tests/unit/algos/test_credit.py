"""Credit over the turns of multi-turn trajectories (ALGORITHMS.md §9), against hand-worked values and §13 M1."""

import pytest
import torch

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
