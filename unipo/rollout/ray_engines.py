"""Generation engines in Ray actors (`dist.ray_engines=N`, with `dist.ray`), as OpenRLHF and verl run theirs.

Each actor holds an engine of the run's kind (`rollout.engine`): an HF one on a copy of the policy shipped to it once
through Ray's object store, or vLLM (one GPU per actor). A batch's prompts are split into N contiguous shares, one
per actor, sampled at once; the batches come back and are joined in prompt order. A completion that draws from its
own generator (the collect stage's, keyed by its prompt: trainers/generation.py) draws in its actor what it would in
the trainer's process, so the run is the in-process one; a batch drawn from one generator (the run's) is sampled by
the first actor alone, from the generator's state, which then comes back to the trainer. After every update the
trainer's weights (what the actors' engines load: `Engine.weights`) are put in the object store once and every actor
loads them before the next batch. The actors stop when the run ends (and the local Ray the run started, if it did).
On several torchrun ranks (a shared cluster, `dist.ray_address`), rank 0 starts the actors under names every rank
looks up, each rank splits its own prompts across all of them, and rank 0 sends the weights while the others wait
(a barrier after every update: no rank samples with the old weights).
`../shared/notes/scale.md` §5.
"""

from __future__ import annotations

import uuid
from dataclasses import fields, replace
from typing import Any

import torch

from unipo.config import Config
from unipo.rollout.batch import Rollouts, cat
from unipo.rollout.engine import HFEngine, Weights
from unipo.rollout.vllm import VLLMEngine
from unipo.trainers.dist import World

NAMESPACE = "unipo"
"""The Ray namespace of the engine actors (named, so that the other ranks' drivers find rank 0's)."""


class _EngineActor:
    """One engine (`kind`: "hf" with `payload` = (model, tokenizer, `model.autocast`); "vllm" with `payload` =
    (config, tokenizer))."""

    def __init__(self, kind: str, payload: tuple[Any, Any]):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if kind == "vllm":
            cfg, tokenizer = payload
            self.engine: Any = VLLMEngine.from_config(cfg, tokenizer, device, sleeps=False)
        else:
            model, tokenizer, autocast = payload
            self.engine = HFEngine(model.to(device).eval().requires_grad_(False), tokenizer, autocast)

    def generate(self, rows: list[dict], sampling: dict[str, Any], states: Any) -> tuple[Rollouts, Any]:
        """The engine's batch (on the CPU) and, for one generator given by its state, that generator's state after."""
        one = states is not None and not isinstance(states, list)
        if one:
            device, state = states
            sampling["generator"] = torch.Generator(device).set_state(state)
        elif states is not None:
            sampling["generator"] = [torch.Generator().set_state(s) for s in states]
        batch = self.engine.generate(rows, **sampling)
        return on(batch, "cpu"), sampling["generator"].get_state() if one else None

    def load_weights(self, weights: Weights) -> None:
        self.engine.load_weights(weights)


class RayEngines:
    """The run's engines in `count` Ray actors, behind the engine interface (module docstring); on several ranks,
    rank 0's actors, which every rank finds by name."""

    def __init__(self, cfg: Config, model: Any, tokenizer: Any, count: int, world: World | None = None):
        import ray

        from unipo.rewards.ray_actors import start_ray

        self.ray, self.tokenizer, self.device = ray, tokenizer, next(model.parameters()).device
        self.world = world or World()
        self.kind = VLLMEngine if cfg.rollout.engine == "vllm" else HFEngine
        self.logprobs = self.kind.logprobs
        self.started = start_ray(cfg.dist.ray_address, count)
        key = self.world.broadcast(uuid.uuid4().hex)  # this run's
        names = [f"unipo-engine-{key}-{i}" for i in range(count)]
        if self.world.main:
            gpus = 1 if torch.cuda.is_available() else 0
            remote = ray.remote(num_cpus=0, num_gpus=gpus)(_EngineActor)  # 0 CPUs: beside the reward actors
            hf = (model, tokenizer, cfg.model.autocast)
            payload = ray.put((cfg, tokenizer) if cfg.rollout.engine == "vllm" else hf)
            self.actors = [remote.options(name=name, namespace=NAMESPACE).remote(cfg.rollout.engine, payload)
                           for name in names]  # fmt: skip
            ray.get([actor.__ray_ready__.remote() for actor in self.actors])  # started: the others find them
        self.world.barrier()
        if not self.world.main:
            self.actors = [ray.get_actor(name, namespace=NAMESPACE) for name in names]
        if cfg.rollout.engine == "vllm":
            self.load_weights(self.weights(model))  # a resumed or LoRA run's weights, not only `model.path`'s

    def weights(self, model: Any) -> Weights:
        return self.kind.weights(model)

    def load_weights(self, weights: Weights) -> None:
        """Rank 0 puts `weights` in the object store once and every actor loads them; no rank samples before."""
        if self.world.main:
            shared = self.ray.put(list(weights))
            self.ray.get([actor.load_weights.remote(shared) for actor in self.actors])
        else:
            for _ in weights:  # the gathers of a sharded model are collectives
                pass
        self.world.barrier()

    def generate(self, rows: list[dict[str, Any]], *, n: int | list[int], generator: Any = None,
                 forced: list[list[int]] | None = None, **sampling: Any) -> Rollouts:  # fmt: skip
        counts = [n] * len(rows) if isinstance(n, int) else list(n)
        keyed = isinstance(generator, list)
        shares = _shares(len(rows), len(self.actors) if keyed else 1)
        calls, start = [], 0
        for actor, (lo, hi) in zip(self.actors, shares, strict=False):
            first, start = start, start + sum(counts[lo:hi])
            part = {**sampling, "n": counts[lo:hi], "forced": None if forced is None else forced[first:start]}
            if keyed:
                states = [g.get_state() for g in generator[first:start]]
            else:
                states = None if generator is None else (generator.device.type, generator.get_state())
            calls.append(actor.generate.remote(rows[lo:hi], part, states))
        done = self.ray.get(calls)
        if generator is not None and not keyed:
            generator.set_state(done[0][1])
        batches = [batch for batch, _ in done]
        return on(batches[0] if len(batches) == 1 else cat(batches, self.tokenizer.pad_token_id), self.device)

    def close(self) -> None:
        for actor in self.actors if self.ray.is_initialized() and self.world.main else ():  # a shutdown stopped them
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False


def _shares(count: int, parts: int) -> list[tuple[int, int]]:
    """`count` items split into at most `parts` contiguous, non-empty (start, end) shares, the first ones larger."""
    size, extra = divmod(count, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]


def on(batch: Rollouts, device: torch.device | str) -> Rollouts:
    """`batch` with its tensors on `device`."""
    moved = {f.name: getattr(batch, f.name).to(device) for f in fields(batch)
             if isinstance(getattr(batch, f.name), torch.Tensor)}  # fmt: skip
    return replace(batch, **moved)
