"""Built-in verifiable tasks: rows with a prompt, reference columns and a reward, plus a fixed held-out split.

A row is a dict with `prompt` (a string or chat messages) and any other columns, which reward functions receive
as keyword lists (the TRL convention). The held-out split never overlaps the training pool.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unipo.config import ConfigError
from unipo.data.sources import is_data_path, read_rows, report_bad, select_by_margin, split_heldout
from unipo.rewards import bare_answer, final_answer, math_answer, share_of_target

log = logging.getLogger("unipo")

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
    env: dict[str, Any] | None = None
    """The task's multi-turn environment (`{name: ..., max_turns: ..., <constructor keywords>}`, the keys of config
    `env`); None: single-turn completions."""

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
    so a perfect reply is all sevens; each row's `solution` is one (for samplers that mix in demonstrations)."""
    rng = random.Random(seed)
    words = ["pick", "say", "give", "write", "number", "digit", "now", "please"]

    def row() -> Row:
        return {"prompt": " ".join(rng.choice(words) for _ in range(3)) + ":", "target": "7", "solution": "7 7 7 7"}

    rows = [row() for _ in range(n_train + n_heldout)]
    return Task("lucky7", rows[n_heldout:], rows[:n_heldout], share_of_target, "reward = share of 7s in the reply")


def _task_row(row: Row, prompt_field: str, answer_field: str, as_chat: bool = True) -> tuple[Row | None, str | None]:
    """The row with its prompt and answer under `prompt` / `answer` (other columns kept), or the problem."""
    missing = [k for k in (prompt_field, answer_field) if k not in row or row[k] is None]
    if missing:
        return None, f"missing column(s) {', '.join(missing)}"
    prompt, answer = row[prompt_field], row[answer_field]
    chat = isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)
    if not isinstance(prompt, str) and not chat:
        return None, f"{prompt_field} must be text or a list of chat messages, got {type(prompt).__name__}"
    if isinstance(prompt, str) and not prompt.strip():
        return None, f"empty {prompt_field}"
    if isinstance(answer, (list, dict)) or not str(answer).strip():
        return None, f"{answer_field} must be a non-empty text or number"
    out = {k: v for k, v in row.items() if k not in (prompt_field, answer_field)}
    if as_chat and isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {"prompt": prompt, "answer": str(answer).strip(), **out}, None


def _task_rows(path: str, data: Any, key: str) -> list[Row]:
    found = read_rows(path, key)
    rows, bad = [], list(found.bad)
    for where, raw in zip(found.where, found.rows, strict=True):
        row, problem = _task_row(raw, data.prompt_field, data.answer_field, data.chat)
        if problem:
            bad.append(f"{where}: {problem}")
        else:
            rows.append(row)
    report_bad(bad, found.total, data.max_bad_frac, key)
    return rows


def file_task(path: str, data: Any = None, seed: int = 0) -> Task:
    """An RL task from a user's file (.jsonl, .csv, .parquet or a `datasets` directory) with a prompt and an answer
    column (`data.prompt_field`, `data.answer_field`; other columns reach the rewards as keywords). A plain-text prompt
    becomes one user message, sent through the model's chat template, unless `data.chat` is false.

    Bad rows (unparseable line, missing or empty prompt or answer, wrong type) are reported by file and line and
    skipped, up to `data.max_bad_frac`. `data.margin_at_least`/`margin_below` keep the rows whose score margin lies
    between them (`select_by_margin`, before the hold-out). Held out for evaluation: the rows of `data.eval_path`,
    else the rows with `split: test`, else a seeded `data.eval_frac` of the rows (logged). The reward and metric is
    `math_answer`: a finished reply whose final answer (last `\boxed{}`, `<answer>` or number) equals the answer.
    """
    from unipo.config import DataConfig

    data = data or DataConfig()
    rows = select_by_margin(_task_rows(path, data, "task"), data, "task")
    if data.eval_path:
        train, test, how = rows, _task_rows(data.eval_path, data, "data.eval_path"), f"data.eval_path={data.eval_path}"
    elif any(r.get("split") == "test" for r in rows):
        train = [r for r in rows if r.get("split") != "test"]
        test, how = [r for r in rows if r.get("split") == "test"], "the rows with split: test"
    else:
        train, test = split_heldout(rows, data.eval_frac, seed)
        how = f"data.eval_frac={data.eval_frac}" + ("" if test else "; nothing held out")
    if not train:
        raise ConfigError(f"task: {path}: no training rows left after holding out {len(test)}")
    log.info("task %s: %d training rows, %d held out (%s)", path, len(train), len(test), how)
    return Task(Path(path).stem, train, test, math_answer, f"rows from {path}")


def builtin_tasks() -> dict[str, tuple[Callable[[], Task], int]]:
    """Every built-in task by name, with its token budget (`rollout.max_new_tokens` and `eval.max_new_tokens` unless
    the recipe or the command line sets them)."""
    from unipo.data.generated import GENERATED
    from unipo.envs.builtin import ENV_TASKS

    return {"arithmetic": (arithmetic, 32), "lucky7": (lucky7, 32), **GENERATED, **ENV_TASKS}


def get_task(name: str, data: Any = None, seed: int = 0) -> Task:
    """A built-in task by name, or a data file (`file_task`, read as `data` — a `DataConfig` — says)."""
    if is_data_path(name):
        return file_task(name, data, seed)
    tasks = builtin_tasks()
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(tasks))}")
    if data is not None and (data.margin_at_least is not None or data.margin_below is not None):
        raise ConfigError(f"data.margin_at_least/margin_below: the built-in task {name!r} has no score columns")
    return tasks[name][0]()


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
        return self.take_with_positions(n)[0]

    def take_with_positions(self, n: int) -> tuple[list[Row], list[int]]:
        """The next `n` rows and their positions in the endless stream (epoch · pool size + index: unique per draw)."""
        out, positions = [], []
        for _ in range(n):
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.rows[self._order[self.index]])
            positions.append(self.epoch * len(self._order) + self.index)
            self.index += 1
        return out, positions

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}
