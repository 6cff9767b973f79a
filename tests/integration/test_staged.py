"""Staged runs (`trainer: staged`) through MPO (`mpo_mixed`): DPO on the easy pairs, then PPO on the prompts of the hard
ones, from and against the DPO model."""

import json
import random

import pytest
import yaml

from unipo.cli import main
from unipo.trainers import rl

pytestmark = pytest.mark.slow


def split_pairs(path, n=48):
    """`n` pairs on lucky7-like prompts with a `target` column: odd rows easy (sevens over two words, margin 2), even
    rows hard (a 7 and a word over two words, margin 0.5)."""
    rng, words = random.Random(0), ["pick", "say", "give", "write", "number", "digit", "now", "please"]
    rows = []
    for i in range(n):
        prompt, bad = " ".join(rng.choice(words) for _ in range(3)) + f" {i}:", " ".join(rng.sample(words, 2))
        good, score = (" ".join(["7"] * rng.randint(2, 4)), 2.0) if i % 2 else ("7 " + rng.choice(words), 0.5)
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad, "score_chosen": score, "score_rejected": 0.0,
                     "target": "7"})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mpo_mixed_trains_dpo_on_easy_pairs_then_ppo_on_hard_prompts_against_the_dpo_model(
    tiny_model_dir, tmp_path, monkeypatch
):
    loaded = []  # the models the RL stage loads beside its policy: its reference
    original = rl.load_model_and_tokenizer
    monkeypatch.setattr(rl, "load_model_and_tokenizer", lambda path, **kw: loaded.append(path) or original(path, **kw))
    data, rows = split_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "mpo"
    args = ["train", "mpo_mixed", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={out}",
            "rewards=[{name: share_of_target}]", "train.max_steps=2", "train.lr=1e-2", "log.completions_per_step=64",
            "rollout.max_new_tokens=8", "data.eval_frac=0"]  # fmt: skip
    assert main(args) == 0
    easy = {r["prompt"] for r in rows if r["score_chosen"] >= 1}
    dpo, ppo = out / "1-easy-dpo", out / "2-hard-ppo"
    trained = {s["prompt"] for s in _lines(dpo / "completions.jsonl")}
    assert len(trained) >= 8 and trained <= easy  # stage 1: easy pairs only (16 draws from all 48 would hit a hard one)
    sampled = {s["prompt"] for s in _lines(ppo / "completions.jsonl")}
    assert len(sampled) >= 4 and not sampled & easy  # stage 2: the hard prompts only
    cfg = yaml.safe_load((ppo / "config.yaml").read_text())
    last = str(dpo / "checkpoints" / "step-000002")
    assert cfg["model"]["path"] == last and cfg["task"] == str(data) and cfg["algo"]["critic"]["kl_coef"] == 0.05
    assert loaded == [last]  # PPO's reference is the DPO model, not the model stage 1 started from
    moved = [r["rewards/margins"] for r in _lines(dpo / "metrics.jsonl") if r.get("step") == 2 and "loss" in r]
    assert moved[0] > 0  # stage 1 did change the model that stage 2 starts from
    # running again resumes: both stages are finished, so nothing more trains
    counts = [len(_lines(d / "metrics.jsonl")) for d in (dpo, ppo)]
    assert main(args) == 0
    assert [len(_lines(d / "metrics.jsonl")) for d in (dpo, ppo)] == counts


def test_a_stage_that_cannot_start_stops_the_run_before_any_stage_trains(tiny_model_dir, tmp_path, capsys):
    data, _ = split_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "mpo"
    args = ["train", "mpo_mixed", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={out}"]
    assert main([*args, "train.max_steps=1"]) == 2  # no reward model for stage 2's reward
    err = capsys.readouterr().err
    assert "stage hard-ppo: ${online.reward_model} is not set (set online.reward_model=...)" in err
    assert not out.exists()
    assert main([*args, "data.margin_at_least=5", "rewards=[{name: share_of_target}]"]) == 2
    assert "data.path: no row has a score margin in [5.0, None)" in capsys.readouterr().err
