"""Staged runs (`trainer: staged`): the recipes of `stages` in turn, each from the model the previous stage ended
with, as MPO's DPO on easy pairs and then PPO on hard prompts (`mpo_mixed`; `../shared/papers/seeds_002.md` lists
"reference = previous-stage checkpoint" as the pattern).

Stage k is a run of its own in `<output_dir>/<k>-<name>`: its recipe, then the stage's `set`, then every key the
staged config itself sets (the staged recipe's and the command line's, except `trainer`, `stages`, `recipe`, `paper`
and `output_dir`), so `train.max_steps=4` applies to every stage. A value `${key}` left in a stage's settings after
that is the staged config's dotted key (`task: ${data.path}`: the RL stage reads the preference stage's file as its
prompts). Stage k > 1 starts from the last checkpoint of stage k − 1, which is also its reference model (the
trainers load the reference from `model.path`). Running again with the same output_dir resumes: a finished stage has
no step left (each run resumes from its last checkpoint), so only the unfinished stage and those after it train.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from unipo.config import Config, ConfigError, load
from unipo.config.loading import merge
from unipo.run import default_output_dir
from unipo.trainers import checkpoint

log = logging.getLogger("unipo")

NOT_SHARED = ("trainer", "stages", "recipe", "paper", "output_dir")
"""Keys of the staged config that are not passed on to its stages."""
_REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def stage_config(cfg: Config, out: Path, k: int, start: str | None) -> Config:
    """Stage k's config (k from 0), starting from the model at `start` (None: its own `model.path`)."""
    stage = cfg.stages[k]
    shared = {key: v for key, v in cfg.model_dump(exclude_unset=True).items() if key not in NOT_SHARED}
    extra = _resolved(merge(stage.set, shared), cfg, stage.name) | {"output_dir": str(out / f"{k + 1}-{stage.name}")}
    if start is not None:
        extra = merge(extra, {"model": {"path": start}})
    try:
        return load(stage.recipe, extra=extra)
    except ConfigError as e:
        raise ConfigError(f"stage {stage.name} ({stage.recipe}): {e}") from None


def train(cfg: Config) -> Path:
    """Run the stages in turn (module docstring); returns the staged run's directory."""
    from unipo.api import run_config

    out = Path(cfg.output_dir or default_output_dir(cfg))
    for k in range(len(cfg.stages)):  # every stage's config is checked before any trains
        stage_config(cfg, out, k, None)
    start: str | None = None
    for k, stage in enumerate(cfg.stages):
        stage_cfg = stage_config(cfg, out, k, start)
        log.info("stage %d of %d: %s (%s) from %s", k + 1, len(cfg.stages), stage.name, stage.recipe,
                 stage_cfg.model.path)  # fmt: skip
        run = run_config(stage_cfg)
        last, _ = checkpoint.latest(run / "checkpoints")
        if last is None:
            raise ConfigError(f"stage {stage.name}: its run {run} saved no checkpoint (train.max_steps=0?)")
        start = str(last)
    return out


def _resolved(value: Any, cfg: Config, stage: str) -> Any:
    """`value` with each string `${key}` replaced by that dotted key of `cfg`."""
    if isinstance(value, dict):
        return {k: _resolved(v, cfg, stage) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, cfg, stage) for v in value]
    if isinstance(value, str) and (m := _REF.fullmatch(value)):
        found: Any = cfg
        for part in m.group(1).split("."):
            found = getattr(found, part, None)
        if found is None:
            raise ConfigError(f"stage {stage}: {value} is not set (set {m.group(1)}=...)")
        return found
    return value
