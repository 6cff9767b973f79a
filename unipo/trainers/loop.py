"""The outer loop the on-policy trainers share: evaluate, step, log, checkpoint, evaluate, summarise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from unipo.config import Config
from unipo.trainers import checkpoint
from unipo.trainers.common import RunDir
from unipo.trainers.dist import World


def run_steps(
    cfg: Config,
    run: RunDir,
    model: Any,
    tokenizer: Any,
    start: int,
    step_fn: Callable[[int], dict[str, float]],
    evaluate: Callable[[int], Any],
    checkpoint_state: Callable[[], dict[str, Any]],
    shown: dict[str, str],
    failures: Callable[[], dict[str, int]] = dict,
    extra_models: dict[str, Any] | None = None,
    world: World | None = None,
    samples: Callable[[], list[dict[str, Any]]] = list,
) -> None:
    """Steps `start + 1 .. train.max_steps` of `step_fn`, each logged to the run directory and the progress line,
    with the completions `samples()` gives after it (completions.jsonl; each trainer keeps `log.completions_per_step`);
    checkpoints (with `extra_models`, e.g. the critic) every `train.save_every` steps and at the end;
    `evaluate(step)` (which logs its own row) before (on a fresh run), every `eval.every` steps and after; then the
    closing summary. On several ranks (`world`) rank 0 alone shows progress, saves and summarises; the others wait
    for each checkpoint."""
    world = world or World()
    try:
        if start == 0:
            evaluate(0)
        before = next((r["eval/accuracy"] for r in run.rows() if r["step"] == 0 and "eval/accuracy" in r), None)
        started = time.perf_counter()
        progress = Progress(start, cfg.train.max_steps, shown, quiet=not (world.main and cfg.log.progress))
        for step in range(start + 1, cfg.train.max_steps + 1):
            metrics = step_fn(step)
            run.log({"step": step, **metrics})
            run.log_completions(step, samples())
            progress.update(step, metrics)
            if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == cfg.train.max_steps:
                weights, state = world.full_weights(model), checkpoint_state()  # every rank: sharded states gather
                extra_weights = {name: world.full_weights(m) for name, m in (extra_models or {}).items()}
                if world.main:
                    checkpoint.save(run.checkpoints, step, model, tokenizer, state, keep=cfg.train.keep_checkpoints,
                                    extra_models=extra_models, weights=weights,
                                    extra_weights=extra_weights)  # fmt: skip
                world.barrier()
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.max_steps:
                evaluate(step)
        progress.close()
        if cfg.train.max_steps > start:
            evaluate(cfg.train.max_steps)
        after = next((r["eval/accuracy"] for r in reversed(run.rows()) if "eval/accuracy" in r), None)
        if world.main:
            summary(run, cfg, start, time.perf_counter() - started, before, after, failures())
    finally:
        run.close()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar with ETA and live metrics on a terminal; one plain line per step with its ETA otherwise (logs, CI);
    nothing when `quiet`. `shown` maps a short label to the metric it shows (metrics a step did not log are left out);
    what a sampler did (`sampler/*` metrics) follows."""

    def __init__(self, start: int, total: int, shown: dict[str, str], quiet: bool = False):
        self.tty, self.quiet = sys.stderr.isatty(), quiet
        self.start, self.total, self.shown = start, total, shown
        self.bar, self.t0 = None, time.perf_counter()
        if self.tty and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, m: dict[str, float]) -> None:
        text = {label: f"{m[key]:.3g}" for label, key in self.shown.items() if m.get(key) is not None}
        text |= {k.removeprefix("sampler/"): f"{v:.3g}" for k, v in m.items() if k.startswith("sampler/")}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif not self.quiet:
            left = (time.perf_counter() - self.t0) / (step - self.start) * (self.total - step)
            _say(f"step {step}/{self.total} eta {_duration(left)} " + " ".join(f"{k}={v}" for k, v in text.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    """`75` -> `1m15s`; `3700` -> `1h01m`."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def summary(
    run: RunDir,
    cfg: Config,
    start: int,
    seconds: float,
    before: float | None,
    after: float | None,
    failures: dict[str, int],
) -> None:
    """The closing lines of a run: steps and time, held-out accuracy before -> after, what failed on the way."""
    steps = cfg.train.max_steps - start
    lines = [f"done: {steps} steps in {seconds:.0f} s ({cfg.recipe}, model {cfg.model.path}, task {cfg.task})"]
    if before is not None and after is not None:
        lines.append(f"held-out greedy accuracy: {before:.3f} -> {after:.3f}")
    failed = {k: v for k, v in failures.items() if v}
    if failed:
        lines.append(f"failures (reward functions: batches scored None; judges: comparisons taken as ties): {failed}")
    lines.append(f"run directory: {run.path}")
    _say("\n".join(lines))
