"""Generation and scoring for the collect stage (trainers/collect.py) and the samplers that generate more
(trainers/hinted.py, trainers/retry.py, trainers/segments.py, trainers/pipeline.py).

Same samples on any number of ranks: a completion generated with stream keys draws from its own generator, seeded by
(the run's seed, its prompt's key, its index among the prompt's completions) (`dist.sample_generators`). The step's
own samples are keyed by their prompts' stream positions; a sampler's extra samples by those positions and a tag
(`tagged`), so that they differ from the step's and from each other, and do not depend on which rank draws them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unipo.config import Config
from unipo.models.loading import autocast_context
from unipo.rollout.batch import Rollouts
from unipo.rollout.engine import Engine, HFEngine
from unipo.rollout.multiturn import rollout
from unipo.trainers import branching
from unipo.trainers.common import Algo, Timer, call
from unipo.trainers.dist import World, sample_generators

if TYPE_CHECKING:
    from unipo.trainers.rl import RLState

Collected = tuple[Rollouts, torch.Tensor, dict[str, float]]
"""The batch, its rewards (N, K: one column per reward function) and the sampler's metrics."""


def generate_and_score(s: RLState, rows: list[dict], timer: Timer, **kwargs: Any) -> tuple[Rollouts, torch.Tensor]:
    """The completions of `generate` (same arguments) and their rewards (N, K)."""
    batch = generate(s, rows, timer, **kwargs)
    with timer("score"):
        return batch, s.scorer.score(batch)  # (N, K)


def generate(
    s: RLState,
    rows: list[dict],
    timer: Timer,
    forced: list[list[int]] | None = None,
    n: list[int] | None = None,
    temperature: float | None = None,
    positions: list[int | str] | None = None,
) -> Rollouts:
    """`rollout.group_size` completions of each row (or `n[i]` of row i; starting with `forced` tokens, one list per
    completion; at `temperature` instead of `rollout.temperature`), not scored yet. With the rows' stream keys
    (`positions`), each completion draws from its own generator (module docstring); otherwise from the run's."""
    cfg, r = s.cfg, s.cfg.rollout
    counts = [r.group_size] * len(rows) if n is None else n
    generator = s.generator if positions is None else sample_generators(cfg.train.seed, positions, counts)
    sampling = {"n": counts, **branching.sampling(s, temperature, generator)}
    engine = s.engine or HFEngine(s.model, s.tokenizer)  # none: the trainer's own model samples
    with timer("generate"), autocast_context(s.model, cfg.model.autocast):
        if s.env is not None:  # multi-turn trajectories, turn by turn by an HF engine's model (checks.py refuses the
            batch = rollout(engine.model, s.tokenizer, rows, *s.env, **sampling)  # others and forcing samplers)
        else:
            batch = engine.generate(rows, forced=forced, **sampling)
    return batch


def build_engine(cfg: Config, model: Any, tokenizer: Any, world: World) -> Engine | None:
    """The run's generation engine (`rollout.engine`), made from the loaded policy before it is sharded: engines in
    Ray actors (`dist.ray_engines`); a generation server's (`unipo serve`) or vLLM, loaded with the policy's weights
    (a resumed or LoRA run's, not only `model.path`'s), vLLM asleep between batches unless it samples ahead; an HF
    copy of the policy for the producer of asynchronous rollouts; None: the trainer's own model samples."""
    if cfg.dist.ray_engines:
        from unipo.rollout.ray_engines import RayEngines

        return RayEngines(cfg, model, tokenizer, cfg.dist.ray_engines, world)
    if cfg.rollout.engine == "server":
        from unipo.rollout.server import ServerEngine

        return ServerEngine.from_config(cfg, model, tokenizer, world)
    if cfg.rollout.engine == "vllm":
        from unipo.rollout.vllm import VLLMEngine

        device = next(model.parameters()).device
        engine = VLLMEngine.from_config(cfg, tokenizer, device, sleeps=cfg.rollout.max_staleness is None)
        engine.load_weights(engine.weights(model))
        return engine
    return HFEngine.copy_of(model, tokenizer) if cfg.rollout.max_staleness is not None else None


def publish(s: RLState, timer: Timer) -> None:
    """After an update: the policy's new weights for the engine that samples the next batches (the producer's loads
    them before its next batch; a synchronous engine at once), timed as `sync`."""
    if s.pipeline is None and s.engine is None:
        return
    with timer("sync"):
        if s.pipeline is not None:
            s.pipeline.publish(s.model, s.step)
        else:
            s.engine.load_weights(s.engine.weights(s.model))


def close_engines(s: RLState) -> None:
    """Stop the producer of asynchronous rollouts and release the engine."""
    if s.pipeline is not None:
        s.pipeline.close()
    if s.engine is not None:
        s.engine.close()


def sampler_inputs(s: RLState, fn: Any, per_fn: torch.Tensor | None = None) -> dict[str, Any]:
    """The trainer inputs a sampler may take: each reward function's scores, the training progress, and a CPU
    generator seeded from the run's (which may live on the GPU) so that its draws resume exactly, drawn only for a
    sampler that declares it."""
    inputs: dict[str, Any] = {} if per_fn is None else {"reward_components": per_fn}
    if "progress" in fn.needs:
        inputs["progress"] = (s.step - 1) / max(1, s.cfg.train.max_steps)
    if "generator" in fn.needs:
        seed = torch.randint(0, 2**62, (1,), generator=s.generator, device=s.generator.device)
        inputs["generator"] = torch.Generator().manual_seed(int(seed))
    return inputs


def every_mark(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's per-completion output on every rank's freshly scored samples, in rank order (as one process
    holds them), and their group ids among all ranks' groups; every rank calls it."""
    w = s.world
    every, group_ids = w.gather_rows(per_fn), w.gather_groups(batch.group_ids.cpu())
    out = call(algo.sampler, s.scorer.combine(every), group_ids, inputs=sampler_inputs(s, algo.sampler, every))
    return out.cpu(), group_ids


def marks(s: RLState, algo: Algo, batch: Rollouts, per_fn: torch.Tensor) -> torch.Tensor:
    """This rank's rows of `every_mark` (keep / hint / fraction / count / cut), on the batch's device: a sampler that
    draws, draws for the whole batch, so its marks are those of one process."""
    out, _ = every_mark(s, algo, batch, per_fn)
    return s.world.local(out, batch.num_completions).to(batch.group_ids.device)


def nanmean(x: torch.Tensor, world: World | None = None) -> float:
    """The mean of the entries that are not NaN (NaN when there are none), over every rank's `x` with `world`."""
    x = x[~x.isnan()]
    return (world or World()).ratio(float(x.sum()), x.numel())
