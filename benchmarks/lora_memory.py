"""LoRA against full fine-tuning on the same GRPO work: peak memory and time per step.

Both sides run `unipo train grpo` on the default model (SmolLM2-135M-Instruct) with a KL penalty (`algo.kl.coef`), so
full fine-tuning holds a second, frozen copy as its reference while LoRA reads the reference off the same model with
its adapter disabled; each side in its own process (so peak RSS is its own), without evaluation. Prints the ratios and
writes JSON to benchmarks/results/lora_memory.json.

    python benchmarks/lora_memory.py               # 5 steps, 4 prompts x 8 completions x 32 tokens, r = 16
    python benchmarks/lora_memory.py --steps 2     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_side(args: argparse.Namespace) -> dict:
    """One side in this process: train, then report peak RSS and the mean step time after the first step."""
    from unipo import config
    from unipo.trainers import rl

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"output_dir={out}", f"train.max_steps={args.steps}", "eval.num_problems=0",
                     f"algo.kl.coef={args.kl}", f"model.lora.r={args.rank if args.only == 'lora' else 0}"]  # fmt: skip
        rl.train(config.load("grpo", overrides))
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["time/step_s"] for r in rows if "time/step_s" in r][1:] or [float("nan")]  # the first one warms up
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": sum(steps) / len(steps),
        "update_s": sum(r.get("time/update_s", 0.0) for r in rows[1:]) / max(1, len(rows) - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--kl", type=float, default=0.04)
    parser.add_argument("--only", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_side(args)), flush=True)
        return
    results = {}
    for side in ("full", "lora"):
        argv = [sys.executable, __file__, "--steps", str(args.steps), "--rank", str(args.rank), "--kl", str(args.kl)]
        proc = subprocess.run([*argv, "--only", side], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
        results[side] = json.loads(line.removeprefix("RESULT "))
        print(f"{side}: {results[side]}", flush=True)
    full, lora = results["full"], results["lora"]
    results["ratios"] = {
        "peak_rss": lora["peak_rss_mb"] / full["peak_rss_mb"],
        "step_s": lora["step_s"] / full["step_s"],
    }
    results["settings"] = vars(args) | {"model": "SmolLM2-135M-Instruct", "recipe": "grpo"}
    out = Path(__file__).parent / "results" / "lora_memory.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"LoRA r={args.rank} / full fine-tuning: peak RSS {results['ratios']['peak_rss']:.2f}x, "
          f"time per step {results['ratios']['step_s']:.2f}x  ({out})")  # fmt: skip


if __name__ == "__main__":
    main()
