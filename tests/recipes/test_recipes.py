"""Every shipped recipe loads, names registered components, cites its paper, and trains two steps on a tiny model."""

import json
import math

import pytest
import yaml

from tests.recipes import wiring
from unipo import algos, config
from unipo.cli import main
from unipo.data.tasks import get_task
from unipo.trainers import rl
from unipo.trainers import update as update_module
from unipo.trainers.common import build_algo
from unipo.trainers.inputs import NEEDS_REFERENCE

REQUIRED = """grpo dr_grpo dapo lite_ppo bnpo gdpo gspo luspo cispo sapo gmpo vespo bapo etr_recon gtpo nft rec opmd
mdpo clip_cov kl_cov lp_reg llds rloo reinforce_pp reinforce_pp_baseline opo grpo_passk gpg flash_reinforce steer xrpo
a_grae copo dispo r2vpo dcpo p3o ppo t_ppo remax ppo_max hpt red ghpo dr_po igpo knapsack_grpo arpo_replay
pf_ppo aepo scaf_grpo igrpo onpolicy_distill spo_segment rto""".split()


def test_every_required_recipe_ships():
    assert set(REQUIRED) <= set(config.list_recipes())


@pytest.mark.parametrize("name", config.list_recipes())
def test_recipe_loads_and_cites_its_paper(name):
    cfg = config.load(name)
    assert cfg.recipe == name and cfg.paper, f"{name}.yaml needs a `paper:` citation"
    text = config.recipe_path(name).read_text()
    assert text.startswith("#"), f"{name}.yaml should open with a comment naming its method and paper"
    # a recipe built on a reconstruction says so
    uses_recon = "_recon" in yaml.safe_dump(yaml.safe_load(text).get("algo", {}))
    assert not uses_recon or "RECONSTRUCTION" in text or "Reconstruction" in cfg.paper


OFFLINE_AND_RL = [n for n in config.list_recipes() if config.load(n).trainer in ("rl", "preference")]
"""Online recipes train in tests/integration/test_online_preference_runs.py (with a judge and exact values); staged
ones run shipped recipes (below)."""
STAGED = [n for n in config.list_recipes() if config.load(n).trainer == "staged"]


@pytest.mark.parametrize("name", STAGED)
def test_a_staged_recipe_runs_shipped_recipes(name):
    # each stage is a shipped recipe, whose wiring and learning this file and test_learning.py check; the staged run
    # itself (data split, start and reference models, resume) is tests/integration/test_staged.py
    stages = config.load(name).stages
    assert len(stages) >= 2 and all(s.recipe in config.list_recipes() for s in stages)
    assert all(config.load(s.recipe).trainer in ("rl", "preference") for s in stages)


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_AND_RL)
def test_recipe_trains_two_steps_on_a_tiny_model(name, tiny_model_dir, tmp_path, monkeypatch):
    if config.load(name).trainer == "preference":
        return _preference_recipe_trains_two_steps(name, tiny_model_dir, tmp_path, monkeypatch)
    run = tmp_path / "run"
    sampler = config.load(name).algo.sampler
    facts = algos.entry("sampler", sampler.name).facts if sampler is not None else frozenset()
    demos = "demonstrations" in facts
    task = "arithmetic" if facts & NEEDS_REFERENCE else "lucky7"  # samplers that read rows' answers
    recipe = config.load(name)
    if recipe.algo.credit is not None or get_task(recipe.task, recipe.data).env is not None:  # multi-turn: its env
        task = recipe.task
    args = ["train", name, f"model.path={tiny_model_dir}", f"task={task}", f"output_dir={run}", "train.max_steps=2"]
    args += ["train.prompts_per_step=2", "rollout.max_new_tokens=6", "eval.num_problems=0", "train.lr=1e-2"]
    # a dense reward that differs between completions, so no advantage is all zero and every component runs
    rewards = ["{_component_: tests.integration.rewards_for_tests.reply_length}"]
    if config.load(name).rewards:  # recipes with their own rewards (gdpo) get two
        rewards.append("{_component_: unipo.rewards.only_number}")
    args.append(f"rewards=[{', '.join(rewards)}]")
    if "teacher_logp" in build_algo(config.load(name)).needs:  # a frozen second model (a teacher, RTO's DPO model)
        args.append(f"model.teacher_path={tiny_model_dir}")
    if config.load(name).rollout.group_size == 1:
        args.append("train.prompts_per_step=8")
    # For the wiring check: one epoch (the first optimizer step is the same for any number; with one, the logged
    # loss is that step's), float32 (no bf16 autocast), micro-batches of 3 that cut groups. A token weight that
    # normalises over the tokens of the current log-probs (STEER) sees one micro-batch at a time: for it the
    # micro-batch is the whole batch.
    per_pass = any(algos.entry("token_weight", t.name).needs(t.model_extra) & {"logp", "entropy"}
                   for t in config.load(name).algo.token_weights)  # fmt: skip
    args += ["train.ppo_epochs=1", f"train.micro_batch_size={64 if per_pass else 3}", "model.autocast=off"]
    args.append("critic.warmup_steps=0")  # a recipe's critic warm-up (ArCHer) would leave the policy unchecked
    turn_by_turn = (
        recipe.algo.credit is not None and "turn_sequential" in algos.entry("credit", recipe.algo.credit.name).facts
    )
    seen = wiring.record(monkeypatch, update_module if turn_by_turn else rl)  # SeeUPO: the second pass of `update`
    assert main(args) == 0
    # wiring: the first step's loss and gradient are the recipe's components composed by hand on the same batch
    resolved_cfg = config.load(name, [a for a in args[2:] if not a.startswith(("output_dir", "model.path"))])
    wiring.assert_same_step(wiring.by_hand(resolved_cfg, seen), seen["out"]["loss"], seen["grads"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
        assert 0.0 < r["reward/mean"] <= 1.5 or (demos and r["sampler/demo_frac"] == 1.0)
        if name == "t_ppo" and r["tokens/truncated_frac"] == 1.0:
            # every reply of the random tiny model is cut off: T-PPO bootstraps each from the fresh critic (V ≡ 0)
            # and never trains the critic on them, so there is exactly nothing to learn yet
            assert r["tokens/trained_frac"] == 0.0 and r["critic/values_mean"] == 0.0
        else:
            assert r["tokens/trained_frac"] > 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["recipe"] == name


def _preference_recipe_trains_two_steps(name, tiny_model_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = ["train", name, f"model.path={tiny_model_dir}", f"output_dir={run}", "train.max_steps=2"]
    args += ["train.prompts_per_step=4", "eval.num_problems=4", "eval.max_new_tokens=4"]
    loss = config.load(name).algo.preference.name
    if loss in ("copg", "lipo_lambda", "brain_recon", "dro_offline"):  # scored lists (copg: on best and worst)
        lists = tmp_path / "lists.jsonl"
        lists.write_text("".join(json.dumps({"prompt": f"say {i}:", "responses": ["7 7", f"no {i}", "x"],
                                             "scores": [2, 1, 0]}) + "\n" for i in range(20)))  # fmt: skip
        args.append(f"data.path={lists}")
    if loss == "tgdpo":
        args.append(f"model.guide_path={tiny_model_dir}")
    # float32, micro-batches of one pair, and a first step large enough that the second (the one checked) starts from
    # a policy that is not the reference
    args += ["model.autocast=off", "train.micro_batch_size=2", "train.lr=1e-2"]
    seen = wiring.record_preference(monkeypatch)
    assert main(args) == 0
    resolved_cfg = config.load(name, [a for a in args[2:] if not a.startswith(("output_dir", "model.path"))])
    assert wiring.preference_inputs(resolved_cfg) <= wiring.PREFERENCE_BY_HAND  # wiring, as for the RL recipes
    wiring.assert_same_step(wiring.by_hand_preference(resolved_cfg, seen), seen["out"][0]["loss"], seen["grads"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)


ONLINE = [n for n in config.list_recipes() if config.load(n).trainer == "online_preference"]
JUDGE = "online.judge=tests.integration.rewards_for_tests.lexical_judge"
"""A judge that orders distinct replies strictly, so every group gives a pair and win rates that are not ½."""


@pytest.mark.slow
@pytest.mark.parametrize("name", ONLINE)
def test_online_recipe_update_is_its_loss_composed_by_hand(name, tiny_model_dir, tmp_path, monkeypatch):
    # the second step's loss and gradient (the policy is then neither the reference nor, across an iteration, π_t)
    args = ["train", name, f"model.path={tiny_model_dir}", "task=lucky7", f"output_dir={tmp_path / 'run'}"]
    args += ["train.max_steps=2", "train.prompts_per_step=2", "rollout.max_new_tokens=6", "eval.num_problems=0"]
    args += ["train.lr=1e-2", "train.ppo_epochs=1", "model.autocast=off", "online.oracle=judge", JUDGE]
    args += ["rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]  # REBEL, A*-PO: dense
    if config.load(name).rollout.group_size == 1:
        args.append("train.prompts_per_step=8")
    else:
        args.append("rollout.group_size=4")
    spo = "rewards_for_rl" in algos.entry("online", config.load(name).algo.online.name).facts
    if spo:  # SPO's win rates are rewards for the RL update
        from unipo.trainers import online_preference

        seen = wiring.record(monkeypatch, online_preference)
    else:
        seen = wiring.record_online(monkeypatch)
    assert main(args) == 0
    resolved_cfg = config.load(name, [a for a in args[2:] if not a.startswith(("output_dir", "model.path"))])
    composed = wiring.by_hand(resolved_cfg, seen) if spo else wiring.by_hand_online(resolved_cfg, seen)
    wiring.assert_same_step(composed, seen["out"]["loss"], seen["grads"])
