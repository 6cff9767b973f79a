"""Preference data: loading (JSONL, Parquet, a `datasets` directory), validation with row numbers, a built-in task.

A pair is `{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}` (TRL's explicit-prompt
convention), optionally with `score_chosen` / `score_rejected` (UltraFeedback's columns; CoPG needs them) and a gold
`reference` response (TRL's TPO column; TPO and SLiC-HF need it). A list is
`{"prompt": ..., "responses": [...], "scores": [...]}` (larger is better); every list of a dataset has the same
length. An unpaired example (TRL's KTO format) is `{"prompt": ..., "completion": ..., "label": true|false}`. A single
trajectory with its reward (DRO's data, a loss with the `single_trajectory` fact) is
`{"prompt": ..., "completion": ..., "score": number}`; it trains as a list of one. Chat-form responses use the content
of their last message.
"""

from __future__ import annotations

import math
from typing import Any

from unipo.data.sources import Rows, read_rows, report_bad
from unipo.data.tasks import arithmetic
from unipo.rewards import text_of

Pair = dict[str, Any]


def _response(value: Any) -> str:
    """`text_of`, with "" for a missing or malformed response (validation reports it)."""
    try:
        return text_of(value)
    except TypeError:
        return ""


def load_pairs(path: str) -> Rows:
    """The rows of a preference data file (data/sources.py: .jsonl, .csv, .parquet or a `datasets` directory), with
    where each came from and the lines that could not be read."""
    return read_rows(path, "data.path")


def _pair_problem(row: Pair) -> str | None:
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row or row[k] in (None, "", [])]
    chosen, rejected = _response(row.get("chosen")), _response(row.get("rejected"))
    if missing:
        return f"missing {', '.join(missing)}"
    if not chosen.strip() or not rejected.strip():
        return f"empty {'chosen' if not chosen.strip() else 'rejected'} response"
    if "reference" in row and not _response(row["reference"]).strip():
        return "empty reference (gold) response"
    return "chosen == rejected" if chosen == rejected else None


def _scores_problem(scores: list[Any]) -> str | None:
    finite = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in scores)
    return None if finite else f"score{'s' if len(scores) > 1 else ''} must be finite numbers"


def _list_problem(row: Pair, width: int | None, trajectories: bool = False) -> str | None:
    missing = [k for k in ("prompt", "responses", "scores") if k not in row or row[k] in (None, "", [])]
    if missing:
        return f"missing {', '.join(missing)}"
    responses, scores = row["responses"], row["scores"]
    if not isinstance(responses, list) or not isinstance(scores, list) or len(responses) != len(scores):
        return "responses and scores must be lists of the same length"
    least = 1 if trajectories else 2
    if len(responses) < least or (width is not None and len(responses) != width):
        return f"{len(responses)} responses; every list needs {width or f'at least {least}'}"
    texts = [_response(r) for r in responses]
    if any(not t.strip() for t in texts):
        return "empty response"
    if problem := _scores_problem(scores):
        return problem
    if trajectories:  # each response is its own trajectory: nothing is ranked
        return None
    if len(set(scores)) == 1:
        return "all scores are equal"
    best, worst = best_and_worst(scores)  # what a pairwise loss trains on
    return "the best and the worst response are the same text" if texts[best] == texts[worst] else None


def _unpaired_problem(row: Pair) -> str | None:
    missing = [k for k in ("prompt", "completion", "label") if k not in row or row[k] in (None, "", [])]
    if missing:
        return f"missing {', '.join(missing)}"
    if not _response(row["completion"]).strip():
        return "empty completion"
    return None if isinstance(row["label"], bool) else f"label must be true or false, got {row['label']!r}"


def _single_problem(row: Pair) -> str | None:
    missing = [k for k in ("prompt", "completion", "score") if k not in row or row[k] in (None, "", [])]
    if missing:
        return f"missing {', '.join(missing)}"
    return "empty completion" if not _response(row["completion"]).strip() else _scores_problem([row["score"]])


def is_single(rows: list[Pair]) -> bool:
    """Rows in the single-trajectory format (`completion` + `score`, DRO's (x, y, r))."""
    return bool(rows) and "completion" in rows[0] and "score" in rows[0]


def singles_to_lists(rows: list[Pair]) -> list[Pair]:
    """Each single trajectory -> a list of one (`responses: [completion]`, `scores: [score]`)."""
    keep = ("completion", "score")
    return [{k: v for k, v in r.items() if k not in keep} | {"responses": [r["completion"]], "scores": [r["score"]]}
            for r in rows]  # fmt: skip


def is_unpaired(rows: list[Pair]) -> bool:
    """Rows in the unpaired format (`completion` + `label`, as TRL's KTO datasets)."""
    return bool(rows) and "completion" in rows[0] and "label" in rows[0]


def is_listwise(rows: list[Pair]) -> bool:
    """Rows in the list format (`responses` + `scores`) rather than pairs."""
    return bool(rows) and "responses" in rows[0]


def validate_pairs(
    rows: list[Pair],
    max_bad_frac: float,
    where: list[str] | None = None,
    unreadable: list[str] | None = None,
    trajectories: bool = False,
) -> list[Pair]:
    """Drop bad rows, reporting each by where it came from (`where[i]`, default `row i`), and stop before training
    when more than `max_bad_frac` of the rows (`unreadable` lines included) are bad. Pairs: missing field, empty
    response, chosen == rejected. Lists: missing field, lengths that differ, fewer than two responses, an empty
    response, non-finite or all-equal scores, the same text best and worst; with `trajectories` (each response is
    its own trajectory, DRO) one response and equal scores are fine. Unpaired rows: missing field, empty completion, a
    label that is not a boolean. Single trajectories: missing field, empty completion, a score that is not a finite
    number."""
    good, bad = [], list(unreadable or [])
    listwise, unpaired, single = is_listwise(rows), is_unpaired(rows), is_single(rows)
    width = None
    for i, row in enumerate(rows):
        if listwise:
            problem = _list_problem(row, width, trajectories)
        else:
            problem = _single_problem(row) if single else _unpaired_problem(row) if unpaired else _pair_problem(row)
        if problem:
            bad.append(f"{where[i] if where else f'row {i + 1}'}: {problem}")
        else:
            good.append(row)
            width = len(row["responses"]) if listwise else None
    report_bad(bad, len(rows) + len(unreadable or []), max_bad_frac, "data.path")
    return good


def best_and_worst(scores: list[float]) -> tuple[int, int]:
    """Positions of the highest and the lowest score; the first one wins a tie for best, the last for worst."""
    order = range(len(scores))
    return max(order, key=lambda j: (scores[j], -j)), min(order, key=lambda j: (scores[j], -j))


def lists_to_pairs(rows: list[Pair]) -> list[Pair]:
    """Each list -> the pair (highest-scored response, lowest-scored one) with `score_chosen` / `score_rejected`,
    as UltraFeedback is binarised (`best_and_worst`)."""
    out = []
    for row in rows:
        scores = row["scores"]
        best, worst = best_and_worst(scores)
        pair = {k: v for k, v in row.items() if k not in ("responses", "scores")}
        pair |= {"chosen": row["responses"][best], "rejected": row["responses"][worst]}
        out.append(pair | {"score_chosen": scores[best], "score_rejected": scores[worst]})
    return out


def responses(row: Pair) -> list[str]:
    """An example's W responses: [chosen, rejected] for a pair ([chosen, rejected, reference] with a gold response),
    [completion] for an unpaired example, the list."""
    if "responses" in row:
        return [text_of(r) for r in row["responses"]]
    if "completion" in row:
        return [text_of(row["completion"])]
    gold = [text_of(row["reference"])] if "reference" in row else []
    return [text_of(row["chosen"]), text_of(row["rejected"]), *gold]


def arithmetic_pairs(n_train: int = 512) -> tuple[list[Pair], list[Pair]]:
    """Built-in pairs on the arithmetic task: chosen = the sum, rejected = a nearby wrong number, and the sum again as
    the gold `reference` response (TPO, SLiC-HF) (train, held-out).

    `n_train` pairs from the training pool (their reference log-probs are computed up front), the task's 100 held-out
    problems for evaluation."""
    task = arithmetic()

    def pair(row: dict[str, Any], k: int) -> Pair:
        answer = int(row["answer"])
        wrong = answer + (1 + k % 5) * (1 if k % 2 else -1)
        return {"prompt": row["prompt"], "chosen": str(answer), "rejected": str(wrong), "answer": row["answer"],
                "reference": str(answer)}  # fmt: skip

    train = [pair(r, k) for k, r in enumerate(task.train[:n_train])]
    return train, [pair(r, k) for k, r in enumerate(task.heldout)]
