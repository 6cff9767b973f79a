"""Asynchronous rollouts with bounded staleness (`rollout.max_staleness`, trainers/pipeline.py) on the tiny model."""

import json

import pytest
import torch

from unipo import config
from unipo.cli import main
from unipo.config import ConfigError
from unipo.trainers.checks import check_async
from unipo.trainers.common import build_algo

LENGTH = "{_component_: tests.integration.rewards_for_tests.reply_length}"  # a graded reward: every step trains
COMPARED = ("reward/mean", "reward/std", "loss", "grad_norm", "entropy", "tokens/completion_mean", "clip_frac")


def _args(model_dir, run, *extra):
    return ["train", "grpo", f"model.path={model_dir}", "task=lucky7", f"output_dir={run}", "model.autocast=off",
            "rollout.max_new_tokens=8", "rollout.group_size=4", "eval.num_problems=4", "train.prompts_per_step=4",
            "train.lr=1e-2", "train.lr_schedule=constant", "eval.show_replies=0", "log.progress=false",
            "log.completions_per_step=16", f"rewards=[{LENGTH}]", *extra]  # fmt: skip


def _steps(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "eval/accuracy" not in r}


def _completions(run, step):
    rows = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    return [(r["prompt"], r["completion"]) for r in rows if r["step"] == step]


def test_staleness_zero_is_the_synchronous_run(tiny_model_dir, tmp_path):
    sync, k0 = tmp_path / "sync", tmp_path / "k0"
    assert main(_args(tiny_model_dir, sync, "train.max_steps=3")) == 0
    assert main(_args(tiny_model_dir, k0, "train.max_steps=3", "rollout.max_staleness=0")) == 0
    a, b = _steps(sync), _steps(k0)
    for step in (1, 2, 3):
        assert [b[step]["rollout/version_lag"], b[step]["rollout/policy_version"]] == [0.0, step - 1]
        assert {k: b[step][k] for k in COMPARED} == {k: a[step][k] for k in COMPARED}, step  # exactly
        assert _completions(k0, step) == _completions(sync, step)


def test_staleness_one_trains_each_batch_one_version_late_with_the_correction_logged(tiny_model_dir, tmp_path):
    k1, frozen = tmp_path / "k1", tmp_path / "frozen"
    corrected = ("algo.policy_loss.name=rollout_is", "train.save_every=2")
    assert main(_args(tiny_model_dir, k1, "train.max_steps=4", "rollout.max_staleness=1", *corrected)) == 0
    steps = _steps(k1)
    # step t is sampled by version t - 2 (the first by the initial policy): the lag is exactly 1 after the first step
    assert [steps[t]["rollout/version_lag"] for t in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    assert [steps[t]["rollout/policy_version"] for t in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 2.0]
    # a batch one version late is off-policy: π_old/π_behaviour differs from 1, and the weights are logged
    assert steps[1]["rollout_is/weight"] == pytest.approx(1.0, abs=1e-6)
    assert all(abs(steps[t]["rollout_is/weight"] - 1.0) > 1e-4 for t in (2, 3, 4))
    # step 2's batch is what the untrained policy samples on step 2's prompts (lr 1e-30 leaves every fp32 weight as
    # it is): the engine did not see step 1's update while it sampled
    assert main(_args(tiny_model_dir, frozen, "train.max_steps=2", "train.lr=1e-30")) == 0
    assert _completions(k1, 2) == _completions(frozen, 2) and _completions(k1, 1) == _completions(frozen, 1)
    # the checkpoint after step 2 holds the data position after step 2's prompts, not after the prefetched ones
    saved = torch.load(k1 / "checkpoints/step-000002/trainer_state.pt", weights_only=False)
    assert saved["data"] == {"epoch": 0, "index": 8}
    # resumed, the producer restarts from the checkpointed policy: the first batch after it has no lag
    assert main(_args(tiny_model_dir, k1, "train.max_steps=5", "rollout.max_staleness=1", *corrected)) == 0
    assert _steps(k1)[5]["rollout/version_lag"] == 0.0 and _steps(k1)[5]["rollout/policy_version"] == 4.0


def test_asynchronous_rollouts_refuse_a_sampler():
    cfg = config.load("grpo", ["rollout.max_staleness=1", "algo.sampler.name=dynamic_sampling"])
    with pytest.raises(ConfigError, match="the sampler 'dynamic_sampling' reads and changes the trainer's state"):
        check_async(cfg, build_algo(cfg))
