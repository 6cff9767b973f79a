"""Environment steps in worker processes (`env.workers` > 0): each environment lives in one of N long-lived processes
and the trainer holds a proxy (`RemoteEnv`) with the same protocol, so the multi-turn rollout is the same code.

Why: a step that hangs in a thread cannot be stopped (the thread is abandoned at `env.timeout_s`), and a step that
burns CPU in Python holds the trainer's GIL. In a worker, a step past `env.timeout_s` stops the worker (killed, then
replaced by a fresh one); every episode whose environment it held ends unscored, counted in `env/errors`, and the run
goes on. Each worker runs its requests one at a time, so the rollout's environments step N at a time.

Workers start on first use as fresh interpreters (`python -m unipo.envs.workers`, on the trainer's import path) that
import the environment by name or dotted path: never a fork of the trainer and its model, and never a re-import of
the trainer's main script. They are killed when the trainer's process exits. An environment is dropped from
its worker when the rollout is done with it (`close`, sent with that worker's next request).
"""

from __future__ import annotations

import atexit
import itertools
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from unipo.envs import Late, Step

STARTUP_S = 120
"""Seconds a fresh worker may take to import its environment and be ready (before any step is timed)."""


class RemoteError(Exception):
    """What an environment raised in its worker, as `Type: message`."""


class _Worker:
    def __init__(self, spec: tuple[str | None, str | None, dict[str, Any]]):
        self.spec, self.lock, self.drops, self.drop_lock = spec, threading.Lock(), [], threading.Lock()
        self.generation = -1  # how many times the process was replaced; each start adds one
        self._start()

    def _start(self) -> None:
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}  # the trainer's imports
        self.process = subprocess.Popen([sys.executable, "-m", "unipo.envs.workers", str(child_reads),
                                         str(child_writes)], pass_fds=(child_reads, child_writes), env=env)  # fmt: skip
        os.close(child_reads)
        os.close(child_writes)
        self.conn = _Pipe(parent_reads, parent_writes)
        self.conn.send(self.spec)
        try:
            if not self.conn.poll(STARTUP_S):  # importing the environment (and torch) in a fresh interpreter
                raise RuntimeError(f"did not start within {STARTUP_S} s")
            status, value = self.conn.recv()
            if status == "error":
                raise RuntimeError(f"could not make its environment: {value}")
        except (RuntimeError, EOFError) as e:
            self.stop()
            raise RuntimeError(f"an environment worker {e or 'ended at start-up'}") from None
        self.generation += 1

    def stop(self) -> None:
        """Kill the process (a step in it may hang) and wait for it."""
        self.process.kill()
        self.process.wait()
        self.conn.close()

    def call(self, op: str, key: int, arg: Any, timeout_s: float, generation: int | None) -> tuple[Any, int]:
        """(the reply to one request, the worker's generation); a `RemoteError` raised for an environment's exception.
        Past `timeout_s` the worker is replaced and `Late` raised. `generation`: the one the environment was made in
        (None for `reset`, which makes it); an environment of a worker since replaced is gone."""
        with self.lock:
            if generation is not None and generation != self.generation:
                raise RemoteError("LostEnvironment: its worker process was stopped (another episode's step ran past "
                                  "env.timeout_s, or the worker died)")  # fmt: skip
            with self.drop_lock:
                drops, self.drops = self.drops, []
            self.conn.send((op, key, arg, drops))
            if not self.conn.poll(timeout_s):
                self._restart()
                raise Late(f"no result within {timeout_s:g} s (its worker process was stopped)")
            try:
                status, value = self.conn.recv()
            except EOFError:  # the worker died (a crash in native code, os._exit)
                self._restart()
                raise RemoteError("WorkerDied: the environment's worker process ended during the step") from None
            made_in = self.generation
        if status == "error":
            raise RemoteError(value)
        return value, made_in

    def _restart(self) -> None:
        self.stop()
        self._start()


class EnvPool:
    """`workers` processes that make and step the environments of `spec` (name, dotted path, keywords) for a run;
    `make()` is the run's environment factory."""

    def __init__(self, name: str | None, component: str | None, kwargs: dict[str, Any], workers: int, timeout_s: float):
        self.spec, self.size, self.timeout_s = (name, component, dict(kwargs)), workers, timeout_s
        self.workers: list[_Worker] = []
        self.keys = itertools.count()
        self.guard = threading.Lock()

    def make(self) -> RemoteEnv:
        """A new environment in the next worker (round robin); the workers start on the first call."""
        with self.guard:
            if not self.workers:
                self.workers = [_Worker(self.spec) for _ in range(self.size)]
                atexit.register(self.close)
            key = next(self.keys)
        return RemoteEnv(self, self.workers[key % self.size], key)

    def close(self) -> None:
        """Stop every worker."""
        for w in self.workers:
            w.stop()
        self.workers = []


class RemoteEnv:
    """The trainer's side of one environment in a worker: `reset`, `step` and `role` as the environment's own. The
    worker makes the environment at `reset` (so a constructor that hangs or raises fails the episode, not the run)."""

    def __init__(self, pool: EnvPool, worker: _Worker, key: int):
        self.pool, self.worker, self.key = pool, worker, key
        self.generation: int | None = None
        self.role = "user"

    def reset(self, row: dict[str, Any]) -> None:
        self.role, self.generation = self.worker.call("reset", self.key, row, self.pool.timeout_s, None)

    def step(self, action: str) -> Step:
        if self.generation is None:
            raise RemoteError("NotStarted: step() before reset()")
        return self.worker.call("step", self.key, action, self.pool.timeout_s, self.generation)[0]

    def close(self) -> None:
        """Drop the environment from its worker (with the worker's next request)."""
        with self.worker.drop_lock:  # not the worker's lock, which a hung step may hold until its timeout
            self.worker.drops.append(self.key)


class _Pipe:
    """Two one-way pipes as one connection (pickled messages; `poll` with a timeout)."""

    def __init__(self, read_fd: int, write_fd: int):
        self.reader, self.writer = Connection(read_fd, writable=False), Connection(write_fd, readable=False)

    def send(self, message: Any) -> None:
        self.writer.send(message)

    def recv(self) -> Any:
        return self.reader.recv()

    def poll(self, timeout_s: float) -> bool:
        return self.reader.poll(timeout_s)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _serve(conn: _Pipe) -> None:
    """A worker's loop: make the environment factory from the first message (name, dotted path, keywords), then make
    and reset (replying the role), step, and drop environments by key, replying ("ok", value) or ("error", text)."""
    from unipo.envs import env_factory

    try:
        make = env_factory(*conn.recv())
    except Exception as e:  # noqa: BLE001 (reported to the trainer)
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    envs: dict[int, Any] = {}
    while True:
        try:
            op, key, arg, drops = conn.recv()
        except EOFError:  # the trainer is gone
            return
        for k in drops:
            envs.pop(k, None)
        try:
            if op == "reset":  # a new episode: a new environment
                envs[key] = make()
                envs[key].reset(arg)
                value = getattr(envs[key], "role", "user")
            else:
                value = envs[key].step(arg)
            conn.send(("ok", value))
        except Exception as e:  # noqa: BLE001 (reported to the trainer, which ends the episode)
            conn.send(("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":  # a worker: python -m unipo.envs.workers READ_FD WRITE_FD
    _serve(_Pipe(int(sys.argv[1]), int(sys.argv[2])))
