"""Generation through a server (`unipo serve`, `rollout.engine=server`) against the in-process HF engine on the same
GRPO work.

Both sides train the default model (SmolLM2-135M-Instruct) with the same seeds, so they sample the same completions;
the server side runs `unipo serve` (an HF engine on the CPU) in a second process and sends it the policy's weights
after every update through the gloo weight group (`time/sync_s`: 0.54 GB of float32 weights packed in buckets). What
it costs on one machine is the transfer and the request round trips; what it buys (generation on other GPUs, vLLM
beside a trainer that never holds it) needs GPUs. Prints the ratios and writes
benchmarks/results/server_vs_inprocess.json.

    python benchmarks/server_vs_inprocess.py              # 5 steps, 2 prompts x 4 completions x 32 tokens
    python benchmarks/server_vs_inprocess.py --steps 2    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PHASES = ("step", "generate", "update", "sync")


def run_side(args: argparse.Namespace, extra: list[str]) -> dict:
    """`unipo train grpo` in a process of its own; the mean of each phase's seconds over the steps after the first."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "unipo", "train", "grpo", f"output_dir={out}", f"train.max_steps={args.steps}",
               "eval.num_problems=0", "train.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=32",
               "log.progress=false", *extra]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step_s" in r][1:]  # the first one warms up
    return {p: sum(r.get(f"time/{p}_s", 0.0) for r in steps) / len(steps) for p in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    here = run_side(args, [])
    server = subprocess.Popen([sys.executable, "-m", "unipo", "serve", f"rollout.server.url={url}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert "unipo: serving" in server.stdout.readline()
        there = run_side(args, ["rollout.engine=server", f"rollout.server.url={url}"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {"steps": args.steps, "in_process": here, "server": there,
              "step_ratio_server_over_in_process": there["step"] / here["step"],
              "generate_ratio_server_over_in_process": there["generate"] / here["generate"]}  # fmt: skip
    for p in PHASES:
        print(f"{p:>9}: in process {here[p]:6.2f} s, through the server {there[p]:6.2f} s")
    print(f"step time ratio (server / in process): {result['step_ratio_server_over_in_process']:.2f}x")
    out = ROOT / "benchmarks" / "results" / "server_vs_inprocess.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
