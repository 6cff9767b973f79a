"""Asynchronous rollouts with bounded staleness (`rollout.max_staleness=k`): a producer thread samples and scores the
batches of the next steps with its own engine (rollout/engine.py: a copy of the policy, vLLM, or engines in Ray
actors) while the trainer updates.

Versions count optimizer-step batches: the trainer's policy before the update of step t is version t − 1, and a batch
records the version of the engine weights that generated it. Step t's batch is sampled by version max(t − 1 − k, start)
exactly, as prime-rl's `async_level` (step n samples from checkpoint n − k): the producer waits until the trainer has
published that version (admission control, as SkyRL's `max_staleness_steps` and AReaL's `max_head_offpolicyness`), so no
batch is ever older than k versions when it is trained and none has to be dropped, and a run is reproducible (the lag
does not depend on thread timing). The lag is logged each step (`rollout/version_lag`). After each update the trainer
publishes what its engine loads (`Engine.weights`: the copy's trainable weights, vLLM's whole checkpoint; at most k + 1
are held); the producer loads the one it needs between batches, never during one, so every batch has one version
(`../shared/notes/scale.md` §6). The producer hands each batch to a scoring thread and goes on to the next batch, so
scoring (e.g. in Ray actors, `dist.ray`) overlaps the generation of the next batch. The trainer's first-pass log-probs
stay the "old" ones (AReaL's proximal policy); the engine's are the behaviour log-probs (`Rollouts.rollout_logp`) that
an off-policy correction (`rollout_is`, `opsm`, ...) reads. With k = 0 the producer waits for every update, so the run
is the synchronous one. Samplers are refused (trainers/checks.py): the producer draws plain batches of
`train.prompts_per_step` prompts. On several ranks each rank's producer samples the rank's share of them (keyed by their
stream positions, as the synchronous step does) with an engine made from the whole policy before the trainer's is
sharded; under `fsdp2` every rank gathers the shards when it publishes.

Resume restarts the producer from the data position after the last batch trained (the prefetched ones are sampled
again, by the resumed policy).
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from unipo.rollout.batch import Rollouts
from unipo.trainers.common import Timer
from unipo.trainers.generation import Collected, generate

if TYPE_CHECKING:
    from unipo.trainers.rl import RLState


@dataclass
class _Batch:
    step: int
    version: int
    batch: Rollouts
    scores: cf.Future
    """The rewards (N, K) and the seconds the scoring took, from the scoring thread."""
    position: dict[str, int]
    """The data stream's state after this batch's prompts (what a checkpoint after this step saves)."""
    seconds: float


class Pipeline:
    """The producer of bounded-staleness batches for steps `start + 1 ...` (module docstring)."""

    def __init__(self, s: RLState, start: int, max_staleness: int):
        self.k, self.state, self.position, self.engine = max_staleness, s, s.stream.state(), s.engine
        self.version = start  # the engine's weights: the policy after `start` updates
        self.published: dict[int, list[tuple[str, torch.Tensor]]] = {}
        self.ready: queue.Queue[_Batch | BaseException] = queue.Queue()
        self.scoring = cf.ThreadPoolExecutor(1, thread_name_prefix="unipo-scoring")
        self.changed, self.stopped = threading.Condition(), False
        self.thread = threading.Thread(target=self._produce, args=(start + 1,), name="unipo-rollouts", daemon=True)
        self.thread.start()

    def take(self, step: int, timer: Timer) -> tuple[Collected, dict[str, float]]:
        """Step `step`'s batch (waiting for it) and its metrics: the version lag and the producer's phase times."""
        t0 = time.perf_counter()
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        assert item.step == step, (item.step, step)
        per_fn, score_s = item.scores.result()
        timer.totals |= {"wait": time.perf_counter() - t0, "generate": item.seconds, "score": score_s}
        self.position = item.position
        lag = (step - 1) - item.version
        stats = {"rollout/version_lag": float(lag), "rollout/policy_version": float(item.version)}
        return (item.batch, per_fn, {}), stats

    def publish(self, model: Any, version: int) -> None:
        """The trainer's weights after `version` updates, for the engine to load before its next batch (a sharded
        parameter is gathered whole: a collective, which every rank makes after each update)."""
        weights = list(self.engine.weights(model))  # gathered now, in the trainer's thread (vLLM's stream)
        with self.changed:
            self.published[version] = weights
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()
        self.thread.join(timeout=600)
        self.scoring.shutdown(wait=False, cancel_futures=True)

    def _produce(self, step: int) -> None:
        try:
            while step <= self.state.cfg.train.max_steps:
                need = max(step - 1 - self.k, self.version)
                with self.changed:  # admission: version step - 1 - k must be published
                    while not self.stopped and need != self.version and need not in self.published:
                        self.changed.wait()
                    if self.stopped:
                        return
                    self._load(need)
                s, timer = self.state, Timer()
                rows, positions = s.stream.take_with_positions(s.cfg.train.prompts_per_step)
                rows, positions = s.world.share(rows), s.world.share(positions)  # this rank's prompts
                batch = generate(replace(s, engine=self.engine), rows, timer, positions=positions)
                scores = self.scoring.submit(_timed, s.scorer.score, batch)
                self.ready.put(_Batch(step, self.version, batch, scores, s.stream.state(), timer.totals["generate"]))
                step += 1
        except BaseException as e:  # the trainer re-raises it at its next `take`
            self.ready.put(e)

    def _load(self, version: int) -> None:
        """Load published `version` into the engine (between batches: the caller holds the lock) and drop the copies
        no later batch needs."""
        if version != self.version:
            self.engine.load_weights(self.published[version])
            self.version = version
        self.published = {v: w for v, w in self.published.items() if v > version}


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0
