"""Critic estimators (ALGORITHMS.md §10): GAE on hand-worked values, §13 V6, T-PPO's bootstrap, the value loss."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipo import algos
from unipo.algos.critics import clipped_value_loss, explained_variance

ppo_gae = algos.get("critic", "ppo_gae")
t_ppo = algos.get("critic", "t_ppo_recon")


def test_gae_on_a_hand_worked_row():
    # one row of 3 tokens, outcome reward 1; V(s_0..s_3) = 0.5, 0.2, 0.4, (0.8: after the end, unused by ppo_gae)
    # γ = 0.9, λ = 0.5: δ = [0.9·0.2 − 0.5, 0.9·0.4 − 0.2, 1 − 0.4] = [−0.32, 0.16, 0.6]; γλ = 0.45
    # A_2 = 0.6, A_1 = 0.16 + 0.45·0.6 = 0.43, A_0 = −0.32 + 0.45·0.43 = −0.1265; R = A + V
    values = torch.tensor([[0.5, 0.2, 0.4, 0.8]])
    out = ppo_gae(torch.tensor([1.0]), values, torch.ones(1, 3), gamma=0.9, lam=0.5, whiten_advantages=False)
    torch.testing.assert_close(out.advantages, torch.tensor([[-0.1265, 0.43, 0.6]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.3735, 0.63, 1.0]]))
    assert out.value_mask.tolist() == [[True, True, True]]


def test_kl_in_the_reward_is_k1_per_token():
    # β = 0.1, log π_old − log π_ref = [0.2, −0.1, 0.3]: token rewards [−0.02, 0.01, 1 − 0.03]; V ≡ 0, γ = λ = 1
    old, ref = torch.tensor([[0.0, -0.1, 0.3]]), torch.tensor([[-0.2, 0.0, 0.0]])
    out = ppo_gae(torch.tensor([1.0]), torch.zeros(1, 4), torch.ones(1, 3), old_logp=old, ref_logp=ref, kl_coef=0.1,
                  lam=1.0, whiten_advantages=False)  # fmt: skip
    torch.testing.assert_close(out.advantages, torch.tensor([[0.96, 0.98, 0.97]]))
    with pytest.raises(ValueError, match="needs ref_logp"):
        ppo_gae(torch.tensor([1.0]), torch.zeros(1, 4), torch.ones(1, 3), old_logp=old, kl_coef=0.1)
    assert algos.entry("critic", "ppo_gae").needs({"kl_coef": 0.0}) == {"token_rewards"}  # given only by RTO
    assert algos.entry("critic", "ppo_gae").needs({"kl_coef": 0.1}) == {"old_logp", "ref_logp", "token_rewards"}


def test_per_token_rewards_replace_the_outcome_and_keep_the_kl():
    # RTO's token rewards: row 0 [0.1, −0.2, 1.0] (3 tokens), row 1 unscored (NaN), row 2 [0.5, 0, 0] (1 token).
    # β = 0.1, log π_old − log π_ref = 0.2 everywhere: r_t = dense − 0.02. V ≡ 0, γ = λ = 1: A_t = Σ_{u≥t} r_u.
    dense = torch.tensor([[0.1, -0.2, 1.0], [float("nan")] * 3, [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).bool()
    old, ref = torch.full((3, 3), 0.2), torch.zeros(3, 3)
    out = ppo_gae(torch.tensor([7.0, 1.0, 7.0]), torch.zeros(3, 4), mask, old_logp=old, ref_logp=ref, kl_coef=0.1,
                  lam=1.0, whiten_advantages=False, token_rewards=dense)  # fmt: skip
    # the outcome 7 is not added again: the per-token rewards carry it
    torch.testing.assert_close(out.advantages, torch.tensor([[0.84, 0.76, 0.98], [0.0, 0.0, 0.0], [0.48, 0.0, 0.0]]))
    assert out.value_mask.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    # a dense reward that is the outcome on the last token is plain PPO
    plain = ppo_gae(torch.tensor([1.0, 0.0]), torch.zeros(2, 4), mask[[0, 2]], lam=1.0, whiten_advantages=False)
    same = ppo_gae(torch.tensor([9.0, 9.0]), torch.zeros(2, 4), mask[[0, 2]], lam=1.0, whiten_advantages=False,
                   token_rewards=torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))  # fmt: skip
    torch.testing.assert_close(same.advantages, plain.advantages)
    with pytest.raises(ValueError, match="token_rewards must be"):
        ppo_gae(torch.tensor([1.0]), torch.zeros(1, 4), torch.ones(1, 3), token_rewards=torch.zeros(1, 2))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.floats(-2, 2)), min_size=1, max_size=5), st.floats(0.5, 1.0))
def test_v6_gae_limits(rows, gamma):
    # §13 V6: λ = 1 ⇒ A_t = Σ_k γ^k r_{t+k} − V(s_t); λ = 0 ⇒ A_t = δ_t; V ≡ 0, γ = λ = 1 ⇒ A_t = r on every token
    n, t = len(rows), max(length for length, _ in rows)
    mask = torch.tensor([[j < length for j in range(t)] for length, _ in rows])
    r = torch.tensor([reward for _, reward in rows])
    values = torch.randn(n, t + 1, generator=torch.Generator().manual_seed(len(rows)))
    lengths = mask.sum(1)
    mc = torch.zeros(n, t)
    delta = torch.zeros(n, t)
    for i in range(n):
        for j in range(int(lengths[i])):
            mc[i, j] = gamma ** (int(lengths[i]) - 1 - j) * r[i]
            nxt = values[i, j + 1] if j + 1 < lengths[i] else 0.0
            delta[i, j] = (r[i] if j == lengths[i] - 1 else 0.0) + gamma * nxt - values[i, j]
    v = torch.where(mask, values[:, :-1], torch.zeros(n, t))
    mc_adv = ppo_gae(r, values, mask, gamma=gamma, lam=1.0, whiten_advantages=False).advantages
    torch.testing.assert_close(mc_adv, mc - v, atol=1e-5, rtol=1e-5)
    td = ppo_gae(r, values, mask, gamma=gamma, lam=0.0, whiten_advantages=False).advantages
    torch.testing.assert_close(td, delta, atol=1e-5, rtol=1e-5)
    flat = ppo_gae(r, torch.zeros(n, t + 1), mask, lam=1.0, whiten_advantages=False)
    torch.testing.assert_close(flat.advantages, torch.where(mask, r[:, None].expand(n, t), torch.zeros(n, t)))
    # (and with λ < 1 a zero critic discounts the outcome by (γλ)^(steps to the end))
    short = ppo_gae(r, torch.zeros(n, t + 1), mask, gamma=gamma, lam=0.5, whiten_advantages=False).advantages
    torch.testing.assert_close(short, mc * torch.where(mask, 0.5 ** (lengths[:, None] - 1 - torch.arange(t)), 0.0),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    # with no truncated reply, T-PPO's extended GAE is GAE
    finished = torch.zeros(n, dtype=torch.bool)
    a, b = ppo_gae(r, values, mask, lam=0.7), t_ppo(r, values, mask, truncated=finished, lam=0.7)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_t_ppo_bootstraps_a_cut_off_reply_and_keeps_it_out_of_the_critic():
    # the same row, cut off at 3 tokens: no outcome reward, δ_2 = 0 + 0.9·V(s_3) − 0.4 = 0.32 with V(s_3) = 0.8
    # A_2 = 0.32, A_1 = 0.16 + 0.45·0.32 = 0.304, A_0 = −0.32 + 0.45·0.304 = −0.1832
    values = torch.tensor([[0.5, 0.2, 0.4, 0.8], [0.5, 0.2, 0.4, 0.8]])
    out = t_ppo(torch.tensor([1.0, 1.0]), values, torch.ones(2, 3), truncated=torch.tensor([True, False]), gamma=0.9,
                lam=0.5, whiten_advantages=False)  # fmt: skip
    torch.testing.assert_close(out.advantages[0], torch.tensor([-0.1832, 0.304, 0.32]))
    torch.testing.assert_close(out.advantages[1], torch.tensor([-0.1265, 0.43, 0.6]))  # finished: plain GAE
    assert out.value_mask.tolist() == [[False] * 3, [True] * 3]
    # ppo_gae ends every reply, cut off or not: V = 0 after the last token
    plain = ppo_gae(torch.tensor([1.0, 1.0]), values, torch.ones(2, 3), gamma=0.9, lam=0.5, whiten_advantages=False)
    torch.testing.assert_close(plain.advantages[0], plain.advantages[1])


def test_whitening_clipping_and_unscored_rows():
    values = torch.zeros(3, 3)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]]).bool()
    out = ppo_gae(torch.tensor([1.0, 0.0, float("nan")]), values, mask, lam=1.0)
    # valid tokens of scored rows: A = [1, 1, 0] before whitening -> mean 2/3, std (Bessel) 1/sqrt(3)
    expected = (torch.tensor([1.0, 1.0, 0.0]) - 2 / 3) / (1 / 3) ** 0.5
    torch.testing.assert_close(out.advantages[mask & torch.tensor([[1], [1], [0]]).bool()], expected)
    assert out.advantages[2].tolist() == [0.0, 0.0] and out.value_mask[2].tolist() == [False, False]
    clipped = ppo_gae(torch.tensor([1.0, 0.0, float("nan")]), values, mask, lam=1.0, adv_clip=0.5)
    assert float(clipped.advantages.abs().max()) == pytest.approx(0.5)


def test_value_shape_and_mask_are_checked():
    with pytest.raises(ValueError, match=r"values must be \[N, T\+1\]"):
        ppo_gae(torch.tensor([1.0]), torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="contiguous prefix"):
        ppo_gae(torch.tensor([1.0]), torch.zeros(1, 4), torch.tensor([[1, 0, 1]]))


def test_clipped_value_loss_on_hand_worked_values():
    # V_old = 0.5, R = 1.2, ε_v = 0.2. V = 1.0: ½·max((1.0 − 1.2)², (0.7 − 1.2)²) = 0.125, the clip binds.
    # V = 0.6: inside the clip range, ½·(0.6 − 1.2)² = 0.18
    loss, m = clipped_value_loss(torch.tensor([1.0, 0.6]), torch.tensor([0.5, 0.5]), torch.tensor([1.2, 1.2]))
    torch.testing.assert_close(loss, torch.tensor([0.125, 0.18]))
    assert m["critic/clip_frac"].tolist() == [1.0, 0.0]
    plain, _ = clipped_value_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([1.2]), value_clip=0.0)
    torch.testing.assert_close(plain, torch.tensor([0.02]))


def test_explained_variance():
    r, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(r, r, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), r, mask) == pytest.approx(0.0)


archer = algos.get("critic", "archer")
TWO_TURNS = torch.tensor([[0, 0, 0, -1, -1, 1, 1, -1], [0, 0, 0, 0, -1, -1, -1, -1]])
"""Row 0: turn 0 on tokens 0–2, the environment's tokens 3–4, turn 1 on 5–6, padding; row 1: one turn on 0–3."""


def test_archer_on_hand_worked_turns():
    # values[i, t] = (9·i + t)/10 (V before token t), the target network's 1 higher; γ = 0.5.
    # Row 0: V(s_0) = v[0] = 0, Q(s_0, a_0) = v[3] = 0.3 -> A_0 = 0.3; V(s_1) = v[5] = 0.5, Q(s_1, a_1) = v[7] = 0.7
    # -> A_1 = 0.2. r_0 = 0.5 (the environment's), r_1 = R − r_0 = 1.0 (its own 9.0 replaced). Targets: at 0,
    # Q̄(s_0, a_0) = 1.3; at 3, r_0 + γ·V̄(s_1) = 0.5 + 0.5·1.5 = 1.25; at 5, Q̄(s_1, a_1) = 1.7; at 7, r_1 = 1.0.
    # Row 1: A_0 = v[4] − v[0] = 1.3 − 0.9 = 0.4; targets at 0, Q̄ = 2.3; at 4, R = 0.
    values = torch.arange(18.0).reshape(2, 9) / 10
    out = archer(torch.tensor([1.5, 0.0]), values, torch.ones(2, 8), turn_ids=TWO_TURNS,
                 turn_rewards=[[0.5, 9.0], []], target_values=values + 1, gamma=0.5)  # fmt: skip
    torch.testing.assert_close(out.advantages, torch.tensor([[0.3, 0.3, 0.3, 0, 0, 0.2, 0.2, 0], [0.4] * 4 + [0] * 4]))
    expected = torch.zeros(2, 9)
    expected[0, [0, 3, 5, 7]] = torch.tensor([1.3, 1.25, 1.7, 1.0])
    expected[1, 0] = 2.3
    torch.testing.assert_close(out.returns, expected)
    assert out.value_mask.nonzero().tolist() == [[0, 0], [0, 3], [0, 5], [0, 7], [1, 0], [1, 4]]
    # without a target network the targets come from `values`; an unscored row gets nothing
    out = archer(torch.tensor([float("nan"), 0.0]), values, turn_ids=TWO_TURNS, turn_rewards=[[0.5], [0.0]])
    assert out.advantages[0].abs().sum() == 0 and not out.value_mask[0].any()
    torch.testing.assert_close(out.returns[1, 0], values[1, 4])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=3, max_size=3), st.floats(0.0, 1.0))
def test_archer_bellman_consistent_values_are_its_fixed_point(rewards, gamma):
    # values with V(s_k) = Q(s_k, a_k) = r_k + γ·V(s_{k+1}) at every turn of a three-turn row: every target equals
    # the value at its position and every advantage is 0 (TD's fixed point); values elsewhere are arbitrary
    turn_ids = torch.tensor([[0, 0, -1, 1, -1, -1, 2, 2, 2]])
    r0, r1, r2 = rewards
    q2 = r2
    q1 = r1 + gamma * q2
    q0 = r0 + gamma * q1
    values = torch.full((1, 10), 7.0)
    values[0, [0, 2, 3, 4, 6, 9]] = torch.tensor([q0, q0, q1, q1, q2, q2])
    out = archer(torch.tensor([r0 + r1 + r2]), values, turn_ids=turn_ids, turn_rewards=[[r0, r1]], gamma=gamma)
    torch.testing.assert_close(out.returns[out.value_mask], values[out.value_mask])
    torch.testing.assert_close(out.advantages, torch.zeros(1, 9), atol=1e-5, rtol=0)


def test_archer_refuses_turns_it_cannot_read():
    values = torch.zeros(1, 5)
    for turn_ids, message in [
        ([[0, 1, 1, -1]], "gave no token between two turns"),
        ([[0, -1, 0, -1]], "tokens of turn 0 must be contiguous"),
        ([[-1, -1, 1, 1]], "has turn 1 without turn 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            archer(torch.ones(1), values, turn_ids=torch.tensor(turn_ids), turn_rewards=[[]])
    with pytest.raises(ValueError, match=r"target_values must be \[N, T\+1\]"):
        archer(torch.ones(1), values, turn_ids=torch.zeros(1, 4).long(), turn_rewards=[[]], target_values=values[:, 1:])
