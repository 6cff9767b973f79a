"""Preference pairs: loading (JSONL, Parquet, a `datasets` directory), validation with row numbers, a built-in task.

A pair is `{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}` (TRL's explicit-prompt
convention); chat-form responses use the content of their last message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unipo.config import ConfigError
from unipo.data.tasks import arithmetic, read_jsonl
from unipo.rewards import text_of

Pair = dict[str, Any]


def _response(value: Any) -> str:
    """`text_of`, with "" for a missing or malformed response (validation reports it)."""
    try:
        return text_of(value)
    except TypeError:
        return ""


def load_pairs(path: str) -> list[Pair]:
    """Rows from a .jsonl file, a .parquet file or a directory saved with `datasets.Dataset.save_to_disk`."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    if p.suffix == ".jsonl":
        try:
            return [row for _, row in read_jsonl(p)]
        except ValueError as e:
            raise ConfigError(f"data.path: {e}") from None
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"data.path: reading {p.suffix or 'a dataset directory'} needs `pip install datasets`"
        ) from None
    ds = datasets.Dataset.from_parquet(str(p)) if p.suffix == ".parquet" else datasets.load_from_disk(str(p))
    return [dict(r) for r in ds]


def validate_pairs(rows: list[Pair], max_bad_frac: float) -> list[Pair]:
    """Drop bad rows (missing field, empty response, chosen == rejected), reporting each by its 1-based row number;
    stop before training when more than `max_bad_frac` of the rows are bad."""
    good, bad = [], []
    for i, row in enumerate(rows, 1):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row or row[k] in (None, "", [])]
        chosen, rejected = _response(row.get("chosen")), _response(row.get("rejected"))
        if missing:
            bad.append(f"row {i}: missing {', '.join(missing)}")
        elif not chosen.strip() or not rejected.strip():
            bad.append(f"row {i}: empty {'chosen' if not chosen.strip() else 'rejected'} response")
        elif chosen == rejected:
            bad.append(f"row {i}: chosen == rejected")
        else:
            good.append(row)
    if not rows:
        raise ConfigError("data: no rows")
    if bad:
        shown = "; ".join(bad[:10]) + (f"; ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        if len(bad) / len(rows) > max_bad_frac:
            raise ConfigError(
                f"data: {len(bad)} of {len(rows)} rows are bad (more than data.max_bad_frac={max_bad_frac}): {shown}"
            )
        import logging

        logging.getLogger("unipo").warning("skipping %d bad preference rows: %s", len(bad), shown)
    return good


def arithmetic_pairs(n_train: int = 512) -> tuple[list[Pair], list[Pair]]:
    """Built-in pairs on the arithmetic task: chosen = the sum, rejected = a nearby wrong number (train, held-out).

    `n_train` pairs from the training pool (their reference log-probs are computed up front), the task's 100 held-out
    problems for evaluation."""
    task = arithmetic()

    def pair(row: dict[str, Any], k: int) -> Pair:
        answer = int(row["answer"])
        wrong = answer + (1 + k % 5) * (1 if k % 2 else -1)
        return {"prompt": row["prompt"], "chosen": str(answer), "rejected": str(wrong), "answer": row["answer"]}

    train = [pair(r, k) for k, r in enumerate(task.train[:n_train])]
    return train, [pair(r, k) for k, r in enumerate(task.heldout)]
