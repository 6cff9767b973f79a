"""Multi-turn rollouts on a tiny model: token-exact trajectories under the chat template, masks, budgets, failing
environments, and an agent that learns (ALGORITHMS.md §9, §13 M1)."""

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
