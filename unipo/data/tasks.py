"""Built-in verifiable tasks: rows with a prompt, reference columns and a reward, plus a fixed held-out split.

A row is a dict with `prompt` (a string or chat messages) and any other columns, which reward functions receive
as keyword lists (the TRL convention). The held-out split never overlaps the training pool.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unipo.rewards import bare_answer, contains_answer, final_answer, share_of_target

Row = dict[str, object]


@dataclass
class Task:
    """A training pool, a held-out split, the reward that defines success and the rewards that train it."""

    name: str
    train: list[Row]
    heldout: list[Row]
    reward: Callable[..., list[float | None]]
    """The metric: a reply is correct when this scores >= 1 (held-out accuracy)."""
    description: str
    rewards: list[tuple[Callable[..., list[float | None]], float]] = field(default_factory=list)
    """(function, weight) pairs trained on when the config names no `rewards`; empty: `reward` alone."""

    def __post_init__(self) -> None:
        if not self.rewards:
            self.rewards = [(self.reward, 1.0)]

    def other_rewards(self) -> dict[str, Callable[..., list[float | None]]]:
        """The task's reward functions other than its metric, by name (evaluation reports their means too)."""
        return {getattr(fn, "__name__", f"reward_{i}"): fn for i, (fn, _) in enumerate(self.rewards)
                if fn is not self.reward}  # fmt: skip


def arithmetic(seed: int = 1234, n_heldout: int = 100, max_operand: int = 50) -> Task:
    """a + b with 0 <= a, b <= 50, "Reply with only the number".

    Scored for what the prompt asks: a reply is correct when it finished within the token budget and its final
    answer is the sum (`final_answer`: at most three numbers, so "a + b = c" counts and hedging or a repeated
    equation does not); that is the held-out metric and the main reward (weight 1). A format reward (weight 0.2)
    adds credit for a reply that is only the right number (`bare_answer`). The held-out split is a fixed sample of
    100 pairs (independent of the training seed); training uses the rest.
    """
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(pairs)

    def row(a: int, b: int) -> Row:
        content = f"What is {a}+{b}? Reply with only the number."
        return {"prompt": [{"role": "user", "content": content}], "answer": str(a + b)}

    return Task(
        name="arithmetic",
        train=[row(a, b) for a, b in pairs[n_heldout:]],
        heldout=[row(a, b) for a, b in pairs[:n_heldout]],
        reward=final_answer,
        description="a+b with a, b <= 50; correct: a finished reply whose final number is the sum "
        "(+0.2 when it is only the number)",
        rewards=[(final_answer, 1.0), (bare_answer, 0.2)],
    )


def lucky7(seed: int = 1234, n_train: int = 64, n_heldout: int = 16) -> Task:
    """Toy task for tiny models (SB3's identity-environment idea): the reward is the share of "7" in the reply,
    so a perfect reply is all sevens."""
    rng = random.Random(seed)
    words = ["pick", "say", "give", "write", "number", "digit", "now", "please"]

    def row() -> Row:
        return {"prompt": " ".join(rng.choice(words) for _ in range(3)) + ":", "target": "7"}

    rows = [row() for _ in range(n_train + n_heldout)]
    return Task("lucky7", rows[n_heldout:], rows[:n_heldout], share_of_target, "reward = share of 7s in the reply")


def read_jsonl(path: str | Path) -> list[tuple[int, Row]]:
    """(line number, object) for every non-blank line; ValueError naming the line that is not valid JSON."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON: {e}") from None
    return rows


def jsonl_task(path: str) -> Task:
    """Rows from a JSONL file with `prompt` and `answer` (and optional `split`: train|test; else 10% held out)."""
    rows: list[Row] = []
    for i, item in read_jsonl(path):
        missing = [k for k in ("prompt", "answer") if k not in item]
        if missing:
            raise ValueError(f"{path}:{i}: missing column(s) {', '.join(missing)}")
        rows.append(item)
    if not rows:
        raise ValueError(f"{path}: no rows")
    test = [r for r in rows if r.get("split") == "test"]
    train = [r for r in rows if r.get("split") != "test"]
    if not test:
        cut = max(1, len(rows) // 10)
        test, train = rows[:cut], rows[cut:]
    return Task(Path(path).stem, train, test, contains_answer, f"rows from {path}")


TASKS: dict[str, Callable[[], Task]] = {"arithmetic": arithmetic, "lucky7": lucky7}


def get_task(name: str) -> Task:
    """A built-in task by name, or a JSONL file path."""
    if name.endswith(".jsonl"):
        return jsonl_task(name)
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


class PromptStream:
    """Endless shuffled pass over a task's training rows; its position is part of a checkpoint.

    Each epoch is a fresh permutation seeded by (seed, epoch), so the stream is reproducible from (epoch, index).
    """

    def __init__(self, rows: list[Row], seed: int, epoch: int = 0, index: int = 0):
        self.rows, self.seed, self.epoch, self.index = rows, seed, epoch, index
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[Row]:
        """The next `n` rows (wrapping into a new epoch when the pool runs out)."""
        out = []
        for _ in range(n):
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.rows[self._order[self.index]])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}
