"""Environments for multi-turn agents (ALGORITHMS.md §9): a small protocol, tool calling, and the built-in ones.

An environment is any object with
- `reset(row)`: start an episode on a dataset row (its prompt is the conversation's first message(s));
- `step(action) -> Step`: the policy's turn as text (its sampled tokens decoded) in, the environment's reply, this
  turn's reward, whether the episode is done, and `info` out. `info["state_key"]` is a hashable canonical state
  (what GiGPO-style credit groups turns by; default: the observation's text), `info["tool_calls"]` and
  `info["tool_errors"]` are counted into the run's metrics; `info["forget"]` true hides the environment's previous
  reply from every turn after this one (ReSeek's context rule: rollout/multiturn.py); each step's `info` reaches
  reward shapers as `turn_info`;
- `role`: the chat role its observations are sent as (`tool` or `user`);
- `close()` (optional): called once the rollout is done with the episode.

Environments are configured by built-in name or dotted path, like rewards (`env: {name: calculator, max_turns: 4}`);
other keys are the constructor's keyword arguments. One instance serves one trajectory. With `env.workers` > 0 the
instances live in worker processes (envs/workers.py), where a step past `env.timeout_s` is stopped, not abandoned. Only
`rollout/multiturn.py` turns their text into token ids, so a trajectory is never re-tokenised.

`ToolEnv` is the base of tool-using environments: it parses a call from the turn's own text (tagged, Search-R1 style
`<calc>2*3</calc>`, or JSON, Hermes/Qwen style `<tool_call>{"name": "calc", "arguments": "2*3"}</tool_call>`), runs
the tool under a time limit and answers with its result; a malformed call, an unknown tool, a tool that raises or
runs past its limit gets an error observation (counted), never a crash. A turn with no call is the final answer
(`info["answered"]`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Step:
    """What the environment returns for one policy turn."""

    observation: str | None = None
    """The environment's reply (sent as a `role` message); None when the episode is done."""
    reward: float = 0.0
    """This turn's reward; a trajectory's environment reward is the sum over its turns."""
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Env(Protocol):
    role: str

    def reset(self, row: dict[str, Any]) -> None: ...

    def step(self, action: str) -> Step: ...


class ToolError(Exception):
    """A tool call that cannot run (malformed, unknown tool, the tool raised or ran too long): its message is sent
    back to the model as the observation."""


class Late(TimeoutError):
    """A call still running at its deadline."""


def call_all(calls: list[Callable[[], Any]], timeout_s: float | None) -> list[Any]:
    """Each call's result, in a daemon thread of its own, all under one deadline: the exception it raised instead, or
    `Late` for one still running at the deadline (its thread is abandoned: something that can really hang must run
    in a subprocess, as the `python` tool does through the sandbox, or the environments in workers, `env.workers`).
    `timeout_s` None: wait for every call (each bounded on its own, as a worker's requests are)."""
    results: list[Any] = [Late(f"no result within {timeout_s or 0:g} s")] * len(calls)  # None: never read

    def body(k: int) -> None:
        try:
            results[k] = calls[k]()
        except Exception as e:  # noqa: BLE001 (the caller reports it; the run goes on)
            results[k] = e

    threads = [threading.Thread(target=body, args=(k,), daemon=True, name="unipo-env") for k in range(len(calls))]
    for th in threads:
        th.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for th in threads:
        th.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return list(results)


def run_with_limit(fn: Callable[[], Any], timeout_s: float) -> Any:
    """`fn()` under a time limit (`call_all`); ToolError when it raises or runs past `timeout_s`."""
    (result,) = call_all([fn], timeout_s)
    if isinstance(result, Late):
        raise ToolError(f"the tool ran past its time limit of {timeout_s:g} s")
    if isinstance(result, Exception):
        raise ToolError(f"{type(result).__name__}: {result}")
    return result


_JSON_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)


def parse_call(text: str, tools: list[str], call_format: str = "tagged") -> tuple[str, str] | None:
    """The first tool call in `text` as (tool, argument), None when the text calls no tool; ToolError for a call that
    is malformed. `tagged`: `<name>argument</name>` for a tool `name`; `json`: `<tool_call>{"name": ..., "arguments":
    ...}</tool_call>` (a dict of arguments is passed as its JSON text)."""
    if call_format == "json":
        found = _JSON_CALL.search(text)
        if found is None:
            return None
        if not found.group(2):
            raise ToolError("malformed tool call: no closing </tool_call>")
        try:
            call = json.loads(found.group(1))
            name, args = call["name"], call.get("arguments", "")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ToolError('malformed tool call: expected {"name": ..., "arguments": ...}') from None
        if name not in tools:
            raise ToolError(f"unknown tool {name!r}; tools: {', '.join(tools)}")
        return name, args if isinstance(args, str) else json.dumps(args)
    opened = [(m.start(), m.group(1)) for m in re.finditer(r"<(\w+)>", text) if m.group(1) in tools]
    if not opened:
        return None
    start, name = min(opened)
    end = text.find(f"</{name}>", start)
    if end < 0:
        raise ToolError(f"malformed tool call: <{name}> without </{name}>")
    return name, text[start + len(name) + 2 : end].strip()


class ToolEnv:
    """An episode of tool calls ending in a final answer (module docstring). Subclasses set `tools` (name ->
    function of the argument text returning the result text) and `answer_reward(text) -> float`."""

    role = "tool"
    tools: dict[str, Callable[[str], str]] = {}

    def __init__(self, call_format: str = "tagged", tool_timeout_s: float = 5.0, max_result_chars: int = 400):
        if call_format not in ("tagged", "json"):
            raise ValueError(f"call_format must be `tagged` or `json`, got {call_format!r}")
        self.call_format, self.tool_timeout_s, self.max_result_chars = call_format, tool_timeout_s, max_result_chars
        self.row: dict[str, Any] = {}

    def reset(self, row: dict[str, Any]) -> None:
        self.row = row

    def answer_reward(self, text: str) -> float:
        raise NotImplementedError

    def step(self, action: str) -> Step:
        try:
            call = parse_call(action, list(self.tools), self.call_format)
        except ToolError as e:
            return Step(f"<error>{e}</error>", 0.0, False, {"tool_calls": 1, "tool_errors": 1})
        if call is None:
            return Step(None, self.answer_reward(action), True, {"answered": True})
        name, argument = call
        try:
            result = str(run_with_limit(lambda: self.tools[name](argument), self.tool_timeout_s))
        except ToolError as e:
            return Step(f"<error>{e}</error>", 0.0, False, {"tool_calls": 1, "tool_errors": 1})
        return Step(f"<result>{result[: self.max_result_chars]}</result>", 0.0, False, {"tool_calls": 1})


@dataclass(frozen=True)
class EnvSettings:
    """How a multi-turn rollout runs (config `env`: schema.EnvConfig documents each)."""

    max_turns: int = 4
    max_tokens: int = 256
    max_obs_tokens: int = 64
    timeout_s: float = 30.0
    workers: int = 0


SETTINGS = ("max_turns", "max_tokens", "max_obs_tokens", "timeout_s", "workers")


def resolve(env: Any, task_env: dict[str, Any] | None) -> tuple[Callable[[], Env], EnvSettings] | None:
    """The run's environment factory and settings: config `env` (a schema.EnvConfig or None) over the task's own
    (`Task.env`); None when neither names one (single-turn). ValueError naming what is wrong."""
    spec = dict(task_env or {})
    if env is not None:
        given = {k: getattr(env, k) for k in env.model_fields_set} | dict(env.model_extra or {})
        if "name" in given or "component" in given:  # another environment: the task's keywords do not apply
            spec = {k: v for k, v in spec.items() if k in SETTINGS}
        spec |= given
    if spec.get("name") is None and spec.get("component") is None:
        if env is not None:
            raise ValueError("env: name a built-in environment (`env.name`) or a dotted path (`env._component_`); "
                             "this task has none of its own")  # fmt: skip
        return None
    settings = EnvSettings(**{k: spec.pop(k) for k in SETTINGS if k in spec})
    name, component = spec.pop("name", None), spec.pop("component", None)
    make = env_factory(name, component, spec)  # checked here, in this process, also when workers will make them
    if settings.workers:
        from unipo.envs.workers import EnvPool

        make = EnvPool(name, component, spec, settings.workers, settings.timeout_s).make
    return make, settings


def builtin_envs() -> dict[str, type]:
    """The built-in environments by name."""
    from unipo.envs.builtin import ENVS

    return ENVS


def env_factory(name: str | None, component: str | None, kwargs: dict[str, Any]) -> Callable[[], Env]:
    """A function that makes one environment (for one trajectory): a built-in `name` or a dotted path `component`
    to a class or factory, called with `kwargs`. ValueError naming what is wrong."""
    import inspect

    from unipo.trainers.common import import_object

    if name is not None:
        envs = builtin_envs()
        if name not in envs:
            raise ValueError(f"unknown environment {name!r}; built-in: {', '.join(sorted(envs))}")
        make = envs[name]
    else:
        make = import_object(component)
    try:
        inspect.signature(make).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"environment {name or component}: {e}") from None
    probe = make(**kwargs)
    missing = [m for m in ("reset", "step") if not callable(getattr(probe, m, None))]
    if missing:
        raise ValueError(f"environment {name or component} has no {' or '.join(missing)}() method")
    return lambda: make(**kwargs)
