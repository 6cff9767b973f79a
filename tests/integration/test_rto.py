"""RTO (`rto_token_reward` + `ppo_gae`): the DPO model's token rewards reach the critic, computed from the frozen
models' log-probs of the sampled tokens; with the reference as the DPO model (or β₁ = 0) a run is exactly PPO."""

import json

import pytest
import torch

from unipo.cli import main

ARGS = ["task=lucky7", "train.max_steps=2", "rollout.max_new_tokens=6", "rollout.group_size=4",
        "train.prompts_per_step=2", "eval.num_problems=0", "train.lr=1e-3", "critic.lr=1e-3",
        "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]  # fmt: skip


def _steps(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows if "loss" in r]


def _train(recipe, model, run, *extra):
    assert main(["train", recipe, f"model.path={model}", f"output_dir={run}", *ARGS, *extra]) == 0
    return _steps(run)


def test_rto_with_the_reference_as_dpo_model_is_ppo_with_the_same_kl(tiny_model_dir, tmp_path):
    # π_dpo = π_ref: every β₁·log(π_dpo/π_ref) is 0, so RTO's per-token rewards are the outcome on the last token and
    # the whole run equals PPO with the critic's KL (β₂ = 0.05) to the last digit
    rto = _train("rto", tiny_model_dir, tmp_path / "rto", f"model.teacher_path={tiny_model_dir}")
    ppo = _train("ppo", tiny_model_dir, tmp_path / "ppo", "algo.critic.kl_coef=0.05")
    for a, b in zip(rto, ppo, strict=True):
        assert a.pop("reward/shaped_mean") == pytest.approx(a["reward/mean"], abs=1e-6)
        assert a.pop("time/teacher_s", None) is None
        assert a == pytest.approx(b, abs=1e-6)


def test_rto_feeds_the_critic_the_dpo_models_token_log_ratio(tiny_model_dir, tmp_path, monkeypatch):
    from unipo.algos import critics
    from unipo.models.tiny import build_tiny_model
    from unipo.trainers import rl

    dpo = build_tiny_model(tmp_path / "dpo", seed=1)  # same tokenizer, other weights
    seen = {}
    frozen, targets = rl.frozen_logps, critics._targets

    def record_frozen(s, batch, timer):
        out = frozen(s, batch, timer)
        seen.setdefault("frozen", (out, batch))
        return out

    def record_targets(name, rewards, *args):
        if args[-1] is not None:  # the step's call (the set-up check calls the critic without token rewards)
            seen.setdefault("targets", (rewards, args[-1]))
        return targets(name, rewards, *args)

    monkeypatch.setattr(rl, "frozen_logps", record_frozen)
    monkeypatch.setattr(critics, "_targets", record_targets)
    steps = _train(
        "rto",
        tiny_model_dir,
        tmp_path / "run",
        f"model.teacher_path={dpo}",
        "algo.shaping=[{name: rto_token_reward, beta_dpo: 0.5}]",
    )
    (out, batch), (_, dense) = seen["frozen"], seen["targets"]
    mask = batch.completion_mask.bool()
    last = torch.arange(mask.shape[1])[None] == (mask.sum(1) - 1)[:, None]
    ratio = torch.where(mask, 0.5 * (out["teacher_logp"] - out["ref_logp"]), 0.0)
    assert ratio[mask].abs().min() > 0  # the two models differ on every token
    outcome = dense - ratio  # β₃ = 1: what is left is each completion's outcome on its last token, 0 elsewhere
    assert outcome[~last].abs().max() < 1e-6
    first = steps[0]
    assert float(outcome[last].mean()) == pytest.approx(first["reward/mean"], rel=1e-5)
    assert first["reward/shaped_mean"] == pytest.approx(float(dense.sum(1).mean()), rel=1e-5)
    assert first["reward/shaped_mean"] != pytest.approx(first["reward/mean"], abs=1e-3)


def test_a_per_token_shaper_needs_a_critic_and_the_last_place(tiny_model_dir, tmp_path):
    from unipo import config
    from unipo.config import ConfigError
    from unipo.trainers.rl import train

    def refused(*overrides):
        cfg = config.load("rto", [f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'x'}",
                                  f"model.teacher_path={tiny_model_dir}", *overrides])  # fmt: skip
        with pytest.raises(ConfigError, match="gives per-token rewards, which only a critic"):
            train(cfg)

    refused("algo.critic=null", "algo.advantage.name=grpo")
    refused("algo.shaping=[{name: rto_token_reward}, {name: stop_penalty}]")
