"""Reward functions: plain callables `fn(prompts, completions, **dataset_columns) -> list[float | None]`.

`None` means "this function does not apply to this completion": it is left out of the sum, and a completion
that every function scores None gets a NaN reward (advantage 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_INT = re.compile(r"-?\d+")


def text_of(completion: object) -> str:
    """A completion as text: a string as is, or the content of the last message of a chat completion (the form
    TRL passes for conversational datasets)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def reward_inputs(rows: Sequence[dict], group_ids: Sequence[int]) -> tuple[list, dict[str, list]]:
    """The prompts and dataset columns of each completion (row `group_ids[i]`), as reward functions take them."""
    per_completion = [rows[g] for g in group_ids]
    columns = {k: [r.get(k) for r in per_completion] for k in rows[0] if k != "prompt"}
    return [r["prompt"] for r in per_completion], columns


def contains_answer(prompts: Sequence, completions: Sequence[str], answer: Sequence[str], **_: object) -> list[float]:
    """1.0 when the reference integer `answer` appears as a whole number in the completion, else 0.0."""
    return [1.0 if str(a) in _INT.findall(text_of(c)) else 0.0 for c, a in zip(completions, answer, strict=True)]


def only_number(prompts: Sequence, completions: Sequence[str], **_: object) -> list[float]:
    """1.0 when the completion is a bare integer (surrounding spaces and a final period allowed), else 0.0.

    A format reward, used as the second reward of the `gdpo` recipe.
    """
    return [1.0 if re.fullmatch(r"\s*-?\d+\.?\s*", text_of(c)) else 0.0 for c in completions]


def share_of_target(prompts: Sequence, completions: Sequence[str], target: Sequence[str], **_: object) -> list[float]:
    """Share of the completion's non-space characters equal to the one-character `target` (0 for an empty reply).

    A dense toy reward: a tiny random model already emits the target now and then, so learning is visible within
    a few steps (used by the `lucky7` task).
    """
    out = []
    for c, t in zip(completions, target, strict=True):
        chars = [ch for ch in text_of(c) if not ch.isspace()]
        out.append(sum(ch == t for ch in chars) / len(chars) if chars else 0.0)
    return out
