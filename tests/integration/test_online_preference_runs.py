"""Online preference runs on the tiny model through the CLI: every online recipe, the first-pass loss each loss
must give (the policy still equals π_t and π_ref there), pairs and win rates from the oracle, judges that fail,
learning, and resume in the middle of a Nash-MP iteration."""

import json
import math

import pytest

from unipo import config
from unipo.cli import main
from unipo.trainers import online_preference

pytestmark = pytest.mark.slow
JUDGE = "tests.integration.rewards_for_tests.lexical_judge"
ONLINE_RECIPES = ["sppo", "inpo", "dno", "nash_md", "nash_mp_recon", "spo_selfplay", "xpo", "selm", "online_dpo",
                  "rebel", "mmd", "iterative_dpo"]  # fmt: skip
NO_JUDGE = ["spin", "a_star_po"]
"""Online recipes without a judge: SPIN's winner is the data, A*-PO regresses rewards on V*."""
DENSE = "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"
"""A reward that differs between two replies (REBEL regresses on reward differences; lucky7's are mostly 0)."""


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(tiny_model_dir, run, recipe, *extra):
    args = ["train", recipe, f"model.path={tiny_model_dir}", "task=lucky7", f"output_dir={run}"]
    args += ["rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=0", "train.prompts_per_step=2"]
    args += ["train.lr_schedule=constant", *extra]
    assert main(args) == 0
    return [r for r in _rows(run) if "loss" in r]


def test_every_online_recipe_loads_and_names_a_paper():
    assert set(ONLINE_RECIPES + NO_JUDGE) <= set(config.list_recipes())
    for name in ONLINE_RECIPES + NO_JUDGE:
        cfg = config.load(name)
        loss = "xpo" if name == "online_dpo" else name  # online DPO is XPO with alpha = 0
        assert cfg.trainer == "online_preference" and cfg.algo.online.name == loss and "arXiv" in cfg.paper


@pytest.mark.parametrize("recipe", ONLINE_RECIPES)
def test_every_online_recipe_trains_with_a_judge(tiny_model_dir, tmp_path, recipe):
    # the lexical judge orders distinct replies strictly, so every group yields a pair and non-tied win rates
    dense = [DENSE] if recipe == "rebel" else []
    rows = _train(tiny_model_dir, tmp_path / "run", recipe, "train.max_steps=2", "online.oracle=judge",
                  f"online.judge={JUDGE}", "train.ppo_epochs=2", *dense)  # fmt: skip
    assert len(rows) == 2
    for r in rows:
        assert r["oracle/failures"] == 0 and r["grad_norm"] > 0 and r["win_rate/std"] > 0
        if "pairs/kept_frac" in r:
            assert r["pairs/kept_frac"] == 1.0
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()


def _first_step(tiny_model_dir, tmp_path, recipe, *extra):
    return _train(tiny_model_dir, tmp_path / recipe, recipe, "train.max_steps=1", "online.oracle=judge",
                  f"online.judge={JUDGE}", *extra)[0]  # fmt: skip


def test_first_pass_losses_match_their_values_at_the_anchor(tiny_model_dir, tmp_path):
    import math

    # π_θ = π_t = π_ref on the first pass, so the log-ratios vanish and each loss has a closed value
    n = 2 * 4  # prompts x group
    loo = ["algo.online.eta=2.0", "online.win_rate=loo", "online.train_on=all"]
    sppo = _first_step(tiny_model_dir, tmp_path, "sppo", *loo)
    # (η(w − ½))² averaged; the group's win rates average ½, so this is η²·(population variance of w)
    assert sppo["loss"] == pytest.approx(4.0 * sppo["win_rate/std"] ** 2 * (n - 1) / n, rel=1e-5)
    # the recipe (official code): the strict judge makes each group's best win all 3 others, P̂_incl = (3 + ½)/4 =
    # .875, its worst .125, and only those two are trained: ((2·.375)² + (2·.375)²)/2 = .5625
    paper = _first_step(tiny_model_dir, tmp_path / "paper", "sppo", "algo.online.eta=2.0")
    assert paper["loss"] == pytest.approx(0.5625, rel=1e-5)
    inpo = _first_step(tiny_model_dir, tmp_path, "inpo", "algo.online.eta=0.6")
    assert inpo["loss"] == pytest.approx((0.6 / 2) ** 2, rel=1e-5)  # h = 0: (η/2)²
    for recipe in ("dno", "selm", "online_dpo"):  # online_dpo: XPO at α = 0, no exploration sample drawn
        alpha = ["algo.online.alpha=0.0"] if recipe == "selm" else []
        assert _first_step(tiny_model_dir, tmp_path, recipe, *alpha)["loss"] == pytest.approx(math.log(2), rel=1e-5)
    spo = _first_step(tiny_model_dir, tmp_path, "spo_selfplay")
    assert spo["loss"] == pytest.approx(0.0, abs=1e-6)  # ratio 1: −mean(A), and group-normalised A sum to 0


def test_pairs_are_the_best_and_worst_of_each_group_above_the_margin():
    import torch

    cfg = config.load("dno", ["online.min_margin=0.3"])
    s = type("S", (), {"cfg": cfg, "loss": online_preference.build_loss(cfg)})()
    batch = type("B", (), {"num_completions": 16})()
    win = torch.tensor([0.2, 0.9, 0.5, 0.4] + [0.5, 0.6, 0.4, 0.5] + [0.0, 1.0, 0.5, 0.5] + [0.7, 0.1, 0.6, 0.6])
    cfg.rollout.group_size = 4
    units, first = online_preference._units(s, batch, win, explore=False)
    assert units.tolist() == [[1, 0], [9, 8], [12, 13]]  # group 1 (spread 0.2 <= 0.3) dropped
    assert first.tolist() == pytest.approx([0.9, 1.0, 0.7])
    units, _ = online_preference._units(s, batch, win, explore=True)
    assert units.tolist() == [[1, 0, 16], [9, 8, 18], [12, 13, 19]]  # exploration rows follow the N responses
    # SPPO as the official code trains: each group's best and worst by win rate, as single responses
    cfg = config.load("sppo", ["rollout.group_size=4"])
    s = type("S", (), {"cfg": cfg, "loss": online_preference.build_loss(cfg)})()
    units, first = online_preference._units(s, batch, win, explore=False)
    assert units.flatten().tolist() == [1, 0, 5, 6, 9, 8, 12, 13]
    assert first.tolist() == pytest.approx([0.9, 0.2, 0.6, 0.4, 1.0, 0.0, 0.7, 0.1])


def test_missing_hyperparameter_and_oracle_settings_are_config_errors(tiny_model_dir, tmp_path, capsys):
    base = ["train", "--", f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'r'}", "task=lucky7"]
    assert main(base[:1] + ["sppo", "algo.online.name=dno"] + base[2:]) == 2
    err = capsys.readouterr().err
    assert "algo.online: 'dno' cannot run" in err and "beta" in err
    assert main(base[:1] + ["sppo", "online.oracle=judge"] + base[2:]) == 2
    assert "online.judge: set the dotted path" in capsys.readouterr().err
    assert main(base[:1] + ["sppo", "online.oracle=judge", "online.judge=no.such.judge"] + base[2:]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(base[:1] + ["nash_md", "online.win_rate=incl_self"] + base[2:]) == 2
    assert "incl_self applies to group win rates" in capsys.readouterr().err
    assert main(base[:1] + ["dno", "online.train_on=best_worst"] + base[2:]) == 2
    assert "best_worst applies to sppo and nash_mp_recon" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_failing_judge_does_not_stop_the_run(tiny_model_dir, tmp_path, capsys):
    rows = _train(tiny_model_dir, tmp_path / "run", "dno", "train.max_steps=2", "online.oracle=judge",
                  "online.judge=tests.integration.rewards_for_tests.flaky_judge")  # fmt: skip
    assert len(rows) == 2 and all(r["oracle/failures"] > 0 for r in rows)
    assert "failures" in capsys.readouterr().err


def test_sppo_learns_the_toy_task_with_the_task_reward_as_oracle(tiny_model_dir, tmp_path):
    # the task's reward (share of "7" in the reply) as a Bradley-Terry judge; it starts near 0 for a random model
    rows = _train(tiny_model_dir, tmp_path / "run", "sppo", "train.max_steps=40", "train.lr=1e-2",
                  "rollout.group_size=8")  # fmt: skip
    assert sum(r["reward/task_mean"] for r in rows[:3]) / 3 < 0.1
    assert sum(r["reward/task_mean"] for r in rows[-5:]) / 5 > 0.8


def test_resume_in_the_middle_of_a_nash_mp_iteration_reproduces_the_straight_run(tiny_model_dir, tmp_path):
    # anchor_every=2: a checkpoint at step 3 holds the anchor π_k (taken at step 3) and the reference refreshed at
    # step 3, both of which the resumed step 4 needs
    common = ["online.oracle=judge", f"online.judge={JUDGE}", "online.ref_refresh_every=2", "train.lr=1e-3"]
    straight = _train(tiny_model_dir, tmp_path / "a", "nash_mp_recon", "train.max_steps=4", *common)
    _train(tiny_model_dir, tmp_path / "b", "nash_mp_recon", "train.max_steps=3", *common)
    resumed = _train(tiny_model_dir, tmp_path / "b", "nash_mp_recon", "train.max_steps=4", *common)
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-6)


def test_xpo_samples_its_exploration_response_only_when_alpha_is_not_zero(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    real = online_preference.sample
    monkeypatch.setattr(online_preference, "sample", lambda *a, **k: calls.append(k["n"]) or real(*a, **k))
    _first_step(tiny_model_dir, tmp_path, "online_dpo")
    assert calls == [4]  # the group only
    calls.clear()
    _first_step(tiny_model_dir, tmp_path, "xpo")
    assert calls == [4, 1]  # the group, then one response per prompt from π_ref


def test_group_methods_need_two_responses_per_prompt(tiny_model_dir, tmp_path, capsys):
    args = ["train", "sppo", f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'r'}", "rollout.group_size=1"]
    assert main(args) == 2
    assert "rollout.group_size: 'sppo' compares responses within a group" in capsys.readouterr().err


def _game_mass(model_dir, prompt):
    """The policy's one-token answer distribution over the game's responses a, b, c and everything else."""
    import torch

    from unipo.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    with torch.no_grad():
        p = torch.softmax(model(**tok(prompt, return_tensors="pt")).logits[0, -1].float(), -1).double()
    texts = [tok.decode([i]).strip() for i in range(p.shape[0])]
    listed = torch.stack([sum(p[i] for i, t in enumerate(texts) if t == r) for r in "abc"])
    return torch.cat([listed, (1 - listed.sum()).view(1)])


def test_nash_mp_on_a_language_model_reaches_the_regularised_equilibrium_of_an_exact_game(tiny_model_dir, tmp_path):
    # The RPS-like game of ALGORITHMS.md §13 on one-token answers, judged by the exact-matrix oracle; any other answer
    # loses to a, b and c. The game's β-regularised equilibrium against the initial model's own answer distribution
    # (other answers lumped into one response, as they are interchangeable) is Nash-MP's fixed point.
    import torch

    from unipo.testbeds.games import RPS_LIKE, regularized_nash

    game = tmp_path / "game.json"
    game.write_text(json.dumps({"responses": ["a", "b", "c"], "matrix": RPS_LIKE.tolist()}))
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": "pick:", "answer": "-"}) + "\n" for _ in range(20)))
    extended = torch.full((4, 4), 0.5, dtype=torch.float64)
    extended[:3, :3], extended[:3, 3], extended[3, :3] = RPS_LIKE, 1.0, 0.0
    start = _game_mass(tiny_model_dir, "pick:")
    target = regularized_nash(extended, start, tau=0.1)  # β = 0.1 in the recipe
    run = tmp_path / "run"
    args = ["train", "nash_mp_recon", f"model.path={tiny_model_dir}", f"task={task}", f"output_dir={run}",
            "online.oracle=matrix", f"online.matrix={game}", "rollout.max_new_tokens=1", "rollout.group_size=8",
            "train.max_steps=150", "train.lr=3e-3", "train.lr_schedule=constant", "eval.num_problems=0"]  # fmt: skip
    assert main(args) == 0
    end = _game_mass(str(run / "checkpoints" / "step-000150"), "pick:")
    assert 0.5 * float((start - target).abs().sum()) > 0.5  # the initial model is far from it (TV ≈ 0.6)
    assert 0.5 * float((end - target).abs().sum()) < 0.15  # measured 0.04-0.09 over three seeds


def test_a_step_with_nothing_to_learn_leaves_the_weights_alone(tiny_model_dir, tmp_path):
    # every pair tied: no pair is kept, and AdamW must not move the weights on zero gradients (momentum, decay)
    import torch
    from safetensors.torch import load_file

    rows = _train(tiny_model_dir, tmp_path / "run", "dno", "train.max_steps=2", "online.oracle=judge",
                  "online.judge=tests.integration.rewards_for_tests.tie_judge", "train.weight_decay=0.1")  # fmt: skip
    assert [r["pairs/kept_frac"] for r in rows] == [0.0, 0.0]
    before = load_file(f"{tiny_model_dir}/model.safetensors")
    after = load_file(str(tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_reward_model_oracle_from_the_command_line(tiny_model_dir, tmp_path):
    from unipo.models.tiny import build_tiny_reward_model

    rm = build_tiny_reward_model(tmp_path / "rm")
    rows = _train(tiny_model_dir, tmp_path / "run", "dno", "train.max_steps=2", "online.oracle=reward_model",
                  f"online.reward_model={rm}", "online.min_margin=0")  # fmt: skip
    # a random reward model still scores every reply differently, so every group has a pair to train
    assert all(r["oracle/failures"] == 0 and r["pairs/kept_frac"] == 1.0 and r["win_rate/std"] > 0 for r in rows)


def _completions(run):
    return [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]


def test_spin_pairs_the_data_with_each_reply_and_learns_to_say_it(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "seven.jsonl"
    words = ["pick", "say", "give", "write", "number", "digit", "now", "please"]
    data.write_text("".join(json.dumps({"prompt": f"{a} {b}:", "answer": "7"}) + "\n" for a in words for b in words))
    pairs = []
    real = online_preference._update

    def spy(s, batch, units, win, per_row):
        pairs.append((batch.texts, units.tolist(), batch.num_completions))
        return real(s, batch, units, win, per_row)

    monkeypatch.setattr(online_preference, "_update", spy)
    first = _train(tiny_model_dir, tmp_path / "one", "spin", f"task={data}", "train.max_steps=1")[0]
    texts, units, n = pairs[0]
    # 2 prompts x 4 replies: each reply (loser) paired with its prompt's answer, the rows after the replies
    assert n == 10 and units == [[8 + i // 4, i] for i in range(8)] and texts[8:] == ["7", "7"]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)  # π_θ = π_t on the first pass
    assert "win_rate/std" not in first and "pairs/kept_frac" not in first
    monkeypatch.setattr(online_preference, "_update", real)
    rows = _train(tiny_model_dir, tmp_path / "learn", "spin", f"task={data}", "train.max_steps=40", "train.lr=1e-2",
                  "rollout.group_size=1", "train.prompts_per_step=8")  # fmt: skip
    assert sum(r["reward/task_mean"] for r in rows[:5]) / 5 < 0.1
    assert sum(r["reward/task_mean"] for r in rows[-5:]) / 5 > 0.5


def test_a_star_po_first_loss_is_the_squared_advantage_and_it_learns(tiny_model_dir, tmp_path, monkeypatch):
    from unipo.algos import nash

    # one prompt, one reply: on the first pass log(π_θ/π_ref) = 0, so the loss is (r − V*)² with V* from 8 replies
    # of π_ref scored by the same reward
    calls = []
    real = nash.optimal_value
    monkeypatch.setattr(online_preference, "optimal_value", lambda r, b: calls.append((r.clone(), b)) or real(r, b))
    run = tmp_path / "one"
    (row,) = _train(tiny_model_dir, run, "a_star_po", "train.max_steps=1", "train.prompts_per_step=1",
                    "rollout.group_size=1", "online.value_filter=false", DENSE)  # fmt: skip
    (rewards, beta1), (sample,) = calls[0], _completions(run)
    assert rewards.shape == (1, 8) and beta1 == 0.5
    v_star = 0.5 * math.log(sum(math.exp(r / 0.5) for r in rewards[0].tolist()) / 8)
    assert row["value/v_star_mean"] == pytest.approx(v_star, rel=1e-6)
    assert row["loss"] == pytest.approx((sample["reward"] - v_star) ** 2, rel=1e-5)
    # a prompt drawn again is not estimated again, and the estimates survive a restart: over steps 1..40 (step 1 in
    # the first run, the rest resumed) stage 1 runs once per distinct prompt, fewer than the 40 steps
    _train(tiny_model_dir, run, "a_star_po", "train.max_steps=40", "train.prompts_per_step=1",
           "rollout.group_size=1", "online.value_filter=false", DENSE)  # fmt: skip
    prompts = {c["step"]: c["prompt"] for c in _completions(run)}
    assert sorted(prompts) == list(range(1, 41)) and len(set(prompts.values())) < 40
    assert len(calls) == len(set(prompts.values()))
    # learning: lucky7's reward (share of sevens), one reply per prompt; prompts whose 8 replies of π_ref all score
    # 0 would be skipped, so the filter is off for the random tiny model
    rows = _train(tiny_model_dir, tmp_path / "learn", "a_star_po", "train.max_steps=40", "train.prompts_per_step=16",
                  "train.lr=1e-2", "rollout.group_size=1", "online.value_filter=false")  # fmt: skip
    assert sum(r["reward/task_mean"] for r in rows[:3]) / 3 < 0.1
    assert sum(r["reward/task_mean"] for r in rows[-5:]) / 5 > 0.8


def test_a_star_po_skips_prompts_whose_reference_replies_all_fail(tiny_model_dir, tmp_path):
    # lucky7 with the random tiny model: most prompts' 8 replies of π_ref hold no seven (reward 0 each); a step whose
    # only prompt is skipped trains nothing
    rows = _train(tiny_model_dir, tmp_path / "run", "a_star_po", "train.max_steps=6", "train.prompts_per_step=1",
                  "rollout.group_size=1")  # fmt: skip
    skipped = [r for r in rows if r["value/prompts_kept_frac"] == 0]
    assert skipped and all(r["loss"] == 0 and r["grad_norm"] == 0 and r["value/v_star_mean"] == 0 for r in skipped)


def test_iterative_dpo_samples_each_iteration_from_its_start_and_is_online_dpo_with_one_step(
    tiny_model_dir, tmp_path, monkeypatch
):
    judge = ["online.oracle=judge", f"online.judge={JUDGE}", "train.lr=1e-3"]
    one = ["online.anchor_every=1", "rollout.group_size=2"]
    ours = _train(tiny_model_dir, tmp_path / "a", "iterative_dpo", "train.max_steps=3", *judge, *one)
    online = _train(tiny_model_dir, tmp_path / "b", "online_dpo", "train.max_steps=3", *judge, *one)
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in online], rel=1e-6)
    # anchor_every = 2: steps 1 and 2 sample from the policy as it was at step 1, so a run with a large learning rate
    # samples step 2's replies exactly as an untrained run does (same seeds); step 3 samples the trained iterate
    replies = {}
    for lr in ("1e-1", "1e-30"):
        run = tmp_path / lr
        _train(
            tiny_model_dir, run, "iterative_dpo", "train.max_steps=3", "online.anchor_every=2", *judge, f"train.lr={lr}"
        )
        replies[lr] = {step: [c["completion"] for c in _completions(run) if c["step"] == step] for step in (1, 2, 3)}
    assert replies["1e-1"][1] == replies["1e-30"][1] and replies["1e-1"][2] == replies["1e-30"][2]
    assert replies["1e-1"][3] != replies["1e-30"][3]
