"""Rewards for structured answers: `json_schema` (RL-Struct style) and `countdown` (an arithmetic expression that
reaches a target from given numbers, TinyZero style)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from fractions import Fraction

from unipo.rewards import tagged_or_last_line, text_of

_FENCED_JSON = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL | re.IGNORECASE)


def _as_json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def json_parts(reply: str, schema: dict, reference: dict | None) -> dict[str, float]:
    """The four checks of a structured reply, each in [0, 1]:

    - `structure`: a JSON object can be read from the reply (the whole reply, a fenced block, or the first `{…}`);
    - `format`: the reply is only that object (optionally in one ```json fence);
    - `valid`: the object validates against `schema` (`jsonschema`), every required key is present and no key is
      outside the schema's `properties` (no hallucinated keys, even where the schema allows extra ones);
    - `content`: the share of `reference`'s fields whose value the object gives exactly (1 when no reference).
    """
    import jsonschema

    parts = {"structure": 0.0, "format": 0.0, "valid": 0.0, "content": 0.0}
    body = _FENCED_JSON.fullmatch(reply)
    candidates = [reply, body.group(1) if body else None, _first_braces(reply)]
    for i, text in enumerate(candidates):
        try:
            obj = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            parts["structure"], parts["format"] = 1.0, float(i < 2)
            break
    else:
        return parts
    known = set(schema.get("properties", {}))
    try:
        jsonschema.validate(obj, schema)
        parts["valid"] = float(not known or set(obj) <= known)
    except jsonschema.ValidationError:
        pass
    if reference:
        parts["content"] = sum(obj.get(k) == v and type(obj.get(k)) is type(v) for k, v in reference.items()) / len(
            reference
        )
    else:
        parts["content"] = 1.0
    return parts


def _first_braces(text: str) -> str | None:
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    for j in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start : j + 1]
    return None


def json_schema(
    prompts: Sequence,
    completions: Sequence,
    schema: Sequence,
    reference: Sequence | None = None,
    truncated: Sequence[bool] | None = None,
    *,
    weights: dict[str, float] | None = None,
    gated: bool = False,
    parts: bool = False,
    **_: object,
) -> list[float] | dict[str, list[float]]:
    """The structured-output reward of RL-Struct (../shared/papers/seeds_003_004.md 004-01), reconstructed: the
    checks of `json_parts` combined as R = Σ_k w_k·r_k with weights summing to 1 (default: structure 0.1, format
    0.1, valid 0.3, content 0.5), so R = 1 exactly when every check passes. With `gated`, a check counts only
    when every earlier one (structure → format → valid → content) passed in full, RL-Struct's hierarchy. A
    truncated reply scores 0. `schema` and `reference` are per-row columns (objects or JSON text).

    With `parts`, the four checks are returned as named scores instead (a dict of lists), for multi-reward
    advantages: `rewards=[{name: json_schema, parts: true, scores: {structure: 0.1, format: 0.1, valid: 0.3,
    content: 0.5}}]` with `gdpo`.
    """
    w = {"structure": 0.1, "format": 0.1, "valid": 0.3, "content": 0.5} | (weights or {})
    total = sum(w.values())
    ends = [False] * len(completions) if truncated is None else list(truncated)
    refs = [None] * len(completions) if reference is None else list(reference)
    out, named = [], {k: [] for k in w}
    for c, s, ref, cut in zip(completions, schema, refs, ends, strict=True):
        checks = dict.fromkeys(w, 0.0) if cut else json_parts(text_of(c), _as_json(s), _as_json(ref))
        score, open_gate = 0.0, True
        for key in ("structure", "format", "valid", "content"):
            named[key].append(checks[key] * open_gate)
            score += w[key] * checks[key] * open_gate
            open_gate = open_gate and (not gated or checks[key] >= 1.0)
        out.append(score / total)
    return named if parts else out


# -- countdown ---------------------------------------------------------------------------------------------------

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}  # fmt: skip


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """The exact value of an arithmetic expression over integers (+ - * / and parentheses) and the integers it
    uses, or None when it is anything else (names, calls, powers, division by zero)."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(ast.dump(node))

    try:
        return value(tree), used
    except (ValueError, ZeroDivisionError):
        return None


def countdown_expression(reply: str) -> str | None:
    """The expression a countdown reply proposes: the content of the last `<answer>…</answer>`, else its last
    non-empty line; a trailing `= <number>` is dropped."""
    text = tagged_or_last_line(reply)
    return re.sub(r"=\s*-?\d+\s*\.?\s*$", "", text).strip() or None


def countdown(
    prompts: Sequence,
    completions: Sequence,
    numbers: Sequence,
    target: Sequence,
    truncated: Sequence[bool] | None = None,
    **_: object,
) -> list[float]:
    """1.0 when a finished reply's expression (`countdown_expression`) uses each given number exactly once, only
    + - * / and parentheses, and equals the target exactly; else 0.0. The correctness check of the Countdown task as
    TinyZero scores it (Pan et al. 2025, https://github.com/Jiayi-Pan/TinyZero, `countdown.py`: all numbers used
    once, value equal to the target)."""
    return [float(s == 1.0) for s in _countdown_scores(completions, numbers, target, truncated)]


def countdown_format(
    prompts: Sequence,
    completions: Sequence,
    numbers: Sequence,
    target: Sequence,
    truncated: Sequence[bool] | None = None,
    **_: object,
) -> list[float]:
    """1.0 when a finished reply proposes a well-formed expression over exactly the given numbers, right or not;
    else 0.0: TinyZero's format score (0.1 of the correct score there; weight it so)."""
    return [float(s >= 0.1) for s in _countdown_scores(completions, numbers, target, truncated)]


def _countdown_scores(completions, numbers, target, truncated) -> list[float]:  # noqa: ANN001
    """Per reply 0 (no valid expression), 0.1 (valid over the numbers, wrong value) or 1 (right)."""
    ends = [False] * len(completions) if truncated is None else list(truncated)
    out = []
    for c, nums, goal, cut in zip(completions, numbers, target, ends, strict=True):
        expr = None if cut else countdown_expression(text_of(c))
        found = evaluate_expression(expr) if expr else None
        if found is None or sorted(found[1]) != sorted(int(n) for n in _as_json(nums)):
            out.append(0.0)
        else:
            out.append(1.0 if found[0] == Fraction(int(goal)) else 0.1)
    return out
