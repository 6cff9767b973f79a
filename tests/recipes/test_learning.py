"""Every recipe learns a toy task (issue 12, "recipes checked by what they do"), or its header says why it cannot.

- RL recipes: `lucky7` (the reward is the share of 7s in the reply), from a tiny model whose logit of "7" is raised
  (`token_biases`; p(7) ≈ 0.01–0.02 after a prompt), so the first hits do not hang on the seed's luck (from the plain
  tiny model `clip_cov` reached 0.05 with one seed and 0.42 with another). The mean reward of the policy's own
  samples over the last 5 of 20 steps must exceed that of the first step (before any update) by 0.25.
- Offline preference recipes: scored lists where the best response is sevens, the middle one starts with a 7 and
  the worst has none; after 15 steps the held-out preference accuracy of the implicit reward must be ≥ 0.9 (at the
  start every margin is 0 up to rounding, so it is near 0; a loss with its sign flipped ends near 0).
- Multi-turn recipes: a two-turn lucky7 (`envs_for_tests.Sevens`: each turn's reward is its share of 7s over the
  number of turns, and a turn the token budget cuts ends the episode unscored), from a tiny model whose logits of "7"
  and of the end-of-turn token are raised; 40 steps at 3e-3; as the RL recipes.
- Online preference recipes: `lucky7` with the task's reward as the preference oracle, 40 steps; as the RL recipes.
- Staged recipes (MPO): pairs on lucky7-like prompts, half easy (sevens over words) and half hard (a 7 and a word
  over words), 20 steps per stage: the first stage's held-out preference accuracy as above, and the last stage's
  mean reward over its last 5 steps ≥ 0.8 (the starting model's is about 0.02).

Every run uses a fixed seed, a constant learning rate of 1e-2 (the recipes' own rates are for real models) and
otherwise the recipe's components and hyperparameters. A recipe that cannot learn here says why in a header line
`# No learning check: <reason>`.
"""

import json
import random

import pytest

from unipo import config
from unipo.cli import main
from unipo.data.tasks import get_task
from unipo.models.tiny import build_tiny_model
from unipo.trainers.common import build_algo

pytestmark = pytest.mark.slow

EXEMPT = "# No learning check:"
TOY_TASK = {
    "gdpo": ["rewards=[{name: share_of_target}, {name: share_of_target, weight: 0.5}]"],
    "ppo_max": ["train.lr=3e-3", "critic.lr=3e-3"],
    "opmd": ["train.lr=3e-3"],
    "nash_md": ["algo.online.beta=0.01"],
    "mmd": ["algo.online.alpha=0.01"],
    "nash_mp_recon": ["algo.online.beta=0.01"],
    "brain_recon": ["train.lr=3e-3"],
    "pf_ppo": ["train.prompts_per_step=4"],
}
"""What the toy task needs of a recipe beyond the common settings: GDPO normalises each reward column on its own and
needs two (its recipe's are for math); PPO-max at 1e-2 reached a mean reward of 0.55 within 5 steps and then fell
to 0.02 (seed 0; 1.0 and 0.76 with seeds 1 and 2), at 3e-3 it rose to 0.89–1.0 with all three; OPMD
takes two updates per batch, which at 1e-2 also overshoot (its reward fell to 0 and stayed there). Nash-MD, MMD and
Nash-MP regularise the preference game towards π_ref with the recipes' β (or α) = 0.1, and this game's regularised
equilibrium at 0.1 has a mean reward of 0.12 (tests/unit/testbeds/test_games.py, from a reference that writes a 7 with
p = 0.015): at 0.1 their rewards wandered between 0 and 0.4 around it, and at 0.01 (equilibrium: only 7s) they rise.
BRAIn (offline) ended at a held-out accuracy of 0.83 at 1e-2 (1.0 with seed 1) and 1.0 at 3e-3. PF-PPO resamples the
batch with weights r², so with lucky7's rewards in [0, 1] a batch with a single rewarded reply becomes copies of it,
identical advantages that whitening centres on 0: it learns from the first batch with two different rewarded
replies. From 2 × 8 replies that came at step 2 with seed 2 and never with seed 0 (0.00 over the last 5 steps; 0.98
and 0.99 with seeds 1 and 2); from 4 × 8 the last 5 steps average 0.98–0.99 with seeds 0, 1 and 2."""


@pytest.fixture(scope="module")
def sevens_model_dir(tmp_path_factory):
    """The tiny model with the logit of "7" raised by 0.75: p(7) ≈ 0.01–0.02 after a prompt (a bias of 1.25 reached
    all sevens in 2 GRPO steps and then collapsed at lr 1e-2)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny7") / "model", token_biases={"7": 0.75}))


@pytest.fixture(scope="module")
def teacher_dir(sevens_model_dir, tmp_path_factory):
    """The teacher of the recipes that take one (on-policy distillation, RTO's DPO model): a DPO model of the RL
    recipes' starting model, 15 DPO steps on the scored lists below (sevens preferred), so that RTO's token reward
    β·log(π_dpo/π_ref) is the implicit reward of a DPO model trained from π_ref and a distilled policy writes 7s.
    The tiny model with a larger bias on "7" was no such teacher: its raised row is also its input embedding (tied),
    so after a 7 it predicts differently; its log-ratio to π_ref on lucky7 samples was about −5 on each 7 and −10 on
    the token after it (RTO's reward stayed at 0), and distilling it fell to 0 with seeds 0 and 1 (with this teacher:
    0.84–0.93 over the last 5 steps with seeds 0, 1, 2)."""
    base = tmp_path_factory.mktemp("dpo7")
    run = base / "run"
    assert main(["train", "dpo", f"model.path={sevens_model_dir}", f"data.path={_lists(base / 'lists.jsonl')}",
                 f"output_dir={run}", "train.max_steps=15", "train.lr=1e-2", "train.lr_schedule=constant",
                 "train.prompts_per_step=8", "data.eval_frac=0", "eval.num_problems=0"]) == 0  # fmt: skip
    return str(run / "checkpoints" / "step-000015")


def _recipes(trainer):
    return [n for n in config.list_recipes() if config.load(n).trainer == trainer]


def _multiturn(name):
    recipe = config.load(name)
    return recipe.algo.credit is not None or get_task(recipe.task, recipe.data).env is not None


SINGLE_TURN = [n for n in _recipes("rl") if not _multiturn(n)]
MULTI_TURN = [n for n in _recipes("rl") if _multiturn(n)]


def _skip_if_exempt(name):
    for line in config.recipe_path(name).read_text().splitlines():
        if line.startswith(EXEMPT):
            reason = line[len(EXEMPT) :].strip()
            assert reason, f"{name}.yaml: say why after `{EXEMPT}`"
            pytest.skip(reason)
        if not line.startswith("#"):
            return


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _sampled_rewards(rows):
    """Each step's mean reward of the policy's own samples (not of mixed-in demonstrations), also of the steps that
    train only a critic (ArCHer's warm-up)."""
    keys = ("sampler/sampled_reward", "reward/task_mean", "reward/mean")
    return [next(r[k] for k in keys if k in r) for r in rows if any(k in r for k in keys)]


def _assert_learns(rewards, steps):
    assert len(rewards) == steps
    first, last = rewards[0], sum(rewards[-5:]) / 5
    assert last >= first + 0.25, f"mean reward {first:.3f} at the first step, {last:.3f} over the last 5"


def _common(name, model_dir, run, steps):
    args = ["train", name, f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", f"train.max_steps={steps}"]
    return args + ["train.lr=1e-2", "train.lr_schedule=constant", "rollout.max_new_tokens=8", "eval.num_problems=0"]


@pytest.mark.parametrize("name", SINGLE_TURN)
def test_rl_recipe_learns_the_toy_task(name, sevens_model_dir, request, tmp_path):
    _skip_if_exempt(name)
    recipe = config.load(name)
    args = _common(name, sevens_model_dir, tmp_path / "run", 20) + ["critic.lr=1e-2"]
    if recipe.rollout.group_size > 1:  # 2 prompts x 8; one completion per prompt: the recipe's batch (>= 16)
        args += ["train.prompts_per_step=2", "rollout.group_size=8"]
    args += TOY_TASK.get(name, [])
    if "teacher_logp" in build_algo(recipe).needs:
        args.append(f"model.teacher_path={request.getfixturevalue('teacher_dir')}")
    assert main(args) == 0
    _assert_learns(_sampled_rewards(_rows(tmp_path / "run")), 20)


@pytest.fixture(scope="module")
def turns_model_dir(tmp_path_factory):
    """The tiny model with the logits of "7" and of the end-of-turn token raised by 1.5 and 2.0: its first turn ends
    within the 8-token budget in about half the episodes, and about one reply in ten holds a 7 (first steps' mean
    reward 0.04–0.11). With the end-of-turn bias of the other multi-turn tests (3.0) every turn ended empty and the
    reward stayed at 0; with 2.5 or with a "7" bias of 1.25, GRPO stayed near 0 with two of three seeds."""
    path = tmp_path_factory.mktemp("tiny_turns") / "model"
    return str(build_tiny_model(path, eos_bias=2.0, token_biases={"7": 1.5}))


MULTI_TURN_TOY = {"hgpo": ["env.turns=3", "env.max_turns=3"], "tir_otb": ["train.lr=2e-3"]}
"""HGPO's groups of equal histories differ from GiGPO's groups of equal states only from a third turn on. The
multi-turn optimal token baseline at 3e-3 reached 0.90 and 0.86 over the last 5 steps with seeds 0 and 2, but with
seed 1 every first turn ran to the budget from the middle of the run on (reward 0); at 1e-3 it ended at 0.25, 0.45
and 0.40 with seeds 0, 1 and 2, and at 2e-3 at 0.81, 0.83 and 0.79 (from 0.05, 0.09 and 0.07)."""


@pytest.mark.parametrize("name", MULTI_TURN)
def test_multiturn_recipe_learns_the_toy_game(name, turns_model_dir, tmp_path):
    """At 1e-2 one step of GiGPO (grad norm 2.5) took the end-of-turn token's probability so low that every later
    first turn ran to the budget (reward 0 from step 3 on); at 3e-3 every multi-turn recipe rose from 0.04–0.08 to
    0.81–0.98 over the last 5 of 40 steps (seed 0; REFUEL, one pair per prompt, needs the 40; tir_otb at 2e-3)."""
    _skip_if_exempt(name)
    run = tmp_path / "run"
    args = ["train", name, f"model.path={turns_model_dir}", "task=lucky7", f"output_dir={run}", "train.max_steps=40"]
    args += ["train.lr=3e-3", "train.lr_schedule=constant", "critic.lr=1e-2", "rollout.max_new_tokens=8"]
    args += ["eval.num_problems=0", "env._component_=tests.integration.envs_for_tests.Sevens", "env.max_turns=2"]
    args += ["rewards=[{name: env_reward}]", *MULTI_TURN_TOY.get(name, [])]
    if config.load(name).rollout.group_size == 2:  # pairs (REFUEL): 8 prompts x 2
        args += ["train.prompts_per_step=8"]
    else:
        args += ["train.prompts_per_step=2", "rollout.group_size=8"]
    assert main(args) == 0
    _assert_learns(_sampled_rewards(_rows(run)), 40)


@pytest.mark.parametrize("name", _recipes("online_preference"))
def test_online_recipe_learns_the_toy_task(name, sevens_model_dir, tmp_path):
    _skip_if_exempt(name)
    args = _common(name, sevens_model_dir, tmp_path / "run", 40) + ["train.prompts_per_step=2", *TOY_TASK.get(name, [])]
    if config.load(name).rollout.group_size > 1:
        args.append("rollout.group_size=8")
    assert main(args) == 0
    _assert_learns(_sampled_rewards(_rows(tmp_path / "run")), 40)


def _lists(path):
    """48 scored lists: sevens (2) > a 7 and a word (1) > two words (0), with a gold `reference` (the sevens)."""
    rng, words = random.Random(0), ["pick", "say", "give", "write", "number", "digit", "now", "please"]
    rows = []
    for _ in range(48):
        good, mid = " ".join(["7"] * rng.randint(2, 4)), "7 " + rng.choice(words)
        bad = " ".join(rng.choice(words) for _ in range(2))
        prompt = " ".join(rng.choice(words) for _ in range(3)) + ":"
        rows.append({"prompt": prompt, "responses": [good, mid, bad], "scores": [2, 1, 0], "reference": good})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", _recipes("preference"))
def test_preference_recipe_learns_the_toy_preference(name, tiny_model_dir, tmp_path):
    _skip_if_exempt(name)
    run = tmp_path / "run"
    args = ["train", name, f"model.path={tiny_model_dir}", f"data.path={_lists(tmp_path / 'lists.jsonl')}"]
    args += [f"output_dir={run}", "train.max_steps=15", "train.lr=1e-2", "train.lr_schedule=constant"]
    args += ["train.prompts_per_step=8", "data.eval_frac=0.25", "eval.num_problems=12", "critic.lr=1e-2"]
    args += TOY_TASK.get(name, [])
    if config.load(name).algo.preference.name == "tgdpo":
        args.append(f"model.guide_path={tiny_model_dir}")  # a guide equal to the reference: TGDPO is then DPO
    assert main(args) == 0
    accuracy = [r["eval/pref_accuracy"] for r in _rows(run) if "eval/pref_accuracy" in r]
    assert accuracy[-1] >= 0.9 > accuracy[0], accuracy


@pytest.mark.parametrize("name", _recipes("staged"))
def test_staged_recipe_learns_the_toy_task(name, sevens_model_dir, tmp_path):
    from tests.integration.test_staged import split_pairs

    _skip_if_exempt(name)
    data, _ = split_pairs(tmp_path / "pairs.jsonl", n=96)
    run = tmp_path / "run"
    args = ["train", name, f"model.path={sevens_model_dir}", f"data.path={data}", f"output_dir={run}"]
    args += ["train.max_steps=20", "train.lr=1e-2", "train.lr_schedule=constant", "critic.lr=1e-2"]
    args += ["rollout.max_new_tokens=8", "rewards=[{name: share_of_target}]", "data.eval_frac=0.25"]
    assert main(args) == 0
    first, *_, last = sorted(run.iterdir())
    accuracy = [r["eval/pref_accuracy"] for r in _rows(first) if "eval/pref_accuracy" in r]
    assert accuracy[-1] >= 0.9 > accuracy[0], accuracy
    rewards = _sampled_rewards(_rows(last))
    assert len(rewards) == 20 and sum(rewards[-5:]) / 5 >= 0.8, rewards
