"""The built-in environments and their tasks (generated locally, with a fixed held-out split that never overlaps the
training rows).

- `calculator`: two-step arithmetic word problems; a calculator tool (`<calc>37+48-19</calc>`); the final reply
  scores 1 when it is finished and its last number is the answer.
- `python`: small computations; a sandboxed Python tool (`<python>print(sum(range(10)))</python>`, the `code`
  reward's sandbox: rewards/sandbox.py) whose stdout comes back; scored like `calculator`.
- `guess_number`: a number from 1 to `high`; each guess gets "higher" or "lower" (reward 1 when found). Its state
  key is the interval still possible, so turns of different trajectories that know the same meet in one anchor
  state (GiGPO).
- `search` (with `judge`, the `reseek` task): questions about a shipped corpus of fictional facts, a BM25 search tool;
  with `judge`, ReSeek's JUDGE action on each result, and a result judged useless leaves the context.
- `self_correct`: SCoRe's two attempts on an arithmetic question: after the first answer a fixed instruction asks
  for a correction. Turn rewards are r(y₁) and r(y₂) − r(y₁), so the trajectory's reward is r(y₂).
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from functools import cache
from typing import Any

from unipo.data.tasks import Task
from unipo.envs import Step, ToolEnv
from unipo.rewards import env_reward, final_number

Row = dict[str, Any]


def _correct(text: str, answer: str) -> float:
    """1.0 when the last integer in `text` is `answer`."""
    return float(final_number(text) == str(answer))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}  # fmt: skip


def calc(expression: str) -> str:
    """Evaluate + − × / // % and parentheses over numbers (no names, no powers: nothing can run long); an integral
    result is written without a decimal point."""
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.unparse(node)}")

    try:
        result = value(ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval").body)
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}") from None
    return str(int(result)) if float(result).is_integer() else f"{result:.6g}"


class CalculatorEnv(ToolEnv):
    """Arithmetic word problems with a calculator tool (module docstring)."""

    tools = {"calc": calc}

    def answer_reward(self, text: str) -> float:
        return _correct(text, self.row["answer"])


class PythonEnv(ToolEnv):
    """Computations with a sandboxed Python tool: the code runs in rewards/sandbox.py's subprocess (CPU, memory,
    wall-clock and output limits, no network, a scratch directory); its stdout, or its error, comes back."""

    def __init__(self, cpu_s: int = 2, wall_s: float = 5.0, **kwargs: Any):
        super().__init__(**{"tool_timeout_s": wall_s + 5.0, **kwargs})
        from unipo.rewards.sandbox import Limits

        self.limits = Limits(cpu_s=cpu_s, wall_s=wall_s)
        self.tools = {"python": self._run}

    def _run(self, source: str) -> str:
        from unipo.rewards.sandbox import run_python

        result = run_python(source, limits=self.limits)
        if result.timed_out:
            raise TimeoutError(f"the code ran past {self.limits.wall_s:g} s")
        if result.returncode != 0:
            raise RuntimeError((result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1])
        return result.stdout.strip()

    def answer_reward(self, text: str) -> float:
        return _correct(text, self.row["answer"])


class GuessNumberEnv:
    """Guess a number from 1 to `high`; the reply to a guess is "Higher." or "Lower." (module docstring)."""

    role = "user"

    def __init__(self, high: int = 20):
        self.high = high
        self.low_now, self.high_now, self.secret = 1, high, 0

    def reset(self, row: Row) -> None:
        self.secret = int(row["secret"])
        self.low_now, self.high_now = 1, self.high

    def step(self, action: str) -> Step:
        guess = final_number(action)
        if guess is None or not 1 <= int(guess) <= self.high:
            key = (self.low_now, self.high_now)
            return Step(f"Reply with only a number from 1 to {self.high}.", 0.0, False, {"state_key": key})
        g = int(guess)
        if g == self.secret:
            return Step(None, 1.0, True, {})
        if g < self.secret:
            self.low_now = max(self.low_now, g + 1)
        else:
            self.high_now = min(self.high_now, g - 1)
        reply = "Higher." if g < self.secret else "Lower."
        return Step(reply, 0.0, False, {"state_key": (self.low_now, self.high_now)})


class BM25:
    """Okapi BM25 over a small corpus (Robertson and Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and
    Beyond"), with Lucene's IDF ln(1 + (N − n + 0.5)/(n + 0.5)), which is never zero or negative (rank-bm25's is for
    a term in half the documents, rank_bm25#39); lower-cased word tokens; ties broken by document order."""

    def __init__(self, docs: list[str], k1: float = 1.5, b: float = 0.75):
        self.docs, self.k1, self.b = docs, k1, b
        self.tokens = [self.words(d) for d in docs]
        self.avg = sum(map(len, self.tokens)) / max(1, len(docs))
        n = len(docs)
        df: dict[str, int] = {}
        for toks in self.tokens:
            for w in set(toks):
                df[w] = df.get(w, 0) + 1
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def scores(self, query: str) -> list[float]:
        out = []
        for toks in self.tokens:
            tf: dict[str, int] = {}
            for w in toks:
                tf[w] = tf.get(w, 0) + 1
            norm = self.k1 * (1 - self.b + self.b * len(toks) / self.avg)
            out.append(sum(self.idf.get(w, 0.0) * tf[w] * (self.k1 + 1) / (tf[w] + norm)
                           for w in set(self.words(query)) if w in tf))  # fmt: skip
        return out

    def top(self, query: str, k: int = 2) -> list[str]:
        scores = self.scores(query)
        order = sorted(range(len(self.docs)), key=lambda i: (-scores[i], i))
        return [self.docs[i] for i in order[:k] if scores[i] > 0]


_JUDGE = re.compile(r"<judge>\s*(yes|no|good|bad)\s*</judge>", re.I)


class SearchEnv(ToolEnv):
    """Search-R1-style retrieval (Jin et al. 2025, arXiv:2503.09516): `<search>query</search>` returns the `top_k`
    passages of a small local corpus shipped with unipo (fictional facts, so the answer must be looked up) by BM25;
    the final reply scores 1 when its last number is the answer.

    With `judge`, ReSeek's JUDGE action (TencentBAC 2025, github.com/TencentBAC/ReSeek): the turn after a search
    result opens with `<judge>Yes</judge>` or `<judge>No</judge>` (is the result useful?) before its next call or
    answer, as the official prompt asks. Its `info["judgement"]` is {said, reference}, the reference being whether the
    result holds the gold answer (the official code's substring rule); the `reseek_judge` reward shaper scores it.
    With `forget`, a result judged useless leaves the context of every later turn (`info["forget"]`: the paper's rule
    C_t = τ_{t−1} ⊕ 1[j_t = good]·o_t; the official code keeps it, so `forget=False` is the code's behaviour)."""

    def __init__(self, top_k: int = 2, judge: bool = False, forget: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.top_k, self.judge, self.forget = top_k, judge, forget
        self.tools = {"search": lambda query: " ".join(_search_index().top(query, self.top_k)) or "no passage found"}
        self.unjudged: str | None = None  # the last search result, until the next turn

    def reset(self, row: Row) -> None:
        super().reset(row)
        self.unjudged = None

    def step(self, action: str) -> Step:
        judged: dict[str, Any] = {}
        said = _JUDGE.search(action) if self.unjudged is not None else None
        if said is not None:
            good = said.group(1).lower() in ("yes", "good")
            reference = re.search(rf"\b{re.escape(str(self.row['answer']))}\b", self.unjudged) is not None
            judged = {"judgement": {"said": good, "reference": reference}, "forget": self.forget and not good}
        step = super().step(action)
        result = self.judge and step.observation is not None and not step.info.get("tool_errors")
        self.unjudged = step.observation if result else None
        step.info.update(judged)
        return step

    def answer_reward(self, text: str) -> float:
        return _correct(text, self.row["answer"])


SCORE_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution. Reply with only the number."
)
"""SCoRe's self-correction instruction (Kumar et al. 2024, arXiv:2409.12917, Appendix), with the task's format."""


class SelfCorrectEnv:
    """SCoRe's two attempts (module docstring): turn rewards r(y₁), then r(y₂) − r(y₁)."""

    role = "user"

    def __init__(self) -> None:
        self.first: float | None = None
        self.answer = ""

    def reset(self, row: Row) -> None:
        self.first, self.answer = None, str(row["answer"])

    def step(self, action: str) -> Step:
        r = _correct(action, self.answer)
        if self.first is None:
            self.first = r
            return Step(SCORE_INSTRUCTION, r, False, {"state_key": "correct" if r else "wrong"})
        return Step(None, r - self.first, True, {})


ENVS: dict[str, type] = {"calculator": CalculatorEnv, "python": PythonEnv, "guess_number": GuessNumberEnv,
                         "self_correct": SelfCorrectEnv, "search": SearchEnv}  # fmt: skip


# -- tasks -------------------------------------------------------------------------------------------------------

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana"]
_THINGS = ["apples", "books", "coins", "stamps", "shells", "cards"]


def _split(rows: list[Row], n_heldout: int, seed: int) -> tuple[list[Row], list[Row]]:
    """Distinct rows shuffled with `seed`; the first `n_heldout` are held out."""
    unique = list({repr(r): r for r in rows}.values())
    random.Random(seed).shuffle(unique)
    return unique[n_heldout:], unique[:n_heldout]


CALCULATOR_EXAMPLES = [
    {"role": "user", "content": "Ivo has 512 pens, gets 37 more, then gives away 4. How many pens now?"},
    {"role": "assistant", "content": "<calc>512+37-4</calc>"},
    {"role": "tool", "content": "<result>545</result>"},
    {"role": "assistant", "content": "545"},
    {"role": "user", "content": "Lea packs 23 boxes of 6 cups and has 148 loose cups. How many cups in all?"},
    {"role": "assistant", "content": "<calc>23*6+148</calc>"},
    {"role": "tool", "content": "<result>286</result>"},
    {"role": "assistant", "content": "286"},
]
"""Two worked episodes (names and things that no task row uses) before each calculator question. From the system
prompt alone the default model answers in prose and never calls the tool (0 calls in 64 sampled replies to 16
held-out questions); after one example 8 of 64 replies call it, after these two 41 of 64 (measured 2026-12-02), so
RL has tool calls to reinforce."""


def calculator_rows(n: int = 1200, seed: int = 7) -> list[Row]:
    rng = random.Random(seed)
    system = ("You can use a calculator: write <calc>expression</calc> and stop; the result comes back as "
              "<result>value</result>. When you know the answer, reply with only the number.")  # fmt: skip
    rows = []
    for _ in range(n):
        who, what = rng.choice(_NAMES), rng.choice(_THINGS)
        a, b, c = rng.randint(100, 999), rng.randint(10, 99), rng.randint(2, 9)
        if rng.random() < 0.5:
            text, answer = f"{who} has {a} {what}, gets {b} more, then gives away {c}. How many {what} now?", a + b - c
        else:
            text, answer = (
                f"{who} packs {b} boxes of {c} {what} and has {a} loose {what}. How many {what} in all?",
                (b * c + a),
            )
        prompt = [{"role": "system", "content": system}, *CALCULATOR_EXAMPLES, {"role": "user", "content": text}]
        rows.append({"prompt": prompt, "answer": str(answer)})
    return rows


def python_rows() -> list[Row]:
    system = ("You can run Python: write <python>code</python> and stop; what it prints comes back as "
              "<result>output</result>. When you know the answer, reply with only the number.")  # fmt: skip
    rows = []
    for k in range(2, 40):
        for text, answer in (
            (f"What is the sum of the squares of the integers from 1 to {k}?", sum(i * i for i in range(1, k + 1))),
            (f"What is the sum of the digits of 2 to the power {k * 3}?", sum(map(int, str(2 ** (k * 3))))),
            (f"How many primes are below {k * 25}?", sum(all(p % d for d in range(2, p)) for p in range(2, k * 25))),
        ):
            rows.append({"prompt": [{"role": "system", "content": system}, {"role": "user", "content": text}],
                         "answer": str(answer)})  # fmt: skip
    return rows


_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vas", "zor", "el", "dri", "shan", "qua", "bel", "nor", "it", "pa"]
_FACTS = [
    ("The river {n} in the land of {m} is {v} km long.", "How long is the river {n}, in km?"),
    ("The tower of {n} was built in the year {v} by the people of {m}.", "In which year was the tower of {n} built?"),
    ("The city of {n} has {v} thousand inhabitants and lies east of {m}.", "How many thousand people live in {n}?"),
    ("Mount {n}, the highest peak of {m}, rises {v} metres.", "How high is Mount {n}, in metres?"),
]


@cache
def search_corpus(n: int = 120, seed: int = 5) -> tuple[tuple[str, str, str], ...]:
    """(passage, question, answer) triples of fictional facts (names made of random syllables)."""
    rng = random.Random(seed)
    out, names = [], set()
    while len(out) < n:
        name = "".join(rng.sample(_SYLLABLES, 3)).capitalize()
        if name in names:
            continue
        names.add(name)
        place = "".join(rng.sample(_SYLLABLES, 2)).capitalize()
        fact, question = _FACTS[len(out) % len(_FACTS)]
        value = str(rng.randint(100, 2000))
        out.append((fact.format(n=name, m=place, v=value), question.format(n=name), value))
    return tuple(out)


@cache
def _search_index() -> BM25:
    """The shipped corpus's index, built once for every trajectory's environment."""
    return BM25([doc for doc, _, _ in search_corpus()])


SEARCH_EXAMPLES = [
    {"role": "user", "content": "How long is the river Tobarun, in km?"},
    {"role": "assistant", "content": "<search>river Tobarun</search>"},
    {"role": "tool", "content": "<result>The river Tobarun in the land of Kesh is 873 km long.</result>"},
    {"role": "assistant", "content": "873"},
    {"role": "user", "content": "In which year was the tower of Vimsal built?"},
    {"role": "assistant", "content": "<search>tower of Vimsal</search>"},
    {
        "role": "tool",
        "content": "<result>The tower of Vimsal was built in the year 1402 by the people of Orn.</result>",
    },
    {"role": "assistant", "content": "1402"},
]
"""Two worked episodes before each search question (names no corpus entry can have: its names are made of other
syllables), as the calculator task's: from the system prompt alone the default model answers from memory and never
searches (held-out greedy success 0.00)."""

RESEEK_EXAMPLES = [
    {"role": "user", "content": "How many thousand people live in Ardmoth?"},
    {"role": "assistant", "content": "<search>Ardmoth</search>"},
    {"role": "tool", "content": "<result>Mount Ardmoth, the highest peak of Gund, rises 1210 metres.</result>"},
    {"role": "assistant", "content": "<judge>No</judge><search>city of Ardmoth inhabitants</search>"},
    {
        "role": "tool",
        "content": "<result>The city of Ardmoth has 530 thousand inhabitants and lies east of Gund.</result>",
    },  # fmt: skip
    {"role": "assistant", "content": "<judge>Yes</judge> 530"},
    *SEARCH_EXAMPLES[:3],
    {"role": "assistant", "content": "<judge>Yes</judge> 873"},
]
"""Worked episodes of the `reseek` task: a result judged useless and searched again, and one judged useful."""


def search_rows(instruction: str | None = None, examples: list[dict[str, str]] | None = None) -> list[Row]:
    system = instruction or (
        "You can search a small encyclopedia: write <search>query</search> and stop; the best passages come back as "
        "<result>passages</result>. When you know the answer, reply with only the number."
    )
    shown = SEARCH_EXAMPLES if examples is None else examples
    return [{"prompt": [{"role": "system", "content": system}, *shown, {"role": "user", "content": q}], "answer": a}
            for _, q, a in search_corpus()]  # fmt: skip


RESEEK_INSTRUCTION = (
    "You can search a small encyclopedia: write <search>query</search> and stop; the best passages come back as "
    "<result>passages</result>. Begin your next reply by judging them: <judge>Yes</judge> if they answer the "
    "question, else <judge>No</judge> and search again. When you know the answer, reply with the judgement and only "
    "the number."
)
"""The `reseek` task's system prompt: the official prompt's judge step (search results judged in `<judge>` tags,
Yes or No, before the next search or the answer), with this corpus's format."""


def reseek_rows() -> list[Row]:
    return search_rows(RESEEK_INSTRUCTION, RESEEK_EXAMPLES)


def guess_rows(high: int = 20, n: int = 400, seed: int = 11) -> list[Row]:
    """Each game opens with a worked one, halving the interval (as the calculator and search tasks' examples: from
    the rules alone the default model answers in prose, held-out greedy success 0.00)."""
    rng = random.Random(seed)
    text = (f"I am thinking of a whole number from 1 to {high}. Guess it: reply with only a number, and I will say "
            "whether mine is higher or lower.")  # fmt: skip
    mid = (high + 1) // 2
    shown = [{"role": "user", "content": text}, {"role": "assistant", "content": str(mid)},
             {"role": "user", "content": "Higher."}, {"role": "assistant", "content": str((mid + 1 + high) // 2)},
             {"role": "user", "content": "Lower."}, {"role": "assistant", "content": str(mid + 2)},
             {"role": "user", "content": f"Right, it was {mid + 2}. New game. {text}"}]  # fmt: skip
    return [{"prompt": shown, "secret": rng.randint(1, high), "episode": i} for i in range(n)]


def self_correct_rows() -> list[Row]:
    """The default task's questions (a + b, a and b up to 50), which the default model answers right about a quarter
    of the time at first: room both to correct and to spoil a first answer."""
    return [{"prompt": [{"role": "user", "content": f"What is {a}+{b}? Reply with only the number."}],
             "answer": str(a + b)} for a in range(51) for b in range(51)]  # fmt: skip


def _env_task(name: str, rows: list[Row], n_heldout: int, description: str, **env: Any) -> Task:
    train, heldout = _split(rows, n_heldout, seed=1234)
    return Task(name, train, heldout, env_reward, description, env={"name": name, **env})


def calculator_task() -> Task:
    what = "two-step word problems with a calculator tool (<calc>expr</calc>); correct: the final reply's last number"
    return _env_task("calculator", calculator_rows(), 100, what + " is the answer", max_turns=4)


def python_task() -> Task:
    what = "computations with a sandboxed Python tool (<python>code</python>); correct: the final reply's last number"
    return _env_task("python", python_rows(), 24, what + " is the answer", max_turns=4)


def guess_number_task() -> Task:
    return _env_task("guess_number", guess_rows(), 50, "guess a number from 1 to 20 with higher/lower feedback; "
                     "correct: found within the turns", max_turns=6)  # fmt: skip


def self_correct_task() -> Task:
    return _env_task("self_correct", self_correct_rows(), 100, "a+b, then SCoRe's instruction to correct it; "
                     "correct: the second attempt is right", max_turns=2)  # fmt: skip


def search_task() -> Task:
    what = (
        "questions about fictional facts with a BM25 search tool (<search>query</search>); correct: the final reply's"
    )
    return _env_task("search", search_rows(), 20, what + " last number is the answer", max_turns=4)


def reseek_task() -> Task:
    train, heldout = _split(reseek_rows(), 20, seed=1234)
    what = ("search with ReSeek's judge step (<judge>Yes|No</judge> on each result; a result judged No leaves the "
            "context); correct: the final reply's last number is the answer")  # fmt: skip
    return Task("reseek", train, heldout, env_reward, what, env={"name": "search", "judge": True, "max_turns": 4})


ENV_TASKS = {"calculator": (calculator_task, 48), "python": (python_task, 96), "guess_number": (guess_number_task, 8),
             "self_correct": (self_correct_task, 16), "search": (search_task, 48),
             "reseek": (reseek_task, 48)}  # fmt: skip
"""Each environment task and its per-turn token budget (`rollout.max_new_tokens`, `eval.max_new_tokens`)."""
