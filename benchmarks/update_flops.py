"""The update phase's achieved FLOP/s as a fraction of this machine's measured matmul peak, in the same run.

    python benchmarks/update_flops.py [--prompts 2 --group 8 --max-new-tokens 32 --set model.logit_chunk=128]

One GRPO batch of the default model (SmolLM2-135M-Instruct, sampled from the arithmetic task with a fixed seed, every
completion given a nonzero advantage so that none is skipped) goes through `trainers.update.update` once under
`torch.utils.flop_counter.FlopCounterMode`, which counts the floating-point operations of every matmul, convolution
and attention kernel (2 per multiply-add; elementwise work is not counted). The same update then runs `--repeats`
times without the counter on a fresh copy of the weights and the median wall time gives the achieved FLOP/s. The
peak is the median FLOP/s of square matmuls (`--peak-size`) in the dtype the update's matmuls run in (bf16 under
autocast, else float32), timed in the same process on every core. Speed is measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def matmul_peak(dtype, size: int, seconds: float = 3.0) -> float:
    """Median FLOP/s of `size`³ matmuls in `dtype` over about `seconds`."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b  # warm-up
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        start = time.perf_counter()
        a @ b
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a unipo config override")
    p.add_argument("--out", default="benchmarks/results/update_flops.json")
    args = p.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unipo import config
    from unipo.data.tasks import get_task
    from unipo.models.loading import autocast_context, default_model_dir, load_model_and_tokenizer
    from unipo.rollout.hf import sample
    from unipo.trainers.common import build_algo, build_optimizer
    from unipo.trainers.update import update

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = config.load("grpo", [f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.max_new_tokens}",
                               "algo.aggregation.name=token_mean", *args.set])  # fmt: skip
    path = str(default_model_dir())
    model, tokenizer = load_model_and_tokenizer(path, device="cpu", dtype=cfg.model.dtype)
    model.eval()
    rows = get_task("arithmetic").train[: args.prompts]
    with torch.no_grad(), autocast_context(model, cfg.model.autocast):
        batch = sample(model, tokenizer, rows, n=args.group, max_new_tokens=args.max_new_tokens,
                       temperature=cfg.rollout.temperature, generator=torch.Generator().manual_seed(0))  # fmt: skip
    advantages = torch.linspace(-1, 1, batch.num_completions) + 1e-3  # none is 0: every completion is trained
    inputs = {"rewards": torch.zeros(batch.num_completions), "progress": 0.0, "truncated": batch.truncated}
    algo = build_algo(cfg)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def one_update() -> float:
        model.load_state_dict(initial)
        optimizer, scheduler = build_optimizer(model, cfg)
        start = time.perf_counter()
        update(cfg, model, optimizer, scheduler, algo, batch, advantages, inputs)
        return time.perf_counter() - start

    one_update()  # warm-up
    with FlopCounterMode(display=False) as counter:
        one_update()
    flops = counter.get_total_flops()
    seconds = statistics.median(one_update() for _ in range(args.repeats))
    with autocast_context(model, cfg.model.autocast):
        matmul_dtype = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype  # what autocast makes of a float32 matmul
    peak = matmul_peak(matmul_dtype, args.peak_size)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "settings": {**vars(args), "completion_tokens": int(batch.completion_mask.sum())},
        "update_flops": flops,
        "update_s_median": seconds,
        "achieved_flops_per_s": flops / seconds,
        "matmul_dtype": str(matmul_dtype),
        "matmul_peak_flops_per_s": peak,
        "fraction_of_peak": flops / seconds / peak,
    }
    fraction = result["fraction_of_peak"]
    print(f"update: {flops / 1e9:.1f} GFLOP in {seconds:.2f} s = {flops / seconds / 1e9:.1f} GFLOP/s; "
          f"{matmul_dtype} matmul peak {peak / 1e9:.1f} GFLOP/s -> {fraction:.1%} of peak")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
