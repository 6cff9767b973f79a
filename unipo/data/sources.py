"""Reading users' data files (one reader for every trainer): rows with where they came from, bad rows reported
by file and line, and one held-out rule.

Sources: JSONL (`.jsonl`), CSV (`.csv`, a header row), Parquet (`.parquet`, read with `pyarrow`), a directory saved
with `datasets.Dataset.save_to_disk`, and `hf:NAME[:SPLIT]`, anything `datasets.load_dataset(NAME, split=SPLIT)` loads
(a hub dataset when the machine has network or the dataset is cached; a local folder of data files; split `train` by
default). The last two need `pip install datasets`. A line that is not valid JSON is a bad
row, not an error: it is reported with its file and line, and the run stops before training only when the share of
bad rows exceeds `data.max_bad_frac`.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unipo.config import ConfigError

log = logging.getLogger("unipo")

SUFFIXES = (".jsonl", ".csv", ".parquet")
"""File types read as data (besides a `datasets` directory)."""


def is_data_path(name: str) -> bool:
    """Whether `name` names a data file or directory rather than a built-in task."""
    return name.endswith(SUFFIXES) or name.startswith("hf:") or Path(name).is_dir()


@dataclass
class Rows:
    """What a data file holds: readable rows with their location (`file:line` or `file: row i`), and the
    locations and problems of the lines that could not be read."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    """`"<where>: <problem>"` for each unreadable line."""

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.bad)


def read_rows(path: str, key: str = "data.path") -> Rows:
    """Every row of `path` (see the module docstring); ConfigError naming `key` when the file is missing or of
    an unknown type. Logs a line when reading starts and one with the count and time when it ends."""
    started = time.perf_counter()
    log.info("reading %s ...", path)
    out = _read(path, key)
    log.info("read %d rows (%d unreadable) from %s in %.1f s", len(out.rows), len(out.bad), path,
             time.perf_counter() - started)  # fmt: skip
    return out


def _read(path: str, key: str) -> Rows:
    if path.startswith("hf:"):
        return _from_hub(path, key)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    if p.suffix == ".jsonl":
        return _jsonl(p, path)
    if p.suffix == ".csv":
        with p.open(newline="") as f:
            out = Rows()
            for i, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                out.rows.append(dict(row))
                out.where.append(f"{path}:{i}")
        return out
    if p.suffix != ".parquet" and not p.is_dir():
        raise ConfigError(f"{key}: {path}: unknown data type; use .jsonl, .csv, .parquet or a `datasets` directory")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"{key}: reading .parquet needs `pip install pyarrow`") from None
        return _numbered(pq.read_table(str(p)).to_pylist(), path)
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key}: reading a dataset directory needs `pip install datasets`") from None
    return _numbered(datasets.load_from_disk(str(p)), path)


def _jsonl(p: Path, path: str) -> Rows:
    out = Rows()
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            out.bad.append(f"{path}:{i}: not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            out.bad.append(f"{path}:{i}: not a JSON object")
            continue
        out.rows.append(row)
        out.where.append(f"{path}:{i}")
    return out


def _numbered(rows: Any, path: str) -> Rows:
    out = Rows()
    for i, row in enumerate(rows, 1):
        out.rows.append(dict(row))
        out.where.append(f"{path}: row {i}")
    return out


def _from_hub(path: str, key: str) -> Rows:
    """`hf:NAME[:SPLIT]` through `datasets.load_dataset`; a one-line ConfigError when it cannot be loaded."""
    name, sep, split = path[3:].rpartition(":")
    if not sep or "/" in split:  # no split given (a split name has no slash)
        name, split = path[3:], ""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key}: {path} needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 (offline, unknown name or split: one line, no traceback)
        raise ConfigError(f"{key}: cannot load {name!r} (split {split or 'train'}) with datasets: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None  # fmt: skip
    return _numbered(ds, path)


def report_bad(bad: list[str], total: int, max_bad_frac: float, what: str = "data") -> None:
    """Log each bad row in one line; ConfigError (before any training) when more than `max_bad_frac` of `total`
    rows are bad or none is good."""
    if total == 0 or len(bad) == total:
        shown = f": {'; '.join(bad[:5])}" if bad else ""
        raise ConfigError(f"{what}: no usable rows{shown}")
    if not bad:
        return
    if len(bad) / total > max_bad_frac:
        shown = "; ".join(bad[:10]) + (f"; ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        raise ConfigError(f"{what}: {len(bad)} of {total} rows are bad (more than data.max_bad_frac={max_bad_frac}): "
                          f"{shown}")  # fmt: skip
    for line in bad[:20]:
        log.warning("skipping a bad row: %s", line)
    if len(bad) > 20:
        log.warning("skipping %d more bad rows", len(bad) - 20)


def split_heldout(rows: list[Any], frac: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held-out): a seeded `frac` of the rows (at least one when `frac` > 0 and there are two rows or more;
    none when `frac` = 0), each part in file order."""
    if frac <= 0 or len(rows) < 2:
        return list(rows), []
    n = min(len(rows) - 1, max(1, round(len(rows) * frac)))
    held = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def score_margin(row: dict[str, Any]) -> float | None:
    """A row's score margin: `score_chosen − score_rejected`, or a list's highest score minus its lowest; None when it
    has neither as numbers."""
    try:
        if "score_chosen" in row and "score_rejected" in row:
            return float(row["score_chosen"]) - float(row["score_rejected"])
        if isinstance(row.get("scores"), list) and row["scores"]:
            return float(max(row["scores"])) - float(min(row["scores"]))
    except (TypeError, ValueError):
        return None
    return None


def select_by_margin(rows: list[dict[str, Any]], data: Any, key: str) -> list[dict[str, Any]]:
    """The rows whose score margin lies in [`data.margin_at_least`, `data.margin_below`) (either bound may be None:
    all rows when both are), as MPO splits pairs into easy and hard by a reward model's margin; logged."""
    low, high = data.margin_at_least, data.margin_below
    if low is None and high is None:
        return rows
    margins = [score_margin(r) for r in rows]
    if any(m is None for m in margins):
        raise ConfigError(f"{key}: data.margin_at_least and data.margin_below need numeric `score_chosen` and "
                          f"`score_rejected` (or `scores`) in every row; row {margins.index(None) + 1} has "
                          "none")  # fmt: skip
    kept = [r for r, m in zip(rows, margins, strict=True) if (low is None or m >= low) and (high is None or m < high)]
    if not kept:
        raise ConfigError(f"{key}: no row has a score margin in [{low}, {high})")
    log.info("%s: %d of %d rows have a score margin in [%s, %s)", key, len(kept), len(rows), low, high)
    return kept
