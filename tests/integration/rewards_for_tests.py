"""Reward functions and judges for the tests, at module level so worker processes can import them."""

import os
import threading
import time

RELEASE = threading.Event()
"""Set by the tests' teardown so in-process calls of `blocks` end."""


def explodes(prompts, completions, **_):
    raise RuntimeError("this reward function always fails")


def reply_length(prompts, completions, **_):
    """Dense toy reward in [0, 1) that almost never ties between two replies, so every component sees A != 0."""
    return [(sum(map(ord, c)) % 997) / 997 for c in completions]


def lexical_judge(prompt, a, b):
    """A deterministic judge with a strict order on distinct replies: the lexicographically larger one wins."""
    return 0.5 if a == b else float(a > b)


def flaky_judge(prompt, a, b):
    """Fails on every other call (and answers out of range on some others): the run must go on."""
    flaky_judge.calls = getattr(flaky_judge, "calls", 0) + 1
    if flaky_judge.calls % 2:
        raise RuntimeError("judge timed out")
    return 1.5 if flaky_judge.calls % 3 == 0 else float(a > b)


def tie_judge(prompt, a, b):
    """No preference ever."""
    return 0.5


def even_length(prompts, completions, **_):
    """A coin-flip-like 0/1 reward (the reply has an even number of characters): a group of G replies is all-equal
    with probability about 2^(1-G), so dynamic sampling has groups to drop."""
    return [float(len(c) % 2 == 0) for c in completions]


def first_token_even(prompts, completions, completion_ids, **_):
    """1 when the reply's first token id is even: fixed once the first token is sampled, so a critic can learn the
    exact value of every later state (and p(even) at the first)."""
    return [float(bool(ids) and ids[0] % 2 == 0) for ids in completion_ids]


def odd_prompt(prompts, completions, **_):
    """1 for every reply to a prompt of odd length, 0 otherwise: some prompts are always solved, the others never."""
    return [float(len(str(p)) % 2 == 1) for p in prompts]


def length_and_parity(prompts, completions, **_):
    """Named scores: the reply's length, and 1.0 when it is even (None for the reply "skip")."""
    return {"length": [float(len(c)) for c in completions],
            "even": [None if c == "skip" else float(len(c) % 2 == 0) for c in completions]}  # fmt: skip


def length(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def blocks(prompts, completions, **_):
    RELEASE.wait()
    return [1.0] * len(completions)


def sleeps(prompts, completions, **_):
    time.sleep(3600)
    return [1.0] * len(completions)


def dies(prompts, completions, **_):
    os._exit(3)


def too_few(prompts, completions, **_):
    return [1.0]


def sometimes_none(prompts, completions, **_):
    return [None if c == "skip" else 1.0 for c in completions]


def starts_with_z(prompts, completions, **_):
    """1 when the reply starts with "Z" (as the IGPO test's reference solutions do), else 0."""
    return [float(c.startswith("Z")) for c in completions]


def second_solution_hint(prompts, completions, **_):
    """1 when the prompt carries the solution hint part "s2" (Scaf-GRPO test rows), else 0: bare prompts never solve."""
    return [float("s2" in str(p)) for p in prompts]
