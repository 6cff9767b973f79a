"""Preference data as a loss reads it (`trainers/preference.py`): the built-in pairs or `data.path` validated,
selected by margin, converted to the loss's format (lists to pairs, single trajectories to lists of one), with a gold
response only where the loss takes one, and the held-out rows."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from unipo.config import Config, ConfigError
from unipo.data.preference import (
    arithmetic_pairs,
    is_listwise,
    is_single,
    is_unpaired,
    lists_to_pairs,
    load_pairs,
    singles_to_lists,
    validate_pairs,
)
from unipo.data.sources import select_by_margin, split_heldout
from unipo.rewards import text_of

if TYPE_CHECKING:
    from unipo.trainers.preference import Loss

log = logging.getLogger("unipo")


def load_examples(cfg: Config, loss: Loss) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) rows: the built-in arithmetic pairs, or `data.path` validated (lists become pairs for a
    pairwise loss) with `data.eval_path`'s rows or a seeded `data.eval_frac` of them held out (logged)."""
    if cfg.data.path is None:
        if loss.listwise or "chosen_rewards" in loss.inputs:
            raise ConfigError(f"data.path: {cfg.algo.preference.name!r} needs scored data (lists with `scores`, or "
                              "pairs with `score_chosen`/`score_rejected`); the built-in pairs have none")  # fmt: skip
        return tuple(_gold(cfg, loss, rows, "the built-in pairs") for rows in arithmetic_pairs())
    rows = _gold(cfg, loss, _as_the_loss_reads(cfg, loss, "path"), cfg.data.path)
    if "chosen_rewards" in loss.inputs and any("score_chosen" not in r or "score_rejected" not in r for r in rows):
        raise ConfigError(f"data.path: {cfg.algo.preference.name!r} needs `score_chosen` and `score_rejected` in "
                          "every pair (or lists with `scores`)")  # fmt: skip
    if cfg.data.eval_path:
        heldout = _gold(cfg, loss, _as_the_loss_reads(cfg, loss, "eval_path"), cfg.data.eval_path)
        train, how = rows, f"data.eval_path={cfg.data.eval_path}"
    else:
        train, heldout = split_heldout(rows, cfg.data.eval_frac, seed=0)
        how = f"data.eval_frac={cfg.data.eval_frac}" + ("" if heldout else "; nothing held out")
    log.info("data %s: %d training examples, %d held out (%s)", cfg.data.path, len(train), len(heldout), how)
    return train, heldout


def _as_the_loss_reads(cfg: Config, loss: Loss, field: str) -> list[dict[str, Any]]:
    """The valid rows of the file at `cfg.data.<field>` in the form `loss` trains on: lists become pairs for a
    pairwise loss and single trajectories lists of one; a format the loss cannot read is a ConfigError."""
    key, found = f"data.{field}", load_pairs(getattr(cfg.data, field))
    rows = validate_pairs(found.rows, cfg.data.max_bad_frac, found.where, found.bad, trajectories=loss.single)
    if field == "path":  # MPO's easy or hard pairs (the held-out file is kept whole)
        rows = select_by_margin(rows, cfg.data, key)
    name = cfg.algo.preference.name
    if is_unpaired(rows) and not loss.unpaired:
        raise ConfigError(f"{key}: unpaired rows (`completion` + `label`) need an unpaired loss (kto, "
                          f"apo_zero_unpaired), not {name!r}")  # fmt: skip
    if is_single(rows):
        if not loss.single:
            raise ConfigError(f"{key}: single-trajectory rows (`completion` + `score`) need a loss that trains on "
                              f"each trajectory alone (dro_offline), not {name!r}")  # fmt: skip
        rows = singles_to_lists(rows)
    if loss.listwise and not is_listwise(rows):
        raise ConfigError(f"{key}: {name!r} is listwise and needs rows with `responses` and `scores`")
    return lists_to_pairs(rows) if not loss.listwise and is_listwise(rows) else rows


def _gold(cfg: Config, loss: Loss, rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Pairs as `loss` uses them: with their `reference` (gold) response for a loss that takes `gold_logp` (TPO,
    SLiC-HF; every pair must have one), without it otherwise (so no third response is scored)."""
    if "gold_logp" not in loss.inputs:
        return [{k: v for k, v in r.items() if k != "reference"} if "reference" in r else r for r in rows]
    if any("chosen" not in r or not text_of(r.get("reference") or "").strip() for r in rows):
        raise ConfigError(f"data.path: {cfg.algo.preference.name!r} needs a gold response in a `reference` column "
                          f"of every pair; {where} has pairs without one")  # fmt: skip
    return rows
