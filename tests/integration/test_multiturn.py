"""Multi-turn rollouts on a tiny model: token-exact trajectories under the chat template, masks, budgets, failing
environments, and an agent that learns (ALGORITHMS.md §9, §13 M1)."""

import dataclasses

import pytest
import torch

from tests.integration import envs_for_tests
from unipo.algos import get
from unipo.envs import EnvSettings
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.models.tiny import build_tiny_model
from unipo.rollout import multiturn
from unipo.rollout.multiturn import Renderer, rollout

ROWS = [{"prompt": [{"role": "user", "content": f"say {i}"}]} for i in range(3)]


@pytest.fixture(scope="module")
def eos_model_dir(tmp_path_factory):
    """A tiny model that ends its turns within a few tokens (multi-turn needs turns that end)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_eos") / "model", eos_bias=3.0))


@pytest.fixture(scope="module")
def eos_model(eos_model_dir):
    model, tokenizer = load_model_and_tokenizer(eos_model_dir)
    return model.eval(), tokenizer


@pytest.fixture(autouse=True)
def _release_hanging_envs():
    envs_for_tests.RELEASE.clear()
    yield
    envs_for_tests.RELEASE.set()


def _echo_rollout(eos_model, monkeypatch, **settings):
    model, tokenizer = eos_model
    waves = []

    def spy(*args, **kwargs):
        waves.append(real(*args, **kwargs))
        return waves[-1]

    real = multiturn.sample_tokens
    monkeypatch.setattr(multiturn, "sample_tokens", spy)
    batch = rollout(model, tokenizer, ROWS, envs_for_tests.Echo, EnvSettings(**{"max_turns": 3, "max_tokens": 400,
                    **settings}), n=3, max_new_tokens=10, generator=torch.Generator().manual_seed(0))  # fmt: skip
    return batch, waves


def test_trained_tokens_are_the_sampled_tokens_under_the_chat_template(eos_model, monkeypatch):
    model, tokenizer = eos_model
    batch, waves = _echo_rollout(eos_model, monkeypatch)
    turns = batch.extras["turns"]
    assert max(turns) == 3 and min(turns) >= 1  # trajectories of several turns, some ended early (cut by the cap)
    renderer = Renderer(tokenizer)
    for k, wave in enumerate(waves):  # wave k samples turn k of the trajectories that reached it, in order
        live = [i for i in range(batch.num_completions) if turns[i] > k]
        assert wave.completion_ids.shape[0] == len(live)
        for j, i in enumerate(live):
            at = batch.turn_ids[i] == k
            n = int(at.sum())
            assert n >= 1 and torch.equal(batch.completion_ids[i][at], wave.completion_ids[j, :n])
            torch.testing.assert_close(batch.rollout_logp[i][at], wave.rollout_logp[j, :n])
    for i in range(batch.num_completions):
        ids = batch.completion_ids[i][batch.completion_mask[i].bool()]
        assert torch.equal(batch.loss_mask[i].bool(), batch.turn_ids[i] >= 0)  # trained = sampled
        env_tokens = ids[(batch.turn_ids[i] < 0)[: len(ids)]].tolist()
        replies = [m for m in batch.extras["messages"][i] if m["role"] == "tool"]
        assert env_tokens == [t for m in replies for t in renderer.ids("tool", m["content"])]
        if not batch.truncated[i]:  # the whole trajectory is the template's rendering of its conversation
            prompt = batch.prompt_ids[batch.group_ids[i]][batch.prompt_mask[batch.group_ids[i]].bool()]
            # a sampled special token other than EOS (<pad>) is not text: the environment's action skips it
            text = tokenizer.decode(torch.cat([prompt, ids]).tolist()).replace(tokenizer.pad_token, "")
            rendered = tokenizer.apply_chat_template(batch.extras["messages"][i], tokenize=False)
            assert text == rendered.removesuffix("\n")
    assert batch.extras["turn_rewards"][0] == [0.25] * len(batch.extras["turn_rewards"][0])
    assert batch.extras["state_keys"][0][:2] == ["", 1][: turns[0]]


def test_recomputed_log_probs_match_and_environment_tokens_get_no_gradient(eos_model, monkeypatch):
    model, _ = eos_model
    batch, _ = _echo_rollout(eos_model, monkeypatch)
    logp, _ = completion_logprobs(model, batch)  # one forward over each whole trajectory
    policy = batch.loss_mask.bool()
    torch.testing.assert_close(logp[policy], batch.rollout_logp[policy], atol=1e-5, rtol=1e-5)
    # §13 M1: the loss the update builds (surrogate over the loss mask) has no gradient at the environment's tokens
    logp = logp.detach().requires_grad_(True)
    adv = get("credit", "traj_broadcast")(torch.linspace(-1, 1, batch.num_completions), turn_ids=batch.turn_ids)
    per_token = get("policy_loss", "ppo_clip")(logp, batch.rollout_logp, adv, batch.loss_mask.float())[0]
    get("aggregation", "token_mean")(per_token, batch.loss_mask.float()).backward()
    env_tokens = batch.completion_mask.bool() & ~policy
    assert env_tokens.any() and (logp.grad[env_tokens] == 0).all() and (logp.grad[policy] != 0).any()


def test_the_token_budget_truncates(eos_model, monkeypatch):
    batch, _ = _echo_rollout(eos_model, monkeypatch, max_tokens=24)
    assert batch.completion_mask.sum(1).max() <= 24 and bool(batch.truncated.any())


@pytest.mark.parametrize(("env", "error"), [("Hangs", "TimeoutError"), ("Raises", "RuntimeError")])
def test_a_failing_environment_ends_its_episode_unscored(eos_model, env, error):
    model, tokenizer = eos_model
    settings = EnvSettings(max_turns=3, max_tokens=400, timeout_s=0.5)
    batch = rollout(model, tokenizer, ROWS[:1], getattr(envs_for_tests, env), settings, n=4, max_new_tokens=10,
                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    stepped = [i for i, t in enumerate(batch.extras["turns"]) if not batch.truncated[i]]
    assert stepped  # some first turns ended with EOS and reached the environment
    for i in stepped:
        assert batch.extras["env_reward"][i] is None and error in batch.extras["env_error"][i]


SCRIPTED = {
    "calculator": ({"answer": "162"}, ["Let me compute <calc>123+45-6</calc>", "<calc>123+", "It is 162"], {}),
    "calculator_json": ({"answer": "12"}, ['<tool_call>{"name": "calc", "arguments": "3*4"}</tool_call>', "12"],
                        {"call_format": "json"}),
    "python": ({"answer": "42"}, ["<python>print(6 * 7)</python>", "<python>1/0</python>", "42"], {}),
    "guess_number": ({"secret": 13}, ["10", "15", "13"], {}),
    "self_correct": ({"answer": "12"}, ["13", "12"], {}),
    "search": ({"answer": "1514"}, ["<search>How long is the river Shantubel?</search>", "1514"], {}),
}  # fmt: skip
"""Per built-in environment: the row's columns, the scripted policy turns, the environment's keywords."""


@pytest.mark.parametrize("case", list(SCRIPTED))
def test_every_builtin_environment_is_token_exact_with_a_scripted_policy(case, tiny_model_dir):
    from tests.integration.scripted import ScriptedLM
    from unipo.envs import env_factory

    columns, script, kwargs = SCRIPTED[case]
    _, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    rows = [{"prompt": [{"role": "user", "content": f"problem {case}"}], **columns}]
    model = ScriptedLM(tokenizer, {f"problem {case}": script})
    make = env_factory(case.removesuffix("_json"), None, kwargs)
    batch = rollout(model, tokenizer, rows, make, EnvSettings(max_turns=4, max_tokens=1000), n=2, max_new_tokens=64)
    for i in range(2):
        messages = batch.extras["messages"][i]
        said = [m["content"] for m in messages if m["role"] == "assistant"]
        assert said == script and batch.extras["env_reward"][i] == 1.0 and not batch.truncated[i]
        ids = batch.completion_ids[i][batch.completion_mask[i].bool()]
        for k, text in enumerate(script):  # the tokens trained on in turn k are the tokens the policy wrote
            assert ids[batch.turn_ids[i][: len(ids)] == k].tolist() == tokenizer(text)["input_ids"] + [
                tokenizer.eos_token_id
            ]
        prompt = batch.prompt_ids[0][batch.prompt_mask[0].bool()]
        text = tokenizer.decode(torch.cat([prompt, ids]).tolist())
        assert text == tokenizer.apply_chat_template(messages, tokenize=False).removesuffix("\n")
    calls = {"calculator": (2, 1), "calculator_json": (1, 0), "python": (2, 1), "search": (1, 0)}.get(case, (0, 0))
    assert (batch.extras["tool_calls"][0], batch.extras["tool_errors"][0]) == calls
    assert batch.extras["turns"] == [len(script)] * 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["algo.credit.name=gigpo", "task=lucky7"], "assigns credit over the turns of multi-turn trajectories"),
        (["env=guess_number"], "cannot start an episode on the first row of task 'calculator' (KeyError: 'secret')"),
        (["algo.sampler.name=dynamic_sampling"], "samplers do not run with a multi-turn environment yet"),
        (["recipe=ppo", "task=guess_number"], "runs GAE over single completions; over multi-turn trajectories use"),
        (["recipe=archer", "task=lucky7"], "algo.critic 'archer' assigns credit over the turns"),
        (["recipe=archer", "algo.credit.name=traj_broadcast"], "gives the turns' advantages itself: unset algo.credit"),
        (["env.name=chess"], "env: unknown environment 'chess'"),
        (["recipe=refuel", "task=lucky7"], "branches multi-turn trajectories at a turn: set `env`"),
        (["recipe=refuel", "rollout.group_size=4"], "regresses within pairs of samples: set rollout.group_size=2"),
    ],
)
def test_what_cannot_run_with_an_environment_is_refused_in_one_line(extra, message, tiny_model_dir, tmp_path, capsys):
    from unipo.cli import main

    recipe = next((e.removeprefix("recipe=") for e in extra if e.startswith("recipe=")), "agent_grpo")
    extra = [e for e in extra if not e.startswith("recipe=")]
    args = ["train", recipe, f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


SHOWN = [{"prompt": [{"role": "user", "content": "say a"}, {"role": "assistant", "content": "a"},
                    {"role": "user", "content": f"say {i}"}]} for i in range(3)]  # fmt: skip
"""Prompts that show an exchange first (the policy's turns are the ones after the prompt's)."""


def _branches(eos_model, env, at):
    model, tokenizer = eos_model
    settings = EnvSettings(max_turns=3, max_tokens=400)
    kw = {"max_new_tokens": 10, "generator": torch.Generator().manual_seed(4)}
    roll_in = rollout(model, tokenizer, SHOWN, env, settings, n=1, **kw)
    at = [min(h, t - 1) for h, t in zip(at, roll_in.extras["turns"], strict=True)]
    sources = [p for p in range(len(SHOWN)) for _ in range(2)]
    return roll_in, at, multiturn.branch(model, tokenizer, roll_in, sources, [at[p] for p in sources], env, settings,
                                         **kw)  # fmt: skip


def test_branches_restart_at_the_roll_ins_turn_token_for_token_and_train_only_that_turn(eos_model):
    _, tokenizer = eos_model
    roll_in, at, batch = _branches(eos_model, envs_for_tests.Echo, [0, 1, 2])
    assert at[1:] == [1, 2] and batch.num_completions == 6 and batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    for i in range(6):
        p, h = i // 2, at[i // 2]
        turns = batch.turn_ids[i]
        assert set(turns.tolist()) <= {-1, h} and torch.equal(batch.loss_mask[i].bool(), turns == h)
        start = int((turns == h).nonzero()[0])  # the branch turn's first token: the roll-in's turn h starts there too
        assert int((roll_in.turn_ids[p] == h).nonzero()[0]) == start
        assert torch.equal(batch.completion_ids[i, :start], roll_in.completion_ids[p, :start])
        assert batch.extras["turn_rewards"][i][:h] == roll_in.extras["turn_rewards"][p][:h] == [0.25] * h
        assert batch.extras["messages"][i][: 3 + 2 * h] == roll_in.extras["messages"][p][: 3 + 2 * h]
        assert batch.extras["env_reward"][i] == 0.25 * len(batch.extras["turn_rewards"][i])
        ids = batch.completion_ids[i][batch.completion_mask[i].bool()]
        if not batch.truncated[i]:  # the whole branch is the template's rendering of its conversation
            prompt = batch.prompt_ids[p][batch.prompt_mask[p].bool()]
            text = tokenizer.decode(torch.cat([prompt, ids]).tolist()).replace(tokenizer.pad_token, "")
            rendered = tokenizer.apply_chat_template(batch.extras["messages"][i], tokenize=False)
            assert text == rendered.removesuffix("\n")


def test_a_branch_whose_environment_answers_the_replay_differently_is_unscored(eos_model):
    roll_in, at, batch = _branches(eos_model, envs_for_tests.Drifts, [0, 1, 1])
    assert at == [0, 1, 1]
    errors = batch.extras["env_error"]
    assert errors[:2] == [None, None]  # branch at the first turn: nothing to replay
    assert all("replay" in e for e in errors[2:]) and batch.extras["env_reward"][2:] == [None] * 4


def test_refuel_trains_no_pair_with_an_unscored_branch(eos_model_dir, tmp_path):
    import json

    from unipo.cli import main

    args = ["train", "refuel", f"model.path={eos_model_dir}", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
            "train.prompts_per_step=2", "env._component_=tests.integration.envs_for_tests.EveryOtherFails",
            "env.max_turns=2", "rollout.max_new_tokens=16", "eval.num_problems=0"]  # fmt: skip
    assert main(args) == 0
    step = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert step["env/errors"] == 2  # one branch of each of the 2 pairs (one cut by the token budget would not step)
    assert step["loss"] == 0 and step["grad_norm"] == 0


def test_a_branch_can_train_its_replayed_turns_with_the_roll_ins_log_probs(eos_model):
    model, tokenizer = eos_model
    settings = EnvSettings(max_turns=3, max_tokens=400)
    kw = {"max_new_tokens": 10, "generator": torch.Generator().manual_seed(4)}
    roll_in = rollout(model, tokenizer, SHOWN, envs_for_tests.Echo, settings, n=1, **kw)
    p = max(range(3), key=lambda i: roll_in.extras["turns"][i])  # a roll-in with a second turn to branch at
    assert roll_in.extras["turns"][p] >= 2
    batch = multiturn.branch(model, tokenizer, roll_in, [p, p], [1, 0], envs_for_tests.Echo, settings,
                             only_branch_turn=False, **kw)  # fmt: skip
    assert batch.group_ids.tolist() == [p, p] and batch.extras["env_error"] == [None, None]
    for i in range(2):
        assert torch.equal(batch.loss_mask[i].bool(), batch.turn_ids[i] >= 0)  # every policy turn is trained
    start = int((batch.turn_ids[0] == 1).nonzero()[0])  # the branch turn: the roll-in's turn 0 and reply before it
    assert torch.equal(batch.completion_ids[0, :start], roll_in.completion_ids[p, :start])
    assert torch.equal(batch.rollout_logp[0, :start], roll_in.rollout_logp[p, :start])
    assert torch.equal(batch.turn_ids[0, :start], roll_in.turn_ids[p, :start])
    with pytest.raises(ValueError, match="sources must be in the order of their prompt rows"):
        multiturn.branch(model, tokenizer, roll_in, [2, 0], [1, 1], envs_for_tests.Echo, settings, **kw)


def test_arpo_fills_each_group_with_branches_that_train_every_turn(eos_model_dir, tmp_path, monkeypatch):
    import json

    from unipo.cli import main
    from unipo.trainers import rl

    seen = {}
    real = rl.update

    def spy(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs, world=None):  # noqa: ANN001, ANN202
        seen["batch"], seen["advantages"] = batch, advantages
        return real(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs, world)

    monkeypatch.setattr(rl, "update", spy)
    args = ["train", "arpo", f"model.path={eos_model_dir}", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
            "train.prompts_per_step=2", "rollout.group_size=4", "env._component_=tests.integration.envs_for_tests.Echo",
            "env.max_turns=3", "rollout.max_new_tokens=8", "eval.num_problems=0", "algo.sampler.name=arpo_branch",
            "algo.sampler.alpha=1.0", "algo.sampler.beta=0.0"]  # fmt: skip
    assert main(args) == 0
    step = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    batch = seen["batch"]
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4  # 2 initial trajectories and 2 branches per prompt
    assert step["sampler/branches"] + step["sampler/restarts"] == 2 and step["sampler/replay_failed"] == 0
    turns = batch.extras["turns"]
    # with P = 1 every initial trajectory with a second turn branches there first
    assert step["sampler/branches"] == pytest.approx(sum(min(2, sum(t >= 2 for t in turns[g * 4 : g * 4 + 2]) +
                                                          sum(t >= 3 for t in turns[g * 4 : g * 4 + 2]))
                                                      for g in range(2)) / 2)  # fmt: skip
    assert torch.equal(batch.loss_mask.bool(), batch.turn_ids >= 0)
    # soft attribution: every policy token of a trajectory carries its trajectory's advantage
    adv = seen["advantages"]
    for i in range(8):
        values = adv[i][batch.turn_ids[i] >= 0]
        assert torch.allclose(values, values[0].expand_as(values))


def test_environments_in_worker_processes_give_the_same_trajectories(eos_model):
    from unipo.envs import env_factory
    from unipo.envs.workers import EnvPool

    model, tokenizer = eos_model
    settings = EnvSettings(max_turns=3, max_tokens=400, timeout_s=30)
    kw = {"n": 3, "max_new_tokens": 10}
    here = rollout(model, tokenizer, ROWS, env_factory(None, "tests.integration.envs_for_tests.Echo", {}), settings,
                   generator=torch.Generator().manual_seed(2), **kw)  # fmt: skip
    settings = dataclasses.replace(settings, workers=2)
    pool = EnvPool(None, "tests.integration.envs_for_tests.Echo", {}, 2, 30)
    try:
        there = rollout(model, tokenizer, ROWS, pool.make, settings, generator=torch.Generator().manual_seed(2), **kw)
        assert torch.equal(here.completion_ids, there.completion_ids) and torch.equal(here.turn_ids, there.turn_ids)
        assert here.extras["messages"] == there.extras["messages"] and max(there.extras["turns"]) > 1
        assert here.extras["turn_rewards"] == there.extras["turn_rewards"]
        assert all(w.drops for w in pool.workers)  # the finished episodes leave with each worker's next request
    finally:
        pool.close()


def test_a_hanging_step_in_a_worker_is_stopped_and_the_worker_replaced(eos_model):
    from unipo.envs.workers import EnvPool

    model, tokenizer = eos_model
    settings = EnvSettings(max_turns=3, max_tokens=400, timeout_s=1.0, workers=1)
    pool = EnvPool(None, "tests.integration.envs_for_tests.Hangs", {}, 1, settings.timeout_s)
    try:
        batch = rollout(model, tokenizer, ROWS[:1], pool.make, settings, n=3, max_new_tokens=10,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
        worker = pool.workers[0]
        # every episode whose second turn reached the environment ends unscored: the first such step hung and was
        # stopped with its worker, the others' environments were in that worker
        stepped = [i for i in range(3) if batch.extras["turns"][i] > 1 and not batch.truncated[i]]
        errors = [batch.extras["env_error"][i] for i in stepped]
        assert stepped and worker.generation == 1 and all(batch.extras["env_reward"][i] is None for i in stepped)
        assert "TimeoutError" in errors[0] and all("LostEnvironment" in e for e in errors[1:])
        assert worker.process.poll() is None  # the fresh worker runs
        env = pool.make()  # the fresh worker serves new episodes
        env.reset({"prompt": "x"})
        assert env.step("a").observation == "go on"
    finally:
        pool.close()


def test_env_workers_in_the_config_put_each_environment_in_a_worker():
    from unipo.config.schema import EnvConfig
    from unipo.envs import resolve
    from unipo.envs.workers import RemoteEnv

    make, settings = resolve(EnvConfig(name="calculator", workers=2, timeout_s=20), None)
    assert settings.workers == 2
    envs = [make() for _ in range(3)]
    pool = envs[0].pool
    try:
        assert (
            all(isinstance(e, RemoteEnv) for e in envs) and [e.worker for e in envs] == pool.workers + pool.workers[:1]
        )
        envs[0].reset({"prompt": "What is 6*7?", "answer": "42"})
        step = envs[0].step("<calc>6*7</calc>")
        assert envs[0].role == "tool" and "42" in step.observation and step.info["tool_calls"] == 1
    finally:
        pool.close()
