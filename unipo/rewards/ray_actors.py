"""Reward functions in Ray actors (`dist.ray=true`): on a local Ray started for the run, or on an existing cluster
(`dist.ray_address`).

Each of `reward.workers` actors (at least one) receives every reward function once, when it starts (a reward's heavy
state, e.g. a judge model, is built there and not shipped with each call); a call's completions are split by prompt
group across the actors, as with worker processes (rewards/scorer.py), and the scorer's isolation holds: a call past
`reward.timeout_s` kills the actors (they start again for the next call), an actor that dies fails only the calls it
was running, and an exception in a function scores its call None. Functions are shipped with cloudpickle: a
module-level function by its import path, which the actors resolve with the driver's `sys.path` on a local Ray (on a
cluster, install the code on its nodes). `../shared/notes/scale.md` §5.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future
from typing import Any

from unipo.rewards import run_call


class _Actor:
    """Holds the reward functions; runs one call of one of them."""

    def __init__(self, fns: list[Any]):
        self.fns = fns

    def call(self, k: int, prompts: list, completions: list, columns: dict) -> Any:
        return run_call(self.fns[k], prompts, completions, columns)


def start_ray(address: str | None, cpus: int) -> bool:
    """Join the Ray cluster at `address`, or start a local one with `cpus` CPUs, unless this process is in one
    already; whether it started one (which the caller then shuts down)."""
    import ray

    if ray.is_initialized():
        return False
    path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env=None if address else {"env_vars": {"PYTHONPATH": path}})  # fmt: skip
    return True


class RayActors:
    """`reward.workers` Ray actors holding `fns`; `submit` is a call of function `k` in the next one, as a future."""

    def __init__(self, fns: list[Any], actors: int, address: str | None = None):
        import ray

        self.ray, self.fns, self.count = ray, fns, max(1, actors)
        self.started = start_ray(address, self.count)
        self.actors: list[Any] = []
        self.turn = 0

    def submit(self, k: int, prompts: list, completions: list, columns: dict) -> Future:
        """Function `k` on these inputs in the next actor (round robin), as a concurrent future."""
        if not self.actors:
            remote = self.ray.remote(num_cpus=1, max_restarts=-1)(_Actor)
            self.actors = [remote.remote(self.fns) for _ in range(self.count)]
        actor = self.actors[self.turn % len(self.actors)]
        self.turn += 1
        return actor.call.remote(k, prompts, completions, columns).future()

    def kill(self) -> None:
        """Stop the actors (a stuck call with them); the next `submit` starts new ones. (Once Ray is shut down, e.g.
        by the engines that started it, they are gone.)"""
        for actor in self.actors if self.ray.is_initialized() else ():
            self.ray.kill(actor, no_restart=True)
        self.actors = []

    def close(self) -> None:
        self.kill()
        if self.started:
            self.ray.shutdown()
            self.started = False
