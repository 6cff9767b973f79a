"""Held-out evaluation: greedy accuracy and pass@k with sampling, scored by the task's metric (1 = correct).

Replies are scored with their truncation flags and token ids, as in training, so a reply cut off by the token budget
is never counted as right. `unipo train` prints a few held-out replies before and after training, so that a person
sees what was learned and not only the number.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from unipo.envs import resolve as resolve_env
from unipo.models.loading import autocast_context
from unipo.rewards import call_reward, reward_inputs, text_of
from unipo.rollout.hf import sample
from unipo.rollout.multiturn import as_messages, rollout

Reward = Callable[..., list[float | None]]


def evaluate(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    reward: Reward,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 128,
    k: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    also: dict[str, Reward] | None = None,
    replies: list[dict[str, Any]] | None = None,
    env: tuple[Any, Any] | None = None,
) -> dict[str, float]:
    """`eval/accuracy` (greedy) and, when k > 1, `eval/pass@k` (k samples at `temperature`, any correct).

    A reply counts as correct when `reward` is >= 1 (the built-in tasks' metrics are 0/1). `also` adds the mean
    greedy score of other reward functions as `eval/<name>` (e.g. the format reward); `replies`, when given, is
    filled with every greedy reply (`prompt`, `reply`, `correct`, `truncated`). With `env` (a multi-turn
    environment's factory and settings) each problem is a whole episode, `max_new_tokens` per turn, and the reply is
    its conversation. Runs in the caller's precision context: the trainer evaluates with the same (autocast) forward
    pass it samples and trains with.
    """
    also = also or {}
    fns = [reward, *also.values()]

    def generate(chunk: list[dict[str, Any]], n: int, greedy: bool) -> Any:
        kw = {"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "greedy": greedy,
              "generator": generator}  # fmt: skip
        return sample(model, tokenizer, chunk, **kw) if env is None else rollout(model, tokenizer, chunk, *env, **kw)

    greedy = _scores(generate, rows, fns, 1, batch_size, True, replies)
    out = {"eval/accuracy": _mean([s[0] >= 1.0 for s in greedy])}
    out |= {f"eval/{name}": _mean([s[i] for s in greedy]) for i, name in enumerate(also, 1)}
    if k > 1:
        sampled = _scores(generate, rows, [reward], k, batch_size, False, None)
        hits = [any(s[0] >= 1.0 for s in sampled[i * k : (i + 1) * k]) for i in range(len(rows))]
        out[f"eval/pass@{k}"] = _mean(hits)
    return out


def _mean(values: list) -> float:
    return sum(values) / max(1, len(values))


def _scores(generate, rows, fns, n, batch_size, greedy, replies) -> list[list[float]]:  # noqa: ANN001
    """Per completion, the score of each function in `fns` (None counts as 0)."""
    results: list[list[float]] = []
    per_batch = max(1, batch_size // n)
    for start in range(0, len(rows), per_batch):
        chunk = rows[start : start + per_batch]
        batch = generate(chunk, n, greedy)
        gids = batch.group_ids.tolist()
        prompts, columns = reward_inputs(chunk, gids, batch.truncated.tolist(), batch.token_lists(), batch.extras)
        per_fn = [call_reward(fn, prompts, batch.texts, columns) for fn in fns]
        scores = [[float(s[i] or 0.0) for s in per_fn] for i in range(len(batch.texts))]
        results += scores
        if replies is not None:
            texts = batch.texts
            if "messages" in batch.extras:  # a whole episode after the prompt's own messages
                texts = [_conversation(m, len(as_messages(p))) for m, p in
                         zip(batch.extras["messages"], prompts, strict=True)]  # fmt: skip
            replies += [
                {"prompt": _prompt_text(p), "reply": t, "correct": s[0] >= 1.0, "truncated": bool(c)}
                for p, t, s, c in zip(prompts, texts, scores, columns["truncated"], strict=True)
            ]
    return results


def _conversation(messages: list[dict[str, str]], skip: int, width: int = 24) -> str:
    """A multi-turn reply: every message after the prompt's, each marked with its role; the environment's cut to
    `width` characters, so that the policy's turns show."""
    cut = lambda m: m["content"] if m["role"] == "assistant" else m["content"][:width] + "…"  # noqa: E731
    return " | ".join(f"{m['role']}: {cut(m)}" for m in messages[skip:])


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else text_of(prompt)


def heldout_eval(
    cfg: Any, run: Any, model: Any, tokenizer: Any, task: Any, step: int, env: tuple[Any, Any] | None = None
) -> dict[str, float] | None:
    """Greedy accuracy on the task's first `eval.num_problems` held-out problems, logged at `step` in the run
    directory, with the same (autocast) forward pass the run samples and trains with; prints the first
    `eval.show_replies` replies. None when evaluation is off or nothing is held out (`data.eval_frac=0`)."""
    if not cfg.eval.num_problems or not task.heldout:
        return None
    rows = task.heldout[: cfg.eval.num_problems]
    replies: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with autocast_context(model, cfg.model.autocast):
        result = evaluate(model, tokenizer, rows, task.reward, max_new_tokens=cfg.eval.max_new_tokens,
                          batch_size=cfg.eval.batch_size, also=task.other_rewards(), replies=replies,
                          env=env)  # fmt: skip
    run.log({"step": step, **result, "time/eval_s": time.perf_counter() - t0})
    print(f"step {step}: held-out greedy accuracy {result['eval/accuracy']:.3f} on {len(rows)} problems",
          file=sys.stderr, flush=True)  # fmt: skip
    print(format_replies(replies[: cfg.eval.show_replies]), file=sys.stderr, flush=True)
    return result


def format_replies(replies: list[dict[str, Any]], width: int = 100) -> str:
    """A few held-out replies, one block each: the prompt, then the reply marked right or wrong (and cut off)."""
    lines = []
    for r in replies:
        mark = "right" if r["correct"] else "wrong" + (", cut off at the token budget" if r["truncated"] else "")
        reply = r["reply"].replace("\n", "\\n")
        lines.append(f"  > {r['prompt'][:width]}\n    {reply[:width]!s}   [{mark}]")
    return "\n".join(lines)


def resolve_target(target: str) -> tuple[str, str | None]:
    """(model path, the run's task or None) for a run directory (its latest verified checkpoint), a model directory
    or `default`."""
    from pathlib import Path

    from unipo.config import ConfigError
    from unipo.models.lora import is_adapter_dir
    from unipo.trainers import checkpoint

    run = Path(target)
    if target == "default" or (run / "config.json").exists() or is_adapter_dir(run) or not run.is_dir():
        return target, None
    found = checkpoint.list_checkpoints(run / "checkpoints")
    if not found:
        raise ConfigError(f"{target} is neither a run directory with checkpoints/ nor a model directory")
    checkpoint.verify(found[-1])
    task = None
    if (run / "config.yaml").exists():
        import yaml

        task = yaml.safe_load((run / "config.yaml").read_text()).get("task")
    return str(found[-1]), task


def compare(
    targets: list[str],
    tasks: list[str] | None,
    *,
    k: int = 1,
    num_problems: int = 100,
    max_new_tokens: int | None = None,
) -> str:
    """`unipo eval`: every target (run directory, model directory or `default`) on every task's held-out split
    (default: the run's own task, else `arithmetic`), greedy accuracy and pass@k, as one table (Markdown)."""
    return _table(scores(targets, tasks, k=k, num_problems=num_problems, max_new_tokens=max_new_tokens))


def scores(
    targets: list[str],
    tasks: list[str] | None,
    *,
    k: int = 1,
    num_problems: int = 100,
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (target, task) of `compare`: model, task, problems, eval/accuracy (and pass@k, other rewards)."""
    from unipo.config import ConfigError
    from unipo.data.tasks import builtin_tasks, get_task
    from unipo.models.loading import load_model_and_tokenizer

    loaded: dict[str, Any] = {}

    def task_named(name: str) -> Any:  # each task built once, whatever the number of targets
        if name not in loaded:
            try:
                loaded[name] = get_task(name)
            except (KeyError, ValueError) as e:
                raise ConfigError(str(e).strip("'\"")) from None
        return loaded[name]

    rows: list[dict[str, Any]] = []
    for target in targets:
        model_path, own_task = resolve_target(target)
        model, tokenizer = load_model_and_tokenizer(model_path)
        model.eval()
        for name in tasks or [own_task or "arithmetic"]:
            task = task_named(name)
            budget = max_new_tokens or builtin_tasks().get(name, (None, 32))[1]
            problems = task.heldout[:num_problems]
            with autocast_context(model, "auto"):  # as in training: bf16 autocast where the hardware has it
                result = evaluate(model, tokenizer, problems, task.reward, max_new_tokens=budget, k=k,
                                  generator=torch.Generator(next(model.parameters()).device).manual_seed(0),
                                  also=task.other_rewards(), env=resolve_env(None, task.env))  # fmt: skip
            rows.append({"model": target, "task": name, "problems": len(problems), **result})
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(c.removeprefix("eval/") for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
