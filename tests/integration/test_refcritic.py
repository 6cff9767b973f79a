"""RefCritic (`refcritic_reward_recon`): the verdict reward on real critiques, the refinement reward with a scripted
refiner (each critique's rewrites scored against the answer), the shaper by hand, and the recipe on its task."""

import json
import math

import pytest
import torch

from unipo import algos
from unipo.cli import main
from unipo.models.loading import load_model_and_tokenizer
from unipo.rewards import BUILTIN
from unipo.rewards.refine import parse_verdict

nan = float("nan")


def test_verdicts_are_read_from_real_critiques():
    assert parse_verdict("12 + 30 = 42, as proposed.\nVerdict: correct") == "correct"
    assert parse_verdict("The sum is 57, not 58. **Verdict: Incorrect**") == "incorrect"
    assert parse_verdict("verdict:wrong") == "incorrect" and parse_verdict("Verdict: right.") == "correct"
    assert parse_verdict("Verdict: correct... no wait. Verdict: incorrect") == "incorrect"  # the last one counts
    assert parse_verdict("The solution is correct.") is None  # no verdict line
    assert parse_verdict("Verdict: correctly done") is None  # not the word
    critiques = ["Verdict: correct", "Verdict: correct", "Verdict: incorrect", "no idea", "Verdict:"]
    got = BUILTIN["verdict"](None, critiques, label=["correct", "incorrect", "incorrect", "correct", "correct"],
                             truncated=[False, False, True, False, False])  # fmt: skip
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0]  # the third is cut off by the budget


def test_refinement_scores_a_frozen_models_rewrites_given_each_critique(tiny_model_dir, monkeypatch):
    import importlib

    from tests.integration.scripted import ScriptedLM

    judge = importlib.import_module("unipo.rewards.judge")  # the module (`unipo.rewards.judge` is also a function)

    _, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    # the refiner rewrites "57" after the first critique and "58" after the second (its prompt holds the critique)
    refiner = ScriptedLM(tokenizer, {"It is 57": ["57"], "Looks fine": ["58"]})
    monkeypatch.setitem(judge._JUDGES, ("scripted", "cpu"), (refiner, tokenizer))
    prompts = [[{"role": "user", "content": "Problem: What is 20 + 37? Proposed solution: 20 + 37 = 58"}]] * 2
    got = BUILTIN["refinement"](prompts, ["It is 57. Verdict: incorrect", "Looks fine. Verdict: correct"],
                                answer=["57", "57"], path="scripted", k=3, max_new_tokens=8)  # fmt: skip
    assert got == [1.0, 0.0]
    with pytest.raises(ValueError, match="k must be >= 1"):
        BUILTIN["refinement"](prompts, ["a", "b"], answer=["1", "1"], path="scripted", k=0)


def test_refcritic_reward_by_hand():
    shaper = algos.get("reward", "refcritic_reward_recon")
    comps = torch.tensor([[1.0, 0.5], [0.0, 1.0], [1.0, nan], [nan, 1.0]])
    got = shaper(torch.zeros(4), reward_components=comps, lam=0.4)
    torch.testing.assert_close(got[:3], torch.tensor([1.2, 0.4, 1.0]))  # a failed refinement leaves the verdict
    assert math.isnan(got[3])  # a failed verdict: unscored
    with pytest.raises(ValueError, match="list the correctness reward first"):
        shaper(torch.zeros(4), reward_components=comps[:, :1])


def test_refcritic_trains_a_critic_with_a_refiner(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "refcritic", f"model.path={tiny_model_dir}", f"output_dir={run}", "train.max_steps=2",
            "train.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "eval.num_problems=0",
            f"rewards=[{{name: verdict}}, {{name: refinement, k: 2, path: {tiny_model_dir}, max_new_tokens: 4}}]",
            "algo.shaping=[{name: refcritic_reward_recon, lam: 0.5}]"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(rows) == 2
    for r in rows:  # every score is finite here, so the shaped mean is the verdict's plus λ times the refinement's
        assert r["reward/shaped_mean"] == pytest.approx(r["reward/verdict"] + 0.5 * r["reward/refinement"])
        assert 0.0 <= r["reward/refinement"] <= 1.0
