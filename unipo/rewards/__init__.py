"""Reward functions: plain callables `fn(prompts, completions, **columns) -> list[float | None]`.

The TRL convention: completions as text, every dataset column as a keyword list, plus `completion_ids` (the sampled
token ids of each completion, through its EOS) and `truncated` (True where the completion hit the token budget
without finishing). A function that takes `**kwargs` receives all of them; one that does not receives the keywords
it names. `None` means "this function does not apply to this completion": it is left out of the sum, and a
completion that every function scores None gets a NaN reward (advantage 0).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence

_INT = re.compile(r"-?\d+")


def text_of(completion: object) -> str:
    """A completion as text: a string as is, or the content of the last message of a chat completion (the form
    TRL passes for conversational datasets)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def reward_inputs(
    rows: Sequence[dict],
    group_ids: Sequence[int],
    truncated: Sequence[bool] | None = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
    extras: dict[str, list] | None = None,
) -> tuple[list, dict[str, list]]:
    """The prompts and keyword columns of each completion (row `group_ids[i]`), as reward functions take them:
    every dataset column, plus `truncated` and `completion_ids` when the caller knows them, plus the rollout's own
    per-completion columns (`extras`: a multi-turn trajectory's `messages`, `env_reward`, `tool_calls`, ...)."""
    per_completion = [rows[g] for g in group_ids]
    columns = {k: [r.get(k) for r in per_completion] for k in rows[0] if k != "prompt"}
    if truncated is not None:
        columns["truncated"] = [bool(t) for t in truncated]
    if completion_ids is not None:
        columns["completion_ids"] = [list(ids) for ids in completion_ids]
    columns |= {k: list(v) for k, v in (extras or {}).items()}
    return [r["prompt"] for r in per_completion], columns


def final_number(text: str) -> str | None:
    """The last integer written in `text` (None when there is none)."""
    found = _INT.findall(text)
    return found[-1] if found else None


def final_answer(
    prompts: Sequence,
    completions: Sequence[str],
    answer: Sequence[str],
    truncated: Sequence[bool] | None = None,
    max_numbers: int | None = 3,
    **_: object,
) -> list[float]:
    """1.0 for a finished reply whose final answer is right, else 0.0: scored as a person reads the reply.

    A reply earns credit only when (1) it ended within the token budget (`truncated` False: a reply cut off
    mid-sentence has no final answer), (2) its last integer equals `answer`, and (3) it writes at most
    `max_numbers` integers (None: no limit). The default 3 admits "a + b = c" and rejects hedging such as
    "0 + 31 = 31 ... So 0 + 31 = 32" and an equation repeated until the budget. `truncated=None` (a caller that
    does not know) counts every reply as finished. The default task's metric and main reward.
    """
    ends = [False] * len(completions) if truncated is None else list(truncated)
    out = []
    for c, a, cut in zip(completions, answer, ends, strict=True):
        numbers = _INT.findall(text_of(c))
        ok = not cut and bool(numbers) and _same_number(numbers[-1], a)
        out.append(1.0 if ok and (max_numbers is None or len(numbers) <= max_numbers) else 0.0)
    return out


def _same_number(written: str, answer: object) -> bool:
    try:
        return int(written) == int(str(answer).strip())
    except ValueError:
        return written == str(answer).strip()


def call_reward(fn: Callable, prompts: list, completions: list, columns: dict[str, list]) -> list:
    """`fn(prompts, completions, **columns)`, passing only the columns `fn` names unless it takes `**kwargs`
    (so a plain `def f(prompts, completions, answer)` works beside TRL-style functions)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature: give them everything
        return fn(prompts, completions, **columns)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        names = {p.name for p in params}
        columns = {k: v for k, v in columns.items() if k in names}
    return fn(prompts, completions, **columns)


class RewardError(Exception):
    """A reward call that did not give one number (or None) per completion in time."""


def _checked(values: object, n: int) -> list[float | None] | dict[str, list[float | None]]:
    """One float or None per completion, or named scores: a dict of such lists."""
    if isinstance(values, dict):
        return {str(k): _checked(v, n) for k, v in values.items()}  # type: ignore[misc]
    values = list(values)  # type: ignore[call-overload]
    if len(values) != n:
        raise RewardError(f"returned {len(values)} values for {n} completions")
    return [None if v is None else float(v) for v in values]


def run_call(fn: Callable, prompts: list, completions: list, columns: dict[str, list]) -> list | dict:
    """One call of `fn` (an `async def` function run to completion in a fresh event loop), checked: one float or
    None per completion, or a dict of such lists (named scores). What a reward worker process runs (this module
    imports nothing heavy)."""
    out = call_reward(fn, prompts, completions, columns)
    if inspect.isawaitable(out):
        import asyncio

        async def wait() -> object:
            return await out

        out = asyncio.run(wait())
    return _checked(out, len(completions))


async def checked_coro(fn: Callable, prompts: list, completions: list, columns: dict[str, list]) -> list | dict:
    """`run_call` for an `async def` function inside a running event loop."""
    return _checked(await call_reward(fn, prompts, completions, columns), len(completions))


def contains_answer(prompts: Sequence, completions: Sequence[str], answer: Sequence[str], **_: object) -> list[float]:
    """1.0 when the reference integer `answer` appears as a whole number in the completion, else 0.0."""
    return [1.0 if str(a) in _INT.findall(text_of(c)) else 0.0 for c, a in zip(completions, answer, strict=True)]


def bare_answer(
    prompts: Sequence,
    completions: Sequence[str],
    answer: Sequence[str],
    truncated: Sequence[bool] | None = None,
    **_: object,
) -> list[float]:
    """1.0 when the reply is only the right number (a finished reply for which `only_number` and `final_answer`
    both hold), else 0.0: the format component of the arithmetic task.

    Gated on correctness on purpose: an ungated format reward (any bare number) was measured to teach SmolLM2-135M
    to answer with a bare wrong number (held-out accuracy 0.20 -> 0.15 in the default run, 2026-12-01).
    """
    right = final_answer(prompts, completions, answer, truncated=truncated)
    return [r * f for r, f in zip(right, only_number(prompts, completions), strict=True)]


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


def _answer_text(answer: object) -> str:
    return str(answer).strip()


def exact_match(prompts: Sequence, completions: Sequence, answer: Sequence, **_: object) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals `answer`, else 0.0."""
    return [float(text_of(c).strip() == _answer_text(a)) for c, a in zip(completions, answer, strict=True)]


def contains(prompts: Sequence, completions: Sequence, answer: Sequence, **_: object) -> list[float]:
    """1.0 when `answer` occurs in the completion as a substring, else 0.0."""
    return [float(_answer_text(a) in text_of(c)) for c, a in zip(completions, answer, strict=True)]


def regex(prompts: Sequence, completions: Sequence, *, pattern: str, **_: object) -> list[float]:
    """1.0 when the regular expression `pattern` matches the whole completion (`re.fullmatch`, DOTALL), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.fullmatch(text_of(c)) is not None) for c in completions]


_THINK_ANSWER = re.compile(r"\s*<think>.+?</think>\s*<answer>.+?</answer>\s*", re.DOTALL)


def think_answer_format(prompts: Sequence, completions: Sequence, **_: object) -> list[float]:
    """1.0 when the completion is `<think>…</think><answer>…</answer>` (whitespace around the tags allowed, both
    non-empty, nothing else), else 0.0: the R1-style format reward."""
    return [float(_THINK_ANSWER.fullmatch(text_of(c)) is not None) for c in completions]


def math_answer(
    prompts: Sequence, completions: Sequence, answer: Sequence, truncated: Sequence[bool] | None = None, **_: object
) -> list[float]:
    """1.0 when the completion's final answer equals `answer`, else 0.0. A truncated completion scores 0.

    The final answer is the content of the last `\\boxed{…}`, else of the last `<answer>…</answer>`, else the last
    number written (`final_math_answer`). It equals `answer` when both write the same number as exact fractions
    (`0.5`, `1/2`, `\\frac{1}{2}`, `1,000`, `$3$`), the same normalised text, or an equivalent expression by the
    `math-verify` package (Hugging Face; symbolic equivalence such as `2\\sqrt{2}` = `\\sqrt{8}`, sets, percentages,
    units in `\\text{}`), called with its signal-based timeouts off since rewards run in threads under
    `reward.timeout_s`.
    """
    ends = [False] * len(completions) if truncated is None else list(truncated)
    out = []
    for c, a, cut in zip(completions, answer, ends, strict=True):
        got = final_math_answer(text_of(c))
        out.append(float(not cut and got is not None and (same_math_answer(got, str(a)) or verified(got, str(a)))))
    return out


def tagged_or_last_line(text: str) -> str:
    """A reply's final answer when it is not a number: the content of its last `<answer>…</answer>`, else its last
    non-empty line ("" for an empty reply)."""
    tagged = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if tagged:
        return tagged[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def final_math_answer(text: str) -> str | None:
    """The last `\\boxed{…}` content (braces balanced), else the last `<answer>…</answer>`, else the last number."""
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j]
        return None
    tagged = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if tagged:
        return tagged[-1]
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?", text)
    return numbers[-1] if numbers else None


def same_math_answer(got: str, want: str) -> bool:
    """`got` and `want` write the same number (as exact fractions), or the same normalised text."""
    a, b = _as_number(got), _as_number(want)
    if a is not None and b is not None:
        return a == b
    return _normalise(got) == _normalise(want)


def verified(got: str, want: str) -> bool:
    """`math-verify`'s equivalence of two final answers, each read as LaTeX (False when either does not parse)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call that its timeouts are off
    try:
        gold, pred = parse(f"${want}$", parsing_timeout=None), parse(f"${got}$", parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    except Exception:  # noqa: BLE001 (sympy can fail in many ways on malformed LaTeX)
        return False


def _normalise(text: str) -> str:
    text = re.sub(r"\\left|\\right|\\!|\\,|\$|\s", "", text)
    return text.rstrip(".")


def _as_number(text: str):  # noqa: ANN202 (Fraction | None)
    from fractions import Fraction

    t = _normalise(text)
    t = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", t)
    t = t.replace("{", "").replace("}", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    m = re.fullmatch(r"\(?(-?\d+(?:\.\d+)?)\)?(?:/\(?(-?\d+(?:\.\d+)?)\)?)?", t)
    if not m:
        return None
    num = Fraction(m.group(1))
    den = Fraction(m.group(2)) if m.group(2) else Fraction(1)
    return None if den == 0 else num / den


def reward_model(
    prompts: Sequence, completions: Sequence, *, path: str, device: str = "cpu", batch_size: int = 32, **_: object
) -> list[float]:
    """The score of an HF sequence-classification reward model (one output, Bradley-Terry) for each prompt and
    completion, batched, through the model's chat template when it has one; the same scorer as the online trainer's
    `online.oracle=reward_model`. The model loads on the first call and stays loaded (`path`, `device`)."""
    from unipo.rewards.oracles import loaded_reward_model

    scorer = loaded_reward_model(path, device, batch_size)
    return scorer([{"prompt": p} for p in prompts], [text_of(c) for c in completions]).tolist()


def env_reward(prompts: Sequence, completions: Sequence[str], env_reward: Sequence[float | None],
               **_: object) -> list[float | None]:  # fmt: skip
    """The environment's reward of each multi-turn trajectory: the sum of its turn rewards (rollout/multiturn.py),
    None for an episode whose environment failed (unscored, advantage 0)."""
    return list(env_reward)


BUILTIN: dict[str, Callable[..., list]] = {
    "final_answer": final_answer,
    "bare_answer": bare_answer,
    "contains_answer": contains_answer,
    "only_number": only_number,
    "share_of_target": share_of_target,
    "exact_match": exact_match,
    "contains": contains,
    "regex": regex,
    "format": think_answer_format,
    "math": math_answer,
    "reward_model": reward_model,
    "env_reward": env_reward,
}
"""Reward functions configured by name (`rewards=[{name: math}]`); extra keys are their keyword arguments."""

from unipo.rewards.code import code  # noqa: E402 (these modules use `text_of` above)
from unipo.rewards.judge import judge, soft_multichoice  # noqa: E402
from unipo.rewards.refine import refinement, verdict  # noqa: E402
from unipo.rewards.structured import countdown, countdown_format, json_schema  # noqa: E402

BUILTIN |= {"code": code, "json_schema": json_schema, "countdown": countdown, "countdown_format": countdown_format,
            "judge": judge, "soft_multichoice": soft_multichoice, "verdict": verdict,
            "refinement": refinement}  # fmt: skip
