"""Reward shapers (ALGORITHMS.md §5): hand-worked values and §13 W1–W3."""

import math

import pytest
import torch

from unipo import algos

nan = float("nan")


def shaper(name):
    return algos.get("reward", name)


def test_weighted_sum_leaves_none_out_and_is_nan_when_all_none():
    got = shaper("weighted_sum")(torch.tensor([[1.0, nan], [nan, nan], [0.5, 2.0]]), torch.tensor([1.0, 0.5]))
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == 1.5


def test_gated_hierarchy_counts_a_level_only_after_every_earlier_gate():
    comps = torch.tensor([[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [nan, nan, nan], [1.0, nan, 1.0]])
    got = shaper("gated_hierarchical_recon")(torch.zeros(5), reward_components=comps, thresholds=(1.0, 1.0))
    # 1 + (1 + 0.5); 0 (gate 1 closed); 1 + (0 + 0) (gate 2 closed); all None; a None level closes its gate
    assert got[:3].tolist() == [2.5, 0.0, 1.0] and math.isnan(got[3]) and got[4] == 1.0
    with pytest.raises(ValueError, match="need 2 thresholds"):
        shaper("gated_hierarchical_recon")(torch.zeros(5), reward_components=comps, thresholds=(1.0,))


def test_w1_dapo_overlong_is_zero_then_linear_down_to_minus_c_at_the_budget():
    lengths = torch.tensor([10, 16, 17, 18, 20])
    got = shaper("dapo_overlong")(torch.ones(5), lengths=lengths, max_len=20)  # L_buf = 20 // 5 = 4
    assert got.tolist() == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.0])
    got = shaper("dapo_overlong")(torch.zeros(5), lengths=lengths, max_len=20, buffer_len=10, penalty=2.0)
    assert got.tolist() == pytest.approx([0.0, -1.2, -1.4, -1.6, -2.0])


def test_stop_penalty_hits_only_unfinished_replies():
    got = shaper("stop_penalty")(torch.tensor([1.0, 1.0, nan]), truncated=torch.tensor([True, False, True]))
    assert got[:2].tolist() == [0.0, 1.0] and math.isnan(got[2])


def test_reward_scale_clip_divides_by_the_running_std_of_every_reward_seen():
    fn = shaper("reward_scale_clip")
    first, state = fn(torch.tensor([1.0, 3.0]))  # mean 2, population std 1
    assert first.tolist() == [1.0, 3.0] and state == {"count": 2.0, "mean": 2.0, "m2": 2.0}
    second, state = fn(torch.tensor([5.0, nan]), state=state)  # over {1, 3, 5}: mean 3, var 8/3
    assert second[0].item() == pytest.approx(5 / math.sqrt(8 / 3)) and math.isnan(second[1])
    centred, _ = fn(torch.tensor([5.0]), state={"count": 2.0, "mean": 2.0, "m2": 2.0}, normalize=True)
    assert centred.item() == pytest.approx(2 / math.sqrt(8 / 3))
    clipped, _ = fn(torch.tensor([0.0, 100.0]), clip=10.0)  # std 50: 2 → 2, then nothing to clip; below: clip
    assert clipped.tolist() == [0.0, 2.0]
    clipped, _ = fn(torch.tensor([-1000.0]), state={"count": 1e6, "mean": 0.0, "m2": 1e6})  # std ≈ 1.4 after it
    assert clipped.item() == -10.0
    same, _ = fn(torch.tensor([1.0, 1.0]))  # std 0: not scaled (ours)
    assert same.tolist() == [1.0, 1.0]


def test_reward_scale_clip_moments_match_all_rewards_seen():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 1, 7, 3)]
    state = None
    for b in batches:
        _, state = shaper("reward_scale_clip")(b, state=state)
    seen = torch.cat(batches).double()
    assert state["count"] == 16 and state["mean"] == pytest.approx(float(seen.mean()))
    assert state["m2"] / state["count"] == pytest.approx(float(seen.var(unbiased=False)))


def test_kimi_length_by_hand_and_w3_a_wrong_reply_never_gains():
    got = shaper("kimi_length")(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]), lengths=torch.tensor([1, 3, 5, 2, 2]),
                                group_ids=torch.tensor([0, 0, 0, 1, 1]),
                                correct=torch.tensor([True, True, False, False, True]))  # fmt: skip
    # group 0: λ = 0.5, 0, -0.5; group 1: equal lengths, λ = 0
    assert got.tolist() == pytest.approx([1.5, 1.0, -0.5, 0.0, 0.0])
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        lengths, ids = torch.randint(1, 50, (12,), generator=g), torch.randint(0, 3, (12,), generator=g)
        correct = torch.rand(12, generator=g) > 0.5
        shaped = shaper("kimi_length")(torch.zeros(12), lengths=lengths, group_ids=ids, correct=correct)
        assert (shaped[~correct] <= 0).all()


def test_grpo_lambda_applies_the_length_reward_only_to_accurate_groups():
    got = shaper("grpo_lambda")(torch.tensor([1.0, 0.0, 0.0, 0.0]), lengths=torch.tensor([1, 3, 1, 3]),
                                group_ids=torch.tensor([0, 0, 1, 1]),
                                correct=torch.tensor([True, False, False, False]))  # fmt: skip
    assert got.tolist() == pytest.approx([1.5, -0.5, 0.0, 0.0])  # group 0: accuracy 0.5 >= λ; group 1: 0


def test_hapo_rewards_replies_shorter_than_the_prompts_best_so_far():
    fn = shaper("hapo_recon")
    first, memory = fn(torch.ones(2), lengths=torch.tensor([6, 4]), correct=torch.tensor([True, True]),
                       prompt_keys=["a", "a"])  # fmt: skip
    assert first.tolist() == [1.0, 1.0] and memory == {"a": 4.0}  # no history yet: no length reward
    got, memory = fn(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]), lengths=torch.tensor([2, 4, 8, 2, 8]),
                     correct=torch.tensor([True, True, True, False, False]), prompt_keys=["a"] * 4 + ["b"],
                     state=memory)  # fmt: skip
    # x = |y|/4 = 0.5, 1, 2: cos(π/4), 0, −1; a short wrong reply gets min(0, cos(π/4)) = 0; "b" has no history
    assert got.tolist() == pytest.approx([1 + math.sqrt(0.5), 1.0, 0.0, 0.0, 0.0])
    assert memory == {"a": 2.0}  # the wrong reply and prompt b (no correct reply) add nothing


def test_w2_noisy_verifier_backward_is_unbiased_and_grpo_cancels_both_corrections():
    rho0, rho1 = 0.1, 0.2
    g = torch.Generator().manual_seed(0)
    for r in (0.0, 1.0):
        flip = torch.rand(200_000, generator=g) < (rho0 if r == 0 else rho1)
        noisy = torch.where(flip, 1 - r, r)
        corrected = shaper("noisy_verifier")(noisy, rho0=rho0, rho1=rho1)
        assert float(corrected.mean()) == pytest.approx(r, abs=0.01)
    noisy = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    grpo = algos.get("advantage", "grpo")
    plain = grpo(noisy, ids, eps=0.0)
    for mode in ("backward", "forward"):
        fixed = shaper("noisy_verifier")(noisy, mode=mode, rho0=rho0, rho1=rho1)
        assert torch.allclose(grpo(fixed, ids, eps=0.0), plain, atol=1e-6)


@pytest.mark.parametrize(("others", "sign"), [(["clean", "wrong", "wrong"], 1), (["clean", "clean", "wrong"], -1),
                                              (["clean", "wrong"], 0)])  # fmt: skip
def test_w3_fapo_rewards_and_the_flawed_positives_advantage_sign(others, sign):
    kinds = ["flawed", *others]
    correct = torch.tensor([k != "wrong" for k in kinds])
    comps = torch.tensor([[float(k != "wrong"), float(k == "flawed")] for k in kinds])
    r = shaper("fapo")(torch.zeros(len(kinds)), correct=correct, reward_components=comps)
    assert r.tolist() == [{"flawed": 0.0, "clean": 1.0, "wrong": -1.0}[k] for k in kinds]
    adv = algos.get("advantage", "grpo")(r, torch.zeros(len(kinds), dtype=torch.long))
    assert int(adv[0] > 1e-6) - int(adv[0] < -1e-6) == sign  # sign of n_wrong − n_clean


def test_group_centred_estimators_cancel_a_constant_shift_of_the_reward():
    # the registry fact the trainer's noisy_verifier warning rests on: r -> r + c leaves every `group_centred`
    # estimator's advantages unchanged (and the fact is declared on exactly the estimators where that holds here)
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    ids = torch.arange(12) // 4
    centred = [n for n in algos.names("advantage") if "group_centred" in algos.entry("advantage", n).facts]
    assert {"grpo", "dr_grpo", "rloo", "opo", "reinforce_pp_baseline", "gdpo"} <= set(centred)
    assert "bnpo" not in centred  # its Beta weight depends on the group's mean reward: a shift changes it
    for name in centred:
        fn = algos.get("advantage", name)
        extra = {"reward_weights": torch.ones(1)} if name == "gdpo" else {}
        r = rewards[:, None] if name == "gdpo" else rewards
        mask = torch.ones(12, 3)
        kw = {"mask": mask, **extra}
        base, shifted = fn(r, ids, **kw), fn(r + 3.0, ids, **kw)
        assert torch.allclose(base, shifted, atol=1e-5), name


def test_gcpo_aux_rewards_the_behaviour_by_its_group_contrast():
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    uses = torch.tensor([1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0.0])
    correct = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1]).bool()
    comps = torch.stack([correct.float(), uses], dim=1)
    got = shaper("gcpo_aux_recon")(correct.float(), correct=correct, group_ids=group_ids, reward_components=comps)
    # group 0: acc+ = 1 > acc- = 0.5: +1 for the users; group 1: acc+ = 0 < acc- = 1: -1; group 2: nobody without
    # the behaviour (masked); group 3: acc+ = acc- (masked)
    assert got.tolist() == [2.0, 2.0, 0.0, 1.0, -1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="list the correctness reward first"):
        shaper("gcpo_aux_recon")(correct.float(), correct=correct, group_ids=group_ids, reward_components=comps[:, :1])


def test_otc_tool_grpo_and_ppo_forms():
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    calls = torch.tensor([2, 3, 1, 0, 0, 2, 1.0])
    correct = torch.tensor([1, 1, 0, 0, 1, 1, 0]).bool()
    r = correct.double()
    comps = torch.stack([r, calls.double()], dim=1)
    got = shaper("otc_tool")(r, group_ids=group_ids, correct=correct, reward_components=comps)
    # group 0: n = 2 (fewest calls of a right reply); m = 3: f = 2·2·3/5 = 2.4, sin(2.4π/4); wrong replies: 0.
    # group 1: n = 0: m = 0 scores 1, m = 2 scores cos(2π/5); group 2: no right reply, R = 0
    want = [1.0, math.sin(0.6 * math.pi), 0.0, 0.0, 1.0, math.cos(0.4 * math.pi), 0.0]
    assert got.tolist() == pytest.approx(want)
    ppo = shaper("otc_tool")(torch.ones(3, dtype=torch.float64), group_ids=torch.zeros(3, dtype=torch.long),
                             correct=torch.ones(3, dtype=torch.bool), reward_components=torch.tensor(
                                 [[1, 0.0], [1, 1], [1, 2]], dtype=torch.float64), form="ppo", alpha=2.0)  # fmt: skip
    assert ppo.tolist() == pytest.approx([2.0, 2 * 0.5, 2 * math.cos(0.4 * math.pi)])  # cos(mπ/(2m + 1))


def test_icpo_bonus_for_right_demonstrations_anneals_to_zero_and_counts_steps():
    fn = shaper("icpo_expert_bonus_recon")
    r, correct = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([True, False, True])
    demo = torch.tensor([True, True, False])
    got, state = fn(r, correct=correct, demo_mask=demo, state=None, alpha=0.5, anneal_steps=4)
    assert got.tolist() == [1.5, 0.0, 1.0] and state == {"step": 1}
    got, state = fn(r, correct=correct, demo_mask=demo, state={"step": 2}, alpha=0.5, anneal_steps=4)
    assert got.tolist() == [1.25, 0.0, 1.0] and state == {"step": 3}
    got, _ = fn(r, correct=correct, demo_mask=demo, state={"step": 9}, alpha=0.5, anneal_steps=4)
    assert got.tolist() == [1.0, 0.0, 1.0]


def test_soft_multichoice_and_judge_expected_score_rules():
    chosen = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]).bool()
    key = torch.tensor([[1, 0, 1]] * 4).bool()
    assert shaper("soft_multichoice")(chosen, key).tolist() == [1.0, 0.5, 0.0, 0.0]
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]])
    got = shaper("judge_expected_score")(logits, torch.tensor([0.0, 1.0]))
    assert got.tolist() == pytest.approx([0.75, 0.5])


def test_rto_token_reward_by_hand():
    # β₁ = 0.5, β₃ = 2; log π_dpo − log π_ref = [[0.2, −0.4, 0.6], [1, 1, 1], [0.2, 0.2, 0.2]]; lengths 3, 2 (its third
    # position is padding), 1; outcomes 1, 0, NaN (unscored: the whole row is NaN)
    ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5]])
    dpo = ref + torch.tensor([[0.2, -0.4, 0.6], [1.0, 1.0, 1.0], [0.2, 0.2, 0.2]])
    got = shaper("rto_token_reward")(torch.tensor([1.0, 0.0, nan]), lengths=torch.tensor([3, 2, 1]), ref_logp=ref,
                                     teacher_logp=dpo, beta_dpo=0.5, beta_outcome=2.0)  # fmt: skip
    torch.testing.assert_close(got[:2], torch.tensor([[0.1, -0.2, 0.3 + 2.0], [0.5, 0.5, 0.0]]))
    assert got[2].isnan().all()
    assert "token_rewards" in algos.entry("reward", "rto_token_reward").facts
    with pytest.raises(ValueError, match="must both be"):
        shaper("rto_token_reward")(torch.ones(3), lengths=torch.ones(3), ref_logp=ref, teacher_logp=dpo[:, :2])


def test_reseek_judge_adds_each_judgements_reward_to_the_answer_reward_by_hand():
    """reseek_judge: R_judge = 0.3 for agreement, −0.6 for "useful" on a useless result, −0.3 for "useless" on a
    useful one (the official regex variant), summed over the judged steps of a trajectory that answered; an unjudged
    step adds 0, NaN stays NaN."""
    from unipo.algos import get

    def judged(said, reference):
        return {"judgement": {"said": said, "reference": reference}, "forget": not said}

    rewards = torch.tensor([1.0, 0.0, 1.0, float("nan"), 0.0])
    answered = {"answered": True}
    turn_info = [
        [judged(False, False), judged(True, True), answered],  # 1 + 0.3 + 0.3
        [judged(True, False), {**judged(False, True), **answered}],  # 0 − 0.6 − 0.3
        [{"tool_calls": 1}, answered],  # no judgement
        [judged(True, True), answered],
        [judged(False, False), judged(False, False)],  # never answered: no judge reward (the official code's rule)
    ]
    out = get("reward", "reseek_judge")(rewards, turn_info=turn_info)
    torch.testing.assert_close(out[[0, 1, 2, 4]], torch.tensor([1.6, -0.9, 1.0, 0.0]))
    assert out[3].isnan()
    every = get("reward", "reseek_judge")(rewards[4:], turn_info=turn_info[4:], answered_only=False)
    torch.testing.assert_close(every, torch.tensor([0.6]))
    custom = get("reward", "reseek_judge")(rewards[:2], turn_info=turn_info[:2], right=1.0, false_yes=-1.0,
                                           false_no=-1.0)  # fmt: skip
    torch.testing.assert_close(custom, torch.tensor([3.0, -2.0]))  # the paper's ±1 agreement
