"""Held-out evaluation: greedy accuracy and pass@k with sampling, scored by the task's reward (1 = correct)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from unipo.models.loading import autocast_context
from unipo.rewards import reward_inputs
from unipo.rollout.hf import sample


def evaluate(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    reward: Callable[..., list[float | None]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 128,
    k: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """`eval/accuracy` (greedy) and, when k > 1, `eval/pass@k` (k samples at `temperature`, any correct).

    A reply counts as correct when the reward is >= 1 (the built-in tasks use 0/1 rewards). Runs in the caller's
    precision context: the trainer evaluates with the same (autocast) forward pass it samples and trains with.
    """
    greedy = _correct(model, tokenizer, rows, reward, 1, max_new_tokens, batch_size, True, temperature, generator)
    out = {"eval/accuracy": sum(greedy) / max(1, len(greedy))}
    if k > 1:
        sampled = _correct(model, tokenizer, rows, reward, k, max_new_tokens, batch_size, False, temperature, generator)
        hits = [any(sampled[i * k : (i + 1) * k]) for i in range(len(rows))]
        out[f"eval/pass@{k}"] = sum(hits) / max(1, len(hits))
    return out


def _correct(
    model, tokenizer, rows, reward, n, max_new_tokens, batch_size, greedy, temperature, generator
) -> list[bool]:
    results: list[bool] = []
    per_batch = max(1, batch_size // n)
    for start in range(0, len(rows), per_batch):
        chunk = rows[start : start + per_batch]
        batch = sample(
            model,
            tokenizer,
            chunk,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            greedy=greedy,
            generator=generator,
        )
        prompts, columns = reward_inputs(chunk, batch.group_ids.tolist())
        scores = reward(prompts, batch.texts, **columns)
        results += [s is not None and s >= 1.0 for s in scores]
    return results


def heldout_eval(cfg: Any, run: Any, model: Any, tokenizer: Any, task: Any, step: int) -> dict[str, float] | None:
    """Greedy accuracy on the task's first `eval.num_problems` held-out problems, logged at `step` in the run
    directory, with the same (autocast) forward pass the run samples and trains with. None when evaluation is off."""
    if not cfg.eval.num_problems:
        return None
    rows = task.heldout[: cfg.eval.num_problems]
    t0 = time.perf_counter()
    with autocast_context(model, cfg.model.autocast):
        result = evaluate(model, tokenizer, rows, task.reward,
                          max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)  # fmt: skip
    run.log({"step": step, **result, "time/eval_s": time.perf_counter() - t0})
    print(f"step {step}: held-out greedy accuracy {result['eval/accuracy']:.3f} on {len(rows)} problems",
          file=sys.stderr, flush=True)  # fmt: skip
    return result
