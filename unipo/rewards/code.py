"""The `code` reward: run a completion's Python against test cases in the sandbox (`unipo.rewards.sandbox`) and
score the fraction that pass.

Test cases come in the `tests` column, in either of the two forms code datasets use (or as a JSON string of one):
- assertion tests (MBPP / HumanEval style): a list of Python snippets, e.g. `["assert add(1, 2) == 3"]`; each runs
  after the solution in its own process and passes when it reaches its end;
- input/output tests (APPS / CodeContests style): `{"inputs": [...], "outputs": [...]}` or a list of
  `{"input": ..., "output": ...}`; the solution runs with the input on stdin and passes when its stdout equals the
  output (compared line by line, trailing whitespace ignored).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from unipo.rewards import text_of
from unipo.rewards.sandbox import Limits, run_python

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The last fenced code block of a reply (```python … ```), else the whole reply."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def parse_tests(tests: object) -> list[tuple[str, str | None, str | None]]:
    """Test cases as (assertion source, stdin, expected stdout) triples (ValueError when malformed)."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            tests = [tests]  # a single assertion snippet
    if isinstance(tests, dict) and {"inputs", "outputs"} <= tests.keys():
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError("tests: inputs and outputs differ in length")
        return [(None, str(i), str(o)) for i, o in zip(tests["inputs"], tests["outputs"], strict=True)]
    if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        return [(t, None, None) for t in tests]
    if (
        isinstance(tests, list)
        and tests
        and all(isinstance(t, dict) and {"input", "output"} <= t.keys() for t in tests)
    ):
        return [(None, str(t["input"]), str(t["output"])) for t in tests]
    raise ValueError(f"tests must be assertion strings or input/output pairs, got {str(tests)[:80]!r}")


def _same_output(got: str, want: str) -> bool:
    lines = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(want)


def run_test(solution: str, test: tuple[str | None, str | None, str | None], limits: Limits) -> tuple[bool, bool]:
    """(passed, out of time) for `solution` on one test case in the sandbox; out of time: killed at the wall-clock
    limit, or failed after running at least its CPU-time limit."""
    assertion, stdin, want = test
    if assertion is None:
        result = run_python(solution, stdin or "", limits)
        passed = result.ok and _same_output(result.stdout, want or "")
    else:
        token = secrets.token_hex(8)  # printed only after the last assertion: an early exit(0) does not pass
        result = run_python(f"{solution}\n\n{assertion}\nprint({token!r})\n", "", limits)
        passed = result.ok and result.stdout.rstrip().endswith(token)
    return passed, result.timed_out or (not passed and result.wall_s >= limits.cpu_s)


def pass_fraction(solution: str, cases: list[tuple[str | None, str | None, str | None]], limits: Limits) -> float:
    """The share of test `cases` (`parse_tests`) that `solution` passes. After a case runs out of time (`run_test`)
    the rest count as failed without running (an endless loop would run out of time on each)."""
    passed = 0
    for case in cases:
        ok, out_of_time = run_test(solution, case, limits)
        passed += ok
        if out_of_time:
            break
    return passed / len(cases)


def code(
    prompts: Sequence,
    completions: Sequence,
    tests: Sequence,
    truncated: Sequence[bool] | None = None,
    *,
    cpu_s: int = 2,
    wall_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
    **_: object,
) -> list[float | None]:
    """The fraction of its tests each completion's code passes, run in the sandbox; 0 for a truncated reply;
    None (unscored) where a row's `tests` are malformed.

    The code is the reply's last fenced block (else the whole reply). Completions run `workers` at a time
    (default: the CPU count), each test case in its own sandboxed process with `cpu_s` CPU seconds, `wall_s`
    wall-clock seconds and `memory_mb` MiB. Keep `reward.timeout_s` above what a batch can take.
    """
    limits = Limits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb)
    ends = [False] * len(completions) if truncated is None else list(truncated)

    def one(i: int) -> float | None:
        if ends[i]:
            return 0.0
        try:
            cases = parse_tests(tests[i])
        except ValueError:
            return None
        return pass_fraction(extract_code(text_of(completions[i])), cases, limits)

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(len(completions))))
