"""The generated built-in tasks (countdown, json_struct, gsm_style, code) and their rewards, on hand-worked replies."""

import itertools
import json
from fractions import Fraction

import pytest

from unipo.config import load
from unipo.data.tasks import builtin_tasks, get_task
from unipo.rewards.structured import countdown, countdown_format, evaluate_expression, json_parts, json_schema


def _prompt(row):
    return row["prompt"][0]["content"]


@pytest.mark.parametrize("name", ["countdown", "json_struct", "gsm_style", "code"])
def test_split_is_fixed_and_disjoint(name):
    task, again = get_task(name), get_task(name)
    assert [_prompt(r) for r in task.heldout] == [_prompt(r) for r in again.heldout]
    assert not {_prompt(r) for r in task.heldout} & {_prompt(r) for r in task.train}
    assert len(task.heldout) >= 40 and len(task.train) > len(task.heldout)


def test_each_task_sets_its_token_budget_unless_the_user_does():
    assert load("grpo", ["task=code"]).rollout.max_new_tokens == builtin_tasks()["code"][1] == 96
    assert load("grpo", ["task=code"]).eval.max_new_tokens == 96
    assert load("grpo", ["task=code", "rollout.max_new_tokens=16"]).rollout.max_new_tokens == 16
    assert load("grpo").rollout.max_new_tokens == 32  # arithmetic


def _solutions(numbers):
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-*/", repeat=2):
            for expr in (f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                found = evaluate_expression(expr)
                if found is not None:
                    yield expr, found[0]


def test_every_countdown_target_is_reachable_and_its_solution_scores_1():
    task = get_task("countdown")
    for row in task.heldout + task.train[:100]:
        expr = next(e for e, v in _solutions(row["numbers"]) if v == Fraction(row["target"]))
        assert countdown([None], [expr], [row["numbers"]], [row["target"]]) == [1.0]


def test_countdown_rewards_on_hand_worked_replies():
    replies = [
        "(6 - 3) * 2",  # 6: right
        "6 - 3 * 2 = 6",  # 0: wrong value, well formed (the "= 6" claim is dropped)
        "6 * 2",  # misses the 3
        "(6 - 3) * 2 * 2",  # uses 2 twice
        "I think:\n<answer>6 * 3 / 3</answer>",  # uses 3 twice, not 2
        "2 ** 3 - 2",  # powers are not allowed
        "(6 - 3) * 2",  # right, but cut off
        "",
    ]
    n = len(replies)
    cut = [False] * 6 + [True, False]
    args = ([None] * n, replies, [[6, 3, 2]] * n, [6] * n)
    assert countdown(*args, truncated=cut) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert countdown_format(*args, truncated=cut) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert evaluate_expression("7 / (2 - 2)") is None and evaluate_expression("__import__('os')") is None
    assert evaluate_expression("1 / 3 * 3") == (Fraction(1), [1, 3, 3])


PERSON = get_task("json_struct").heldout[0]


def test_json_schema_on_hand_worked_replies():
    schema, ref = PERSON["schema"], PERSON["reference"]
    exact = json.dumps(ref)
    wrong_age = json.dumps(ref | {"age": ref["age"] + 1})
    extra = json.dumps(ref | {"country": "X"})
    fenced = f"```json\n{exact}\n```"
    prose = f"Sure! {exact} Hope this helps."
    string_age = json.dumps(ref | {"age": str(ref["age"])})
    replies = [exact, wrong_age, extra, fenced, prose, string_age, "{not json", exact]
    n = len(replies)
    got = json_schema([None] * n, replies, [schema] * n, [ref] * n, truncated=[False] * (n - 1) + [True])
    # structure 0.1 + format 0.1 + valid 0.3 + content 0.5 * share of right fields
    want = [1.0, 0.5 + 0.5 * 2 / 3, 0.2 + 0.5, 1.0, 0.1 + 0.3 + 0.5, 0.2 + 0.5 * 2 / 3, 0.0, 0.0]
    assert got == pytest.approx(want)
    gated = json_schema([None] * 3, [prose, extra, exact], [schema] * 3, [ref] * 3, gated=True)
    assert gated == pytest.approx([0.1, 0.2, 1.0])  # nothing counts after the first failed check
    named = json_schema([None] * 3, [prose, extra, exact], [schema] * 3, [ref] * 3, parts=True)
    assert named == {"structure": [1.0, 1.0, 1.0], "format": [0.0, 1.0, 1.0], "valid": [1.0, 0.0, 1.0],
                     "content": [1.0, 1.0, 1.0]}  # fmt: skip


def test_json_schema_reads_json_text_columns_and_no_reference():
    schema, ref = PERSON["schema"], PERSON["reference"]
    got = json_schema([None], [json.dumps(ref)], [json.dumps(schema)], [json.dumps(ref)])
    assert got == [1.0]
    parts = json_parts(json.dumps(ref), schema, None)
    assert parts == {"structure": 1.0, "format": 1.0, "valid": 1.0, "content": 1.0}
    loose = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert json_parts('{"a": 1, "b": 2}', loose, None)["valid"] == 0.0  # b is a hallucinated key


def test_gsm_style_answers_are_the_templates_arithmetic():
    task = get_task("gsm_style")
    for row in task.heldout:
        answer = int(row["answer"])
        assert answer >= 0
        reply = f"So the answer is {answer}."
        assert task.reward([None], [reply], [row["answer"]]) == [1.0]
        assert task.reward([None], [f"{answer} ... no, {answer + 1}"], [row["answer"]]) == [0.0]


CANONICAL = {
    "add_k": "def add_k(x):\n    return x + {k}",
    "times_k": "def times_k(x):\n    return x * {k}",
    "is_multiple": "def is_multiple(x):\n    return x % {k} == 0",
    "repeat_k": "def repeat_k(s):\n    return s * {k}",
    "last_k": "def last_k(s):\n    return s[-{k}:]",
    "sum_plus_k": "def sum_plus_k(xs):\n    return sum(xs) + {k}",
    "count_above_k": "def count_above_k(xs):\n    return sum(x > {k} for x in xs)",
    "max_minus_k": "def max_minus_k(xs):\n    return max(xs) - {k}",
}


def test_code_task_rows_pass_with_a_right_solution_and_fail_with_a_wrong_one():
    import re

    task = get_task("code")
    seen = {}
    for row in task.heldout:
        name, k = re.search(r"`(\w+)\(", _prompt(row)).group(1), int(re.findall(r"\d+", _prompt(row))[-1])
        seen.setdefault(name, (row, k))
    assert set(seen) == set(CANONICAL)  # every family is held out at least once
    rows = [r for r, _ in seen.values()]
    right = [CANONICAL[n].format(k=k) for n, (_, k) in seen.items()]
    wrong = [CANONICAL[n].format(k=k + 1) for n, (_, k) in seen.items()]
    tests = [r["tests"] for r in rows]
    assert task.reward([None] * len(rows), right, tests) == [1.0] * len(rows)
    assert all(s < 1.0 for s in task.reward([None] * len(rows), wrong, tests))
