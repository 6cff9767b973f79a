"""Data parallelism past one process: `torchrun --nproc_per_node N -m unipo train ...`.

Every rank holds the whole model, takes the same global prompts from the stream and generates and scores its
contiguous share of them (groups never straddle ranks). Batch-wide stages (reward shaping, advantages, the step's
metrics) run on the gathered batch, so a group-, batch- or prompt-level statistic is the single-process one; the
loss is normalised by the global token and sequence counts (all-reduced), and the summed gradients are all-reduced
once per optimizer step, so every rank steps with the gradient of the whole batch (what DDP does with `no_sync()`
over the micro-batches, `../shared/notes/scale.md` §1: a wrapper's hooks would also miss `models/logprobs.py`'s direct
calls of the backbone). Rank 0 alone writes the run directory, evaluates and saves checkpoints; a checkpoint holds
the global state (model, optimizer, stream cursor), so a run resumes into any number of ranks.

Sampling is world-size invariant: each completion draws from its own generator, seeded by (train.seed, the
prompt's position in the stream, its index in the group), so N ranks sample what one process samples.

Every sampler runs on several ranks (trainers/collect.py). A group filter sees every rank's groups and shares out the
extra prompts of each round like the step's. A sampler that acts on a group from its own samples (HPT, ViSurf, the
ARPO replay, whose buffer every rank holds whole) acts on each rank's groups. A sampler that generates more samples
(hints, drafts, roll-ins, inpainting, retries, Knapsack RL's budgets, REFUEL's and ARPO's branches, AEPO's tempered
samples) draws each from a generator keyed by its prompt (`tagged`), so the samples do not depend on the rank; its
draws and marks see every rank's batch (Knapsack's pass rates and ArCHer's replay are held whole on every rank).
Ranks may then hold different numbers of completions, or none: under fsdp2 a rank with fewer micro-batches runs
zero-weight passes and a rank with no completion runs the frozen models' forward on a placeholder row, so every rank
meets every gather.

With `dist.strategy=fsdp2` each rank holds a 1/N shard of every parameter, gradient and optimizer state
(`fully_shard` on each decoder layer, then on the root, which keeps the tied embedding and LM head): a forward
all-gathers a layer's parameters and the backward reduce-scatters its gradients (summed, not averaged: the loss is
already normalised by the global counts). The differences from `ddp`, each from `../shared/notes/scale.md` §1–§2:
`models/logprobs.py` runs its backbone-plus-head computation as one registered forward of the root; the policy is
gathered whole while it samples and scores (ranks decode different lengths, which per-layer all-gathers could not
follow) and sharded again for the update; ranks run the same number of micro-batches (a rank with fewer runs
zero-weight ones); checkpoints hold the gathered full state (HF weights, and the optimizer state keyed as one
process keys it), so a run resumes into any number of ranks, with either strategy.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from unipo.config import Config, ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"
    """Where collectives run (gloo: the CPU; NCCL: this rank's GPU)."""
    sharded: bool = False
    """`dist.strategy=fsdp2`: the models are sharded over the ranks (`shard`); gradients are reduced in backward."""

    @property
    def main(self) -> bool:
        """Whether this rank writes the run directory, evaluates and checkpoints."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's contiguous share of a global list whose length the world size divides."""
        k = len(items) // self.size
        return items[self.rank * k : (self.rank + 1) * k]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks (a new tensor; `x` itself when alone)."""
        if self.size == 1:
            return x
        y = x.detach().to(self.device, copy=True)
        dist.all_reduce(y)
        return y.to(x.device)

    def ratio(self, num: float, den: float) -> float:
        """Σ num / Σ den over the ranks (NaN when Σ den is 0): a statistic of the whole batch from each rank's
        share, where a mean of the ranks' own ratios would weigh them wrongly."""
        total = self.sum(torch.tensor([float(num), float(den)], dtype=torch.float64))
        return float(total[0] / total[1]) if total[1] else float("nan")

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sizes(self, n: int) -> list[int]:
        """Every rank's `n`, in rank order."""
        if self.size == 1:
            return [n]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, n)
        return out

    def gather_rows(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """Every rank's rows of `x` (dim 0) in rank order; a dim 1 of unequal widths is right-padded with `fill`."""
        if self.size == 1:
            return x
        shapes = self.sizes(tuple(x.shape))
        rows, width = max(s[0] for s in shapes), max(s[1] if len(s) > 1 else 0 for s in shapes)
        kind = x.dtype
        padded = x.to(torch.uint8) if kind == torch.bool else x  # gloo gathers no bool
        if x.dim() > 1:
            padded = torch.nn.functional.pad(padded, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1]), value=fill)
        padded = torch.cat([padded, padded.new_zeros((rows - x.shape[0], *padded.shape[1:]))])
        padded = padded.to(self.device).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: s[0]] for p, s in zip(parts, shapes, strict=True)]).to(x.device, kind)

    def gather_list(self, items: list) -> list:
        """Every rank's items in rank order."""
        if self.size == 1:
            return list(items)
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    def gather_groups(self, group_ids: torch.Tensor) -> torch.Tensor:
        """Every rank's group ids, offset so that a group of rank r keeps its own id among all ranks' groups."""
        counts = self.sizes(int(group_ids.max()) + 1 if group_ids.numel() else 0)
        offset = sum(counts[: self.rank])
        return self.gather_rows(group_ids + offset)

    def gather_inputs(self, inputs: dict[str, Any], n: int) -> dict[str, Any]:
        """`inputs` with every per-sample value (a tensor or list of `n` rows) replaced by all ranks' rows."""
        out = {}
        for key, value in inputs.items():
            if key in ("group_ids",) and torch.is_tensor(value):
                out[key] = self.gather_groups(value)
            elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
                out[key] = self.gather_rows(value)
            elif isinstance(value, list) and len(value) == n:
                out[key] = self.gather_list(value)
            else:
                out[key] = value
        return out

    def local(self, x: torch.Tensor, n: int, width: int | None = None) -> torch.Tensor:
        """This rank's `n` rows of a gathered tensor (cut back to `width` columns)."""
        offset = sum(self.sizes(n)[: self.rank])
        x = x[offset : offset + n]
        return x if width is None or x.dim() < 2 else x[:, :width]

    def all_reduce_grads(self, params: list[torch.Tensor], bucket: int = 2**24) -> None:
        """Sum the gradients of `params` over the ranks, in buckets of about `bucket` elements. A sharded model's
        parameters (DTensors) are skipped, as it reduce-scatters their gradients in the backward pass; a model that is
        never sharded (the critic, under `fsdp2` too) is summed here."""
        if self.size == 1:
            return
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None and not isinstance(p, DTensor)]
        start = 0
        while start < len(grads):
            end, numel = start, 0
            while end < len(grads) and (numel == 0 or numel + grads[end].numel() <= bucket):
                numel += grads[end].numel()
                end += 1
            flat = torch.cat([g.reshape(-1) for g in grads[start:end]])
            dist.all_reduce(flat)
            offset = 0
            for g in grads[start:end]:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            start = end

    def padding(self, count: int) -> int:
        """How many zero-weight micro-batches this rank adds to its `count` so that every rank runs as many forward
        and backward passes (each one all-gathers and reduce-scatters when sharded): 0 unless sharded."""
        return max(self.sizes(count)) - count if self.sharded else 0

    def shard(self, model: Any) -> Any:
        """`model` sharded over the ranks with FSDP2 when `sharded` (each decoder layer, then the root with the
        embedding and LM head; gradients summed over the ranks), else `model` itself."""
        if not self.sharded:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(self.device.split(":")[0], (self.size,))  # a CPU mesh for gloo (pytorch#132471)
        layers = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        for module in _fsdp_modules(model):
            module.set_gradient_divide_factor(1.0)  # a sum over the ranks: the loss has the global normalisers
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
        model.unipo_forward = _call.__get__(model)  # `models/logprobs.py` runs through it: the root's hooks run
        register_fsdp_forward_method(model, "unipo_forward")
        return model

    def unshard(self, model: Any) -> None:
        """Gather a sharded model's full parameters on every rank (a collective) and keep them through forwards until
        `reshard`: sampling then makes no collective, however many tokens each rank decodes."""
        for module in _fsdp_modules(model) if self.sharded else ():
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()

    def reshard(self, model: Any) -> None:
        """Free the gathered parameters of `unshard` (a sharded model's forwards gather layer by layer again)."""
        for module in _fsdp_modules(model) if self.sharded else ():
            module.reshard()
            if module is not model:  # the root keeps its parameters from forward to backward (FSDP2's default)
                module.set_reshard_after_forward(True, recurse=False)

    @contextlib.contextmanager
    def gathered(self, model: Any) -> Iterator[None]:
        """`unshard` ... `reshard`: e.g. rank 0's held-out evaluation, while the other ranks wait at a barrier."""
        self.unshard(model)
        try:
            yield
        finally:
            self.reshard(model)

    def full_weights(self, model: Any) -> dict | None:
        """A sharded model's full weights, gathered to rank 0's CPU for a checkpoint (a collective: every rank calls
        it; the others get an empty dict); None (the model's own `state_dict`) when not sharded (e.g. a critic, whole on
        every rank)."""
        if not self.sharded or not _fsdp_modules(model):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        unique = {name for name, _ in model.named_parameters()}
        tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - unique  # e.g. a tied LM head
        return {name: value for name, value in weights.items() if name not in tied}

    def optimizer_state(self, model: Any, optimizer: Any) -> dict:
        """The optimizer's state as one process holds it (keyed by parameter index), for a checkpoint: a sharded
        one's is gathered to rank 0 (a collective: every rank calls it; the others get an empty dict)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim = get_optimizer_state_dict(model, optimizer, options=options)
        if not optim:  # gathered to rank 0's CPU only: the other ranks get nothing (and save nothing)
            return {}
        index = {name: i for i, name in enumerate(_trained_names(model))}
        state = {index[name]: value for name, value in optim["state"].items()}
        groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_optimizer(self, model: Any, optimizer: Any, saved: dict) -> None:
        """Load an optimizer state saved by `optimizer_state` (on any number of ranks) into this rank's optimizer."""
        if not self.sharded:
            optimizer.load_state_dict(saved)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _trained_names(model)
        state = {names[i]: value for i, value in saved["state"].items()}
        groups = [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]
        set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))  # fmt: skip


def _call(_model: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`; registered as a forward method of a sharded model (`World.shard`)."""
    return fn(*args, **kwargs)


def _fsdp_modules(model: Any) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _trained_names(model: Any) -> list[str]:
    """The names of the parameters an optimizer from `common.build_optimizer` holds, in its order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_world(cfg: Config) -> World:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPUs; one GPU per local rank) and check
    that the recipe can run data-parallel; a plain run is rank 0 of 1."""
    if not launched():
        return World()
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if cfg.train.prompts_per_step % size:
        raise ConfigError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be a multiple of the number of "
                          f"ranks ({size}): each rank takes an equal share of the prompts")  # fmt: skip
    if not dist.is_initialized():
        cuda = cfg.model.device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=cfg.dist.timeout_s))
        _joined.append(True)
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    return World(rank, size, device, sharded=cfg.dist.strategy == "fsdp2")


_joined: list[bool] = []
"""Non-empty once `init_world` created the process group (one the caller made is left to the caller)."""


def close_world() -> None:
    """Leave the process group `init_world` joined, if it did."""
    if _joined and dist.is_initialized():
        dist.destroy_process_group()
    _joined.clear()


def device_for(cfg: Config) -> str:
    """The model's device: under torchrun with GPUs, this rank's GPU."""
    if launched() and cfg.model.device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return cfg.model.device


def sample_generators(seed: int, prompt_ids: list[int | str], counts: list[int]) -> list[torch.Generator]:
    """One CPU generator per completion (prompt-major), seeded by (seed, the prompt's stream key: its position, or that
    and a tag for a sampler's extra samples, its index in the group): the draws of a completion do not depend on
    which rank or batch samples it."""
    out = []
    for pid, n in zip(prompt_ids, counts, strict=True):
        for j in range(n):
            digest = hashlib.blake2b(f"{seed}-{pid}-{j}".encode(), digest_size=8).digest()
            out.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1))
    return out


def tagged(keys: list[int | str], tag: str) -> list[str]:
    """Stream keys of a sampler's extra samples of the prompts with `keys` (`sample_generators`)."""
    return [f"{k}.{tag}" for k in keys]
