"""Worker for test_aggregation_ddp.py (ALGORITHMS.md §13 A1), launched by torchrun with 2 gloo ranks on CPU.

One batch of 7 sequences is split unevenly: rank 0 gets rows 0-1 in one micro-batch (7 tokens, 2 sequences), rank 1
gets rows 2-6 in two micro-batches (14 tokens, 4 non-empty sequences), each padded only to its own longest row.
Every rank all-reduces the global token and sequence counts, accumulates the gradient of a tiny linear model's
aggregated per-token loss over its micro-batches, and all-reduces the gradients with SUM. The result is compared
with the single-process full-batch gradient:

- token_mean, seq_sum_constant, seq_mean_token_sum, seq_mean_token_mean (global counts) must match it;
- token_mean_local (÷ the 3 micro-batches of the update) must not: it must equal the mean of the per-micro-batch
  token means instead, which is the expected mismatch.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_aggregation_worker.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from unipo import algos

F64 = torch.float64
N, T, D = 7, 6, 3
LENGTHS = [6, 1, 4, 0, 2, 5, 3]  # unequal lengths, one empty row
SHARDS = {0: [(0, 2)], 1: [(2, 4), (4, 7)]}  # rank -> micro-batches as row ranges: 7 | 4 + 10 tokens
INVARIANT = ("token_mean", "seq_sum_constant", "seq_mean_token_sum", "seq_mean_token_mean")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(N, T, D, generator=gen, dtype=F64)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    return features, mask


def model() -> torch.nn.Linear:
    torch.manual_seed(1)  # same weights on every rank and in the reference
    return torch.nn.Linear(D, 1, dtype=F64)


def per_token_loss(net: torch.nn.Linear, features: torch.Tensor) -> torch.Tensor:
    out = net(features).squeeze(-1)  # (N, T, D) -> (N, T)
    return out**2 - 0.5 * out  # any smooth per-token loss


def kwargs(name: str, n_micro: int) -> dict:
    if name == "seq_sum_constant":
        return {"constant": float(T)}  # pinned, as the trainer pins it to max_new_tokens
    if name == "token_mean_local":
        return {"grad_accum": n_micro}
    return {}


def grad(net: torch.nn.Linear) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def full_batch_grad(name: str) -> torch.Tensor:
    features, mask = batch()
    net = model()
    algos.get("aggregation", name)(per_token_loss(net, features), mask, **kwargs(name, 1)).backward()
    return grad(net)


def local_means_grad() -> torch.Tensor:
    """The gradient token_mean_local gives: the mean over the 3 micro-batches of their own token-mean gradients."""
    features, mask = batch()
    net = model()
    micro = [mb for shards in SHARDS.values() for mb in shards]
    for a, b in micro:
        loss = per_token_loss(net, features[a:b])
        (algos.get("aggregation", "token_mean")(loss, mask[a:b]) / len(micro)).backward()
    return grad(net)


def distributed_grad(name: str, rank: int) -> torch.Tensor:
    features, mask = batch()
    net = model()
    local = [(features[a:b], mask[a:b]) for a, b in SHARDS[rank]]
    counts = torch.tensor([sum(int(m.sum()) for _, m in local), sum(int(m.any(-1).sum()) for _, m in local)])
    dist.all_reduce(counts)  # SUM: the global num_tokens and num_seqs
    n_micro = sum(len(s) for s in SHARDS.values())
    for x, m in local:
        width = max(1, int(m.sum(-1).max()))  # each micro-batch padded to its own longest row
        loss = per_token_loss(net, x[:, :width])
        agg = algos.get("aggregation", name)
        agg(loss, m[:, :width], num_tokens=counts[0], num_seqs=counts[1], **kwargs(name, n_micro)).backward()
    for p in net.parameters():
        dist.all_reduce(p.grad)  # SUM, not DDP's mean: the normalisers are already global
    return grad(net)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == 2
    report = {}
    for name in INVARIANT:
        got, want = distributed_grad(name, rank), full_batch_grad(name)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"{name} differs from the full batch")
        report[name] = float((got - want).abs().max())
    got, full = distributed_grad("token_mean_local", rank), full_batch_grad("token_mean")
    torch.testing.assert_close(got, local_means_grad(), rtol=1e-10, atol=1e-12)
    gap = float((got - full).abs().max())
    assert gap > 1e-3, f"token_mean_local unexpectedly matches the full-batch gradient (gap {gap})"
    report["token_mean_local_gap"] = gap
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
