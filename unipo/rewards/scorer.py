"""Calling reward functions on a batch, isolated: a reward that throws, hangs or kills its process never stops a run.

Every call has a time limit (`reward.timeout_s`). A function that raises, returns the wrong number of values or runs
past its limit scores None for every completion of that call: those completions are unscored in full (NaN in every
column, so the combined reward is NaN and the advantage 0; they are left out of group baselines, never scored 0),
the failure is counted per function (`reward/errors/<name>`: completions left unscored) and logged once with the
offending input, and the run goes on.

Where a function runs:
- `reward.workers = 0` (default): in the trainer's process, each call in a daemon thread; `async def` functions run
  concurrently with each other in one event loop. A call past its limit is abandoned (Python cannot stop a thread:
  one that never returns keeps its thread, and one that loops on the CPU keeps competing for it), so use workers
  for functions that are not yours.
- `reward.workers = N`: in N worker processes (spawned once and reused); each call's completions are split by
  prompt group across them. A worker past its limit is killed and the pool started again; a worker that dies
  (segfault, `os._exit`, out of memory) fails only that call. Functions must then be importable (defined at module
  level), which is checked when the run starts.
- `dist.ray = true`: in `reward.workers` Ray actors (at least one; rewards/ray_actors.py), split and isolated the
  same way, on a local Ray or an existing cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import logging
import math
import multiprocessing
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from unipo.algos.reward_shaping import weighted_sum
from unipo.rewards import RewardError, checked_coro, reward_inputs, run_call, text_of

log = logging.getLogger("unipo")


def _in_thread(target: Callable[[], Any], timeout: float) -> Any:
    """`target()` in a daemon thread; RewardError when it runs past `timeout` seconds (the thread is abandoned)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = target()
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = e

    thread = threading.Thread(target=body, daemon=True, name="unipo-reward")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RewardError(f"no result within reward.timeout_s={timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _gather_async(calls: list[Callable[[], Any]], timeout: float) -> list[Any]:
    async def one(make: Callable[[], Any]) -> Any:
        try:
            return await asyncio.wait_for(make(), timeout)
        except asyncio.TimeoutError:
            return RewardError(f"no result within reward.timeout_s={timeout:g} s")
        except Exception as e:  # noqa: BLE001 (a user's reward may fail in any way)
            return e

    return await asyncio.gather(*(one(c) for c in calls))


class RewardScorer:
    """Scores completions with weighted reward functions, each call isolated (module docstring)."""

    def __init__(
        self,
        fns: list[Callable],
        weights: list[float],
        names: list[str] | None = None,
        timeout_s: float = 60.0,
        workers: int = 0,
        scores: list[dict[str, float] | None] | None = None,
        ray: bool = False,
        ray_address: str | None = None,
    ):
        self.fns = fns
        self.fn_names = names or [getattr(f, "__name__", f"reward_{i}") for i, f in enumerate(fns)]
        self.scores = scores or [None] * len(fns)
        """Per function: None (it returns a list), or the named scores it returns (a dict of lists) and their
        weights relative to the function's own weight."""
        self.names = [f"{n}/{k}" if keys else n for n, keys in zip(self.fn_names, self.scores, strict=True)
                      for k in (keys or [None])]  # fmt: skip
        """One per reward column: a function's name, or `<name>/<score>` for each of its named scores."""
        self.weights = [w * (keys[k] if keys else 1.0) for w, keys in zip(weights, self.scores, strict=True)
                        for k in (keys or [None])]  # fmt: skip
        self.timeout_s, self.workers, self.ray, self.ray_address = timeout_s, workers, ray, ray_address
        self.failures = {n: 0 for n in self.fn_names}
        """Calls that failed, per function, over the run."""
        self.unscored = {n: 0 for n in self.fn_names}
        """Completions left unscored by a failed call, per function, since the last `take_errors`."""
        self._pool: cf.ProcessPoolExecutor | Any | None = None  # worker processes, or Ray actors (`RayActors`)
        self._lock = threading.Lock()  # one call at a time (the trainer and an asynchronous producer both score)
        if workers or ray:
            for fn, name in zip(fns, self.fn_names, strict=True):
                try:
                    pickle.dumps(fn)
                except Exception as e:  # noqa: BLE001 (any pickling failure)
                    raise ValueError(
                        f"reward {name!r} cannot run in a worker process or Ray actor: define it at "
                        f"module level and name it by dotted path ({type(e).__name__}: {e})"
                    ) from None

    def __call__(
        self,
        rows: list[dict[str, Any]],
        group_ids: list[int],
        completions: list,
        truncated: list[bool] | None = None,
        completion_ids: list[list[int]] | None = None,
        extras: dict[str, list] | None = None,
    ) -> torch.Tensor:
        """Rewards (N, K), one column per function or named score: NaN where a function returned None, and in every
        column of a completion whose call failed."""
        prompts, columns = reward_inputs(rows, group_ids, truncated, completion_ids, extras)
        out = torch.full((len(completions), len(self.names)), float("nan"))
        failed = torch.zeros(len(completions), dtype=torch.bool)
        with self._lock:
            results = self._run_all(prompts, completions, columns, group_ids)
        col = 0
        for name, keys, result in zip(self.fn_names, self.scores, results, strict=True):
            width = len(keys) if keys else 1
            result = _named(result, keys)
            if isinstance(result, BaseException):
                self._failed(name, result, prompts, completions)
                failed[:] = True
            else:
                for j, values in enumerate(result):
                    out[:, col + j] = torch.tensor([math.nan if v is None else v for v in values])
            col += width
        out[failed] = float("nan")
        return out

    def score(self, batch: Any) -> torch.Tensor:
        """Rewards (N, K) of a sampled batch (`Rollouts`): its texts, token ids and truncation flags."""
        return self(batch.rows, batch.group_ids.tolist(), batch.texts, batch.truncated.tolist(), batch.token_lists(),
                    batch.extras)  # fmt: skip

    def combine(self, rewards: torch.Tensor) -> torch.Tensor:
        """The weighted sum (`weighted_sum`, kind `reward`): a None left out, NaN when every function gave None.
        (N, K) -> (N,)"""
        return weighted_sum(rewards, torch.tensor(self.weights, dtype=rewards.dtype))

    def take_errors(self) -> dict[str, float]:
        """`reward/errors/<name>`: completions each function left unscored since the last call (then reset)."""
        out = {f"reward/errors/{n}": float(c) for n, c in self.unscored.items()}
        self.unscored = dict.fromkeys(self.fn_names, 0)
        return out

    def close(self) -> None:
        """Stop the worker processes or Ray actors (if any; and a Ray started for them)."""
        if self._pool is not None:
            self._pool.close() if self.ray else _kill(self._pool)
            self._pool = None

    def _stop(self) -> None:
        """Kill the workers (one is stuck); the next call starts new ones."""
        if self.ray:
            self._pool.kill()
        else:
            self.close()

    # -- where the calls run ------------------------------------------------------------------------------------

    def _run_all(self, prompts: list, completions: list, columns: dict, group_ids: Sequence[int]) -> list[Any]:
        """One result (a list of values, or the exception) per function, in order."""
        if self.workers or self.ray:
            return [self._in_workers(k, prompts, completions, columns, group_ids) for k in range(len(self.fns))]
        results: list[Any] = [None] * len(self.fns)
        coros = [k for k, fn in enumerate(self.fns) if inspect.iscoroutinefunction(fn)]
        for k, fn in enumerate(self.fns):
            if k not in coros:
                try:
                    results[k] = _in_thread(lambda fn=fn: run_call(fn, prompts, completions, columns), self.timeout_s)
                except Exception as e:  # noqa: BLE001 (a user's reward may fail in any way)
                    results[k] = e
        if coros:  # concurrently, in one event loop in one thread; a coroutine that blocks the loop fails them all
            calls = [lambda fn=self.fns[k]: checked_coro(fn, prompts, completions, columns) for k in coros]
            try:
                got = _in_thread(lambda: asyncio.run(_gather_async(calls, self.timeout_s)), self.timeout_s + 1)
            except Exception as e:  # noqa: BLE001
                got = [e] * len(coros)
            for k, value in zip(coros, got, strict=True):
                results[k] = value
        return results

    def _submit(self, k: int, prompts: list, completions: list, columns: dict) -> cf.Future:
        """Function `k` on these inputs in a worker process or Ray actor (started on first use)."""
        if self._pool is None and self.ray:
            from unipo.rewards.ray_actors import RayActors

            self._pool = RayActors(self.fns, self.workers, self.ray_address)
        elif self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        if self.ray:
            return self._pool.submit(k, prompts, completions, columns)
        return self._pool.submit(run_call, self.fns[k], prompts, completions, columns)

    def _in_workers(self, k: int, prompts: list, completions: list, columns: dict, group_ids: Sequence[int]):
        chunks = _group_chunks(group_ids, max(1, self.workers))
        deadline = time.monotonic() + self.timeout_s
        try:
            futures = [
                self._submit(
                    k,
                    [prompts[i] for i in idx],
                    [completions[i] for i in idx],
                    {c: [v[i] for i in idx] for c, v in columns.items()},
                )  # fmt: skip
                for idx in chunks
            ]
            parts = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
            return _reassemble(chunks, parts, len(completions))
        except cf.TimeoutError:
            self._stop()  # the stuck worker is killed; the next call starts fresh ones
            return RewardError(f"no result within reward.timeout_s={self.timeout_s:g} s (worker killed)")
        except BrokenProcessPool:
            self.close()
            return RewardError("its worker process died (killed, crashed or out of memory)")
        except Exception as e:  # noqa: BLE001 (raised by the function in the worker)
            if _actor_died(e):  # as a dead worker process: the other actors may be dying too; the next call starts
                self._stop()  # fresh ones, so a dying actor fails only the call that killed it
                return RewardError("its Ray actor died (killed, crashed or out of memory)")
            return _worker_error(e)

    def _failed(self, name: str, error: BaseException, prompts: list, completions: list) -> None:
        self.failures[name] += 1
        self.unscored[name] += len(completions)
        if self.failures[name] == 1:
            reason = (
                str(error)
                if isinstance(error, RewardError)
                else "".join(traceback.format_exception(type(error), error, error.__traceback__)).strip()
            )
            first = text_of(completions[0]) if completions else ""
            log.warning(
                "reward %s failed on a batch of %d completions; they are unscored (advantage 0) and the run goes on. "
                "First input: prompt %.200r, completion %.200r. Further failures are only counted.\n%s",
                name, len(completions), prompts[0] if prompts else None, first, reason,
            )  # fmt: skip


def _actor_died(error: BaseException) -> bool:
    """Whether a Ray call failed because its actor died (not because the function raised)."""
    return type(error).__name__ in ("RayActorError", "ActorDiedError", "ActorUnavailableError")


def _worker_error(error: BaseException) -> BaseException:
    """A failed call's error: the reward function's own exception, also from inside a Ray task error."""
    inner = getattr(error, "cause", None)  # ray.exceptions.RayTaskError
    return inner if isinstance(inner, BaseException) else error


def _named(result: Any, keys: dict[str, float] | None) -> Any:
    """A call's result as a list of value lists, one per column; a RewardError when its form is not the declared
    one (a list, or a dict with the declared score names)."""
    if isinstance(result, BaseException):
        return result
    if keys is None:
        if isinstance(result, dict):
            found = ", ".join(f"{k}: 1.0" for k in result)
            return RewardError(
                f"returned named scores; declare them where the reward is configured: scores: {{{found}}}"
            )
        return [result]
    if not isinstance(result, dict) or set(keys) - set(result):
        got = sorted(result) if isinstance(result, dict) else "a list"
        return RewardError(f"should return the named scores {sorted(keys)}, returned {got}")
    return [result[k] for k in keys]


def _reassemble(chunks: list[list[int]], parts: list[Any], n: int) -> list | dict:
    """The per-chunk results of a call put back in completion order (lists, or dicts of lists)."""
    if parts and all(isinstance(p, dict) for p in parts):
        keys = [k for k in parts[0] if all(k in p for p in parts)]
        return {k: _reassemble(chunks, [p[k] for p in parts], n) for k in keys}
    values: list[Any] = [None] * n
    for idx, part in zip(chunks, parts, strict=True):
        if isinstance(part, dict):
            raise RewardError("returned named scores for some completions and a list for others")
        for i, v in zip(idx, part, strict=True):
            values[i] = v
    return values


def _group_chunks(group_ids: Sequence[int], n: int) -> list[list[int]]:
    """Completion indices split into at most `n` chunks of whole prompt groups (contiguous groups together)."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(int(g), []).append(i)
    members = list(groups.values())
    per = max(1, math.ceil(len(members) / n))
    return [sum(members[j : j + per], []) for j in range(0, len(members), per)]


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    # the executor has no public way to stop a worker that is running a task; kill its processes, then let it go
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
