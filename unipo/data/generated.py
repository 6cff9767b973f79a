"""Built-in tasks generated locally (no download), each with a fixed held-out split and the reward that defines
success: `countdown`, `json_struct`, `gsm_style`, `code` and `critique`. The split depends only on the task's own
seed, never on the training seed, so held-out figures of different runs compare."""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import product

from unipo.data.tasks import Row, Task
from unipo.rewards import math_answer
from unipo.rewards.code import code
from unipo.rewards.refine import verdict
from unipo.rewards.structured import countdown, countdown_format, json_schema


def _split(rows: list[Row], n_heldout: int, seed: int) -> tuple[list[Row], list[Row]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[n_heldout:], rows[:n_heldout]


def _chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def countdown_task(seed: int = 1234, n_heldout: int = 100, size: int = 3000) -> Task:
    """Countdown (TinyZero): reach a target with three numbers from 1–20, each used once, and + - * /.

    Every target is reachable: it is the value of a random expression over the numbers (an integer in 1–100).
    Correct (`countdown`): a finished reply whose last line (or `<answer>`) is such an expression. Trained on that
    plus 0.1 × `countdown_format` (a well-formed expression over exactly the numbers), TinyZero's format score.
    """
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < size:
        nums = [rng.randint(1, 20) for _ in range(3)]
        a, b, c = rng.sample(nums, 3)
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        expr = f"({a} {op1} {b}) {op2} {c}" if rng.random() < 0.5 else f"{a} {op1} ({b} {op2} {c})"
        target = eval(expr)  # noqa: S307 (our own expression of three integers)
        if not 1 <= target <= 100 or (tuple(sorted(nums)), target) in seen:
            continue
        seen.add((tuple(sorted(nums)), target))
        content = (
            f"Using the numbers {nums[0]}, {nums[1]} and {nums[2]}, each exactly once, and + - * / and parentheses, "
            f"write an expression that equals {target}. Reply with only the expression."
        )
        rows.append({"prompt": _chat(content), "numbers": nums, "target": target})
    train, heldout = _split(rows, n_heldout, seed)
    return Task(
        "countdown", train, heldout, countdown,
        "reach the target from 3 numbers; correct: a finished reply whose expression uses each number once and "
        "equals the target (+0.1 for a well-formed expression over the numbers)",
        rewards=[(countdown, 1.0), (countdown_format, 0.1)],
    )  # fmt: skip


_NAMES = ["Alice", "Bob", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena"]
_CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Rome", "Dakar", "Seoul", "Perth"]
_ITEMS = ["lamp", "kettle", "chair", "bicycle", "guitar", "backpack", "camera", "blanket"]


def json_struct_task(seed: int = 1234, n_heldout: int = 100) -> Task:
    """Structured output (RL-Struct style): read a sentence and reply with a JSON object matching a schema that
    the prompt describes (a person: name, age, city; or an item: name, price, in_stock).

    Correct: `json_schema` = 1, i.e. the reply is only a JSON object that validates against the schema, has no
    other keys and gives every field's value exactly.
    """
    person = _object_schema(name="string", age="integer", city="string")
    item = _object_schema(name="string", price="integer", in_stock="boolean")
    rows = []
    for name, age, city in product(_NAMES, range(18, 70, 3), _CITIES):
        text = f"{name} is {age} years old and lives in {city}."
        keys = "name (string), age (integer) and city (string)"
        rows.append((text, keys, person, {"name": name, "age": age, "city": city}))
    for thing, price, stock in product(_ITEMS, range(5, 200, 7), (True, False)):
        text = f"The {thing} costs {price} dollars and is {'in stock' if stock else 'sold out'}."
        keys = "name (string), price (integer) and in_stock (true or false)"
        rows.append((text, keys, item, {"name": thing, "price": price, "in_stock": stock}))
    out = [
        {
            "prompt": _chat(f"Text: {text}\nReply with only a JSON object with the keys {keys}."),
            "schema": schema,
            "reference": ref,
        }  # fmt: skip
        for text, keys, schema, ref in rows
    ]
    train, heldout = _split(out, n_heldout, seed)
    about = "a JSON object from a sentence; correct: only the object, valid, no extra keys, every value right"
    return Task("json_struct", train, heldout, json_schema, about)


def _object_schema(**types: str) -> dict:
    """A JSON Schema for an object with exactly these keys, all required."""
    properties = {k: {"type": t} for k, t in types.items()}
    return {"type": "object", "properties": properties, "required": list(types), "additionalProperties": False}


def gsm_style_task(seed: int = 1234, n_heldout: int = 100, size: int = 2000) -> Task:
    """Templated two-step word problems (GSM8K style) with integer answers, scored by `math` (a finished reply whose
    final answer, i.e. last `\\boxed{}`, `<answer>` or number, is right)."""
    rng = random.Random(seed)
    templates = [_gsm_buy, _gsm_share, _gsm_rate, _gsm_left]
    rows, seen = [], set()
    while len(rows) < size:
        question, answer = rng.choice(templates)(rng)
        if question in seen:
            continue
        seen.add(question)
        content = f"{question} Think briefly, then give the final answer as a number."
        rows.append({"prompt": _chat(content), "answer": str(answer)})
    train, heldout = _split(rows, n_heldout, seed)
    return Task("gsm_style", train, heldout, math_answer, "two-step word problems; correct: the final answer")


def _gsm_buy(rng: random.Random) -> tuple[str, int]:
    name, n, price, extra = rng.choice(_NAMES), rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
    return f"{name} buys {n} books at {price} dollars each and a pen for {extra} dollars. How many dollars does " \
           f"{name} spend?", n * price + extra  # fmt: skip


def _gsm_share(rng: random.Random) -> tuple[str, int]:
    name, k, each, eaten = rng.choice(_NAMES), rng.randint(2, 6), rng.randint(2, 10), rng.randint(1, 5)
    total = k * each + eaten
    return f"{name} has {total} apples, eats {eaten} and shares the rest equally among {k} friends. How many " \
           f"apples does each friend get?", each  # fmt: skip


def _gsm_rate(rng: random.Random) -> tuple[str, int]:
    speed, hours, back = rng.randint(20, 60), rng.randint(2, 5), rng.randint(5, 30)
    return f"A train travels at {speed} km per hour for {hours} hours, then goes back {back} km. How far is it from " \
           f"where it started, in km?", speed * hours - back  # fmt: skip


def _gsm_left(rng: random.Random) -> tuple[str, int]:
    name, start, per_day, days = rng.choice(_NAMES), rng.randint(50, 200), rng.randint(2, 9), rng.randint(3, 7)
    return f"{name} has {start} stickers and gives away {per_day} stickers every day for {days} days. How many " \
           f"stickers are left?", start - per_day * days  # fmt: skip


# (function name, description with {k}, argument lists for the tests, reference implementation of k)
_CODE_FAMILIES: list[tuple[str, str, list[tuple], Callable[[int], Callable]]] = [
    ("add_k", "returns x plus {k}", [(0,), (5,), (-3,)], lambda k: lambda x: x + k),
    ("times_k", "returns x times {k}", [(0,), (3,), (-2,)], lambda k: lambda x: x * k),
    ("is_multiple", "returns True when x is divisible by {k} and False otherwise", [(0,), (7,), (12,), (30,)],
     lambda k: lambda x: x % k == 0),
    ("repeat_k", "returns the string s repeated {k} times", [("ab",), ("",), ("x",)], lambda k: lambda s: s * k),
    ("last_k", "returns the last {k} characters of the string s (all of s when it is shorter)",
     [("abcdefghijklmnopqrstuvwxyz",), ("hi",), ("0123456789",)], lambda k: lambda s: s[-k:]),
    ("sum_plus_k", "returns the sum of the numbers in the list xs plus {k}", [([1, 2, 3],), ([],), ([-5, 5, 10],)],
     lambda k: lambda xs: sum(xs) + k),
    ("count_above_k", "returns how many numbers in the list xs are greater than {k}",
     [([1, 5, 10, 20],), ([],), ([3, 9, 15, 30, 2],)], lambda k: lambda xs: sum(x > k for x in xs)),
    ("max_minus_k", "returns the largest number in the non-empty list xs minus {k}", [([1, 5, 3],), ([-4],), ([9, 9],)],
     lambda k: lambda xs: max(xs) - k),
]  # fmt: skip


def code_task(seed: int = 1234, n_heldout: int = 40) -> Task:
    """Write a small Python function from a one-line description; scored by `code` (the share of its three or four
    assertion tests that pass in the sandbox). Correct: every test passes."""
    rows = []
    for (name, what, args, make), k in product(_CODE_FAMILIES, range(2, 21)):
        fn = make(k)
        params = "s" if "string s" in what else "xs" if "list xs" in what else "x"
        tests = [f"assert {name}({', '.join(map(repr, a))}) == {fn(*a)!r}" for a in args]
        content = f"Write a Python function `{name}({params})` that {what.format(k=k)}. Reply with only the code."
        rows.append({"prompt": _chat(content), "tests": tests})
    train, heldout = _split(rows, n_heldout, seed)
    return Task("code", train, heldout, code, "small Python functions; correct: every unit test passes")


def critique_task(seed: int = 1234, n_heldout: int = 100, size: int = 2000) -> Task:
    """Critique a proposed answer to a sum (RefCritic style): half of the proposals are right, half off by 1–9.

    Columns: `label` (`correct` or `incorrect`) and `answer` (the true sum, for `refinement`). Correct (`verdict`): a
    finished critique whose last `Verdict: correct|incorrect` matches the label. The `refcritic` recipe adds the
    `refinement` reward (a frozen model rewrites the answer following the critique) through `refcritic_reward_recon`.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        right = rng.random() < 0.5
        proposed = a + b if right else a + b + rng.choice([-1, 1]) * rng.randint(1, 9)
        content = (
            f"Problem: What is {a} + {b}?\nProposed solution: {a} + {b} = {proposed}\n\nCheck the proposed solution "
            "step by step, say what is wrong if anything, and end with 'Verdict: correct' or 'Verdict: incorrect'."
        )
        rows.append({"prompt": _chat(content), "answer": str(a + b), "label": "correct" if right else "incorrect"})
    train, heldout = _split(rows, n_heldout, seed)
    return Task("critique", train, heldout, verdict,
                "judge a proposed sum; correct: a finished critique whose verdict matches the label")  # fmt: skip


GENERATED: dict[str, tuple[Callable[[], Task], int]] = {
    "countdown": (countdown_task, 48),
    "json_struct": (json_struct_task, 64),
    "gsm_style": (gsm_style_task, 128),
    "code": (code_task, 96),
    "critique": (critique_task, 64),
}
"""Each generated task and its token budget (`rollout.max_new_tokens` and `eval.max_new_tokens` unless set)."""
