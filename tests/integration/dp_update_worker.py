"""Worker for test_data_parallel.py, launched by torchrun with 2 gloo ranks on CPU.

The real `update.update` on a tiny model: the same sampled batch (4 prompts x 3 completions) is split by prompt, rank r
taking prompts 2r and 2r+1, and each rank runs the update on its share with the world; then rank 0 runs it on the
whole batch alone. The optimizer is SGD with lr 1 and no clipping, so each parameter's change is minus the gradient
the step used. Written to OUT.json: per case, the largest gap between the data-parallel and the single-process
change, loss and gradient norm, and the gradient norm itself (so a test sees the change is not zero).

With STRATEGY `fsdp2` the data-parallel run shards the model (and the reference) over the ranks (`World.shard`); the
change of a parameter is then read from its gathered full tensor.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 dp_update_worker.py MODEL_DIR OUT.json [STRATEGY]
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from unipo import config
from unipo.models.loading import load_model_and_tokenizer
from unipo.rollout.hf import sample
from unipo.trainers.common import build_algo
from unipo.trainers.dist import World
from unipo.trainers.update import reference_logps, update

ROWS = [{"prompt": "say 7"}, {"prompt": "pick a number:"}, {"prompt": "now"}, {"prompt": "a much longer prompt here"}]
CASES = {
    # rank 0's completions all have advantage 0: it trains no micro-batch, rank 1 trains two
    "token_mean_rank0_idle": (["algo.aggregation.name=token_mean"], [0.0] * 6 + [1.0, -1.0, 0.5, -0.5, 2.0, -2.0]),
    "seq_mean_token_mean_kl": (
        ["algo.aggregation.name=seq_mean_token_mean", "algo.kl.coef=0.1"],
        [1.0, -1.0, 0.0, 0.5, -0.5, 0.0, 2.0, -2.0, 0.0, 1.5, -1.5, 0.0],
    ),  # fmt: skip
}


def run(model_dir: str, overrides: list[str], advantages: torch.Tensor, world: World) -> tuple[list, dict]:
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu", dtype="float32")
    model.eval()
    cfg = config.load("grpo", ["model.autocast=off", "train.max_grad_norm=0", "train.micro_batch_size=4", *overrides])
    batch = sample(model, tokenizer, ROWS, n=3, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    if world.size > 1:
        rows = torch.arange(6) + 6 * world.rank
        batch, advantages = batch.select(rows), advantages[rows]
    inputs = {"rewards": torch.zeros(batch.num_completions), "progress": 0.0, "truncated": batch.truncated}
    model = world.shard(model)
    if world.sharded:  # each rank holds at most half of every parameter's rows
        assert all(p.to_local().shape[0] <= -(-p.shape[0] // 2) for p in model.parameters())
    if cfg.algo.kl.coef:
        ref, _ = load_model_and_tokenizer(model_dir, device="cpu", dtype="float32")
        inputs["ref_logp"] = reference_logps(world.shard(ref.eval()), batch, cfg)
    before = [_full(p).clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    stats = update(cfg, model, optimizer, scheduler, build_algo(cfg), batch, advantages, inputs, world)
    return [_full(p) - b for p, b in zip(model.parameters(), before, strict=True)], stats


def _full(p: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value (a sharded one's gathered: a collective)."""
    p = p.detach()
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    sharded = sys.argv[3:] == ["fsdp2"]
    dist.init_process_group("gloo")
    world = World(dist.get_rank(), dist.get_world_size(), sharded=sharded)
    report = {}
    for name, (overrides, advantages) in CASES.items():
        advantages = torch.tensor(advantages)
        dp_change, dp_stats = run(model_dir, overrides, advantages, world)
        if world.main:
            change, stats = run(model_dir, overrides, advantages, World())
            report[name] = {
                "param_gap": max(float((a - b).abs().max()) for a, b in zip(dp_change, change, strict=True)),
                "loss_gap": abs(dp_stats["loss"] - stats["loss"]),
                "grad_norm_gap": abs(dp_stats["grad_norm"] - stats["grad_norm"]),
                "grad_norm": stats["grad_norm"],
                "trained_frac_gap": abs(dp_stats["tokens/trained_frac"] - stats["tokens/trained_frac"]),
                "sharded": sharded,
            }
        dist.barrier()
    if world.main:
        with open(out, "w") as f:
            json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
