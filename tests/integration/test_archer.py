"""ArCHer's TD critic (fact `td_replay`): its replay and its steps against the same steps composed by hand."""

import copy

import pytest
import torch

from unipo import algos, config
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.value import ValueModel
from unipo.rollout.hf import sample
from unipo.trainers import critic as critics
from unipo.trainers.common import build_algo, build_optimizer
from unipo.trainers.rl import turn_inputs

ROWS = [{"prompt": "say 7"}, {"prompt": "pick a number:"}]


def _two_turn_batch(model, tokenizer):
    """Sampled completions split into turns by hand: tokens 0–2 turn 0, token 3 the environment's, the rest turn 1
    (completion 2, and any shorter than 5 tokens, has turn 0 only); the environment gives 0.25 after each turn."""
    batch = sample(model, tokenizer, ROWS, n=3, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(batch.completion_ids.shape[1]).expand_as(batch.completion_ids)
    turn_ids = torch.where(pos < 3, 0, torch.where(pos == 3, -1, 1))
    turn_ids[2, 3:] = -1
    batch.turn_ids = torch.where(batch.completion_mask.bool(), turn_ids, -1)
    batch.loss_mask = (batch.turn_ids >= 0).long()
    turns = (batch.turn_ids.max(1).values + 1).tolist()
    batch.extras = {"turn_rewards": [[0.25] * k for k in turns], "state_keys": [[""] * k for k in turns]}
    return batch


def _critic(model, cfg):
    """A value model on the tiny policy with a random head, and a target whose head differs (so the targets are
    visibly the target network's)."""
    value = ValueModel(copy.deepcopy(model))
    torch.nn.init.normal_(value.head.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    target = copy.deepcopy(value).requires_grad_(False)
    target.head.bias.data.fill_(0.3)
    optimizer, scheduler = build_optimizer(value, cfg, lr=cfg.critic.lr)
    return critics.Critic(value, optimizer, scheduler, target=target)


@pytest.mark.slow
def test_td_update_is_replayed_td_steps_with_a_polyak_target(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    model.eval()
    overrides = [
        "model.autocast=off",
        "critic.lr=1e-2",
        "train.max_grad_norm=0",
        "critic.replay_size=5",
        "critic.replay_updates=2",
        "critic.replay_batch=4",
        "train.micro_batch_size=3",
        "critic.target_tau=0.25",
    ]
    cfg = config.load("archer", overrides)
    batch = _two_turn_batch(model, tokenizer)
    assert (batch.turn_ids == 1).any() and (batch.turn_ids.max(1).values == 0).any()
    rewards = torch.tensor([1.0, 0.0, 0.5, float("nan"), 1.0, 0.2])
    critic = _critic(model, cfg)
    fn = algos.get("critic", "archer")
    critic.replay = critics.remember(None, batch, rewards, cfg.critic.replay_size, tokenizer.pad_token_id)
    assert critic.replay.num_completions == 5  # the newest 5 of 6, each with its reward
    assert critic.replay.texts == batch.texts[1:]
    torch.testing.assert_close(torch.tensor(critic.replay.extras["reward"]), rewards[1:], equal_nan=True)

    expected = _by_hand(critic, cfg, fn, tau=0.25)
    without_target = _by_hand(critic, cfg, fn, tau=0.25, own_targets=True)

    bound = build_algo(cfg).critic  # the recipe's: γ = 0.9
    stats = critics.td_update(critic, cfg, bound, torch.Generator().manual_seed(5), turn_inputs)
    assert stats["critic/replay_size"] == 5 and stats["critic/value_loss"] > 0
    # AdamW's first steps move each parameter by about ±lr, so float noise in a near-zero gradient (micro-batches of
    # 3 and 1 here, one pass by hand) moves one by up to ~1e-4; targets from the critic itself move them by ~lr
    assert _gap(critic.model, expected[0]) < 1e-3 and _gap(critic.target, expected[1]) < 1e-3
    assert _gap(critic.model, without_target[0]) > 1e-2
    assert _gap(critic.model, critic.target) > 1e-3  # the target lags the critic


def _gap(a, b) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def _by_hand(critic, cfg, fn, tau, own_targets=False):
    """(critic, target) after the replay's steps by hand: the same draws; per step, y from the target network (from the
    critic itself with `own_targets`), ½·(V − y)² averaged over the draw's targets in one pass, an AdamW step, then
    θ̄ ← θ̄ + τ·(θ − θ̄)."""
    value, target = copy.deepcopy(critic.model), copy.deepcopy(critic.target)
    optimizer, _ = build_optimizer(value, cfg, lr=cfg.critic.lr)
    draws = torch.Generator().manual_seed(5)
    for _ in range(cfg.critic.replay_updates):
        draw = critic.replay.select(torch.randint(5, (4,), generator=draws))
        with torch.no_grad():
            tv = (value if own_targets else target)(draw)
        r = torch.tensor(draw.extras["reward"])
        t = fn(r, tv, turn_ids=draw.turn_ids, turn_rewards=draw.extras["turn_rewards"], target_values=tv, gamma=0.9)
        assert t.value_mask.sum() > 0
        loss = (0.5 * (value(draw) - t.returns) ** 2)[t.value_mask].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for slow, fast in zip(target.parameters(), value.parameters(), strict=True):
                slow.copy_((1 - tau) * slow + tau * fast)
    return value, target


@pytest.mark.slow
def test_archer_run_resumes_exactly_with_its_target_and_replay(tiny_model_dir, tmp_path):
    import json

    from unipo.cli import main

    common = [f"model.path={tiny_model_dir}", "train.save_every=2", "eval.num_problems=0", "train.lr=1e-2",
              "rollout.max_new_tokens=6", "train.prompts_per_step=2", "rollout.group_size=2", "critic.replay_size=6",
              "critic.replay_batch=3", "critic.lr=1e-3", "train.lr_schedule=constant",
              "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run, steps in ((straight, 4), (resumed, 2), (resumed, 4)):
        assert main(["train", "archer", f"output_dir={run}", f"train.max_steps={steps}", *common]) == 0
    keys = ("loss", "reward/mean", "critic/value_loss", "critic/replay_size")

    def rows(run):
        return [[json.loads(line).get(k) for k in keys] for line in (run / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(straight), rows(resumed)
    assert a == b and len(a) == 4 and [r[-1] for r in a] == [4.0, 6.0, 6.0, 6.0]  # the replay keeps the newest 6
    assert (straight / "checkpoints/step-000004/critic_target").is_dir()
