"""How each registered component is verified: marks backed by named tests (`verification.tsv`).

A mark is one of `hand` (outputs or gradients equal values worked out by hand or in closed form), `property` (an
invariant, limit or theoretical property, or a learning test with a threshold), `fact:<row>` (a row of ALGORITHMS.md
§13 checked through the registered component) and `peer:<name>` (equal to a reference implementation run in the
test, e.g. TRL's function). Each line of the table names the test that earns the mark; a test in the suite checks
that every named test exists and calls the component, and that every registered id has a line. `unipo list` and
docs/algorithms.md show the marks.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("verification.tsv")
"""Lines `kind<TAB>id<TAB>mark<TAB>tests/...py::test_name`; an id with no verifying test has one line with mark `-`."""

FACT_ROWS = frozenset(
    "U1 U2 U3 U4 U5 U6 U7 U8 U9 U10 V1 V2 V3 V4 V5 V6 V7 V8 A1 A2 A3 K1 K2 K3 W1 W2 W3 S1 S2 P1 P2 P3 P4 P5 P6 P7 "
    "N1 N2 N3 M1 M2 C1 C2 D1".split()
)
"""The rows of ALGORITHMS.md §13."""


@cache
def table() -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """(kind, id) -> its (mark, test node) pairs, in the table's order; () for an id with no verifying test."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for line in TABLE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, name, mark, node = line.split("\t")
        rows = out.setdefault((kind, name), [])
        if mark != "-":
            rows.append((mark, node))
    return {key: tuple(rows) for key, rows in out.items()}


def summary(kind: str, name: str) -> str:
    """The distinct marks of a component, e.g. "hand, property, §13 U1, peer TRL"; "none" without a test."""
    marks = dict.fromkeys(mark for mark, _ in table().get((kind, name), ()))
    if not marks:
        return "none"
    return ", ".join(m.replace("fact:", "§13 ").replace("peer:", "peer ") for m in marks)
