"""The verification marks of `unipo list` (unipo/algos/verification.tsv) are backed by tests that exist and call the
component they vouch for, and every registered id has its line."""

import ast
import re
from functools import cache
from pathlib import Path

from unipo import algos
from unipo.algos import verification
from unipo.algos.registry import aliases_of

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"^(hand|property|fact:([A-Z][0-9]+)|peer:[A-Za-z0-9_.\- ]+)$")


@cache
def _module(path: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A test file's test functions (name -> source, decorators included) and its module-level bindings
    (name, source of the statement that binds it)."""
    text = (ROOT / path).read_text()
    tree = ast.parse(text)
    tests = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            decorators = "".join(ast.get_source_segment(text, d) or "" for d in node.decorator_list)
            tests[node.name] = decorators + (ast.get_source_segment(text, node) or "")
    bindings = []
    for stmt in tree.body:
        names = []
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(stmt, ast.ImportFrom):
            names = [a.asname or a.name for a in stmt.names]
        elif isinstance(stmt, ast.FunctionDef) and not stmt.name.startswith("test"):
            names = [stmt.name]
        bindings += [(name, ast.get_source_segment(text, stmt) or "") for name in names]
    return tests, bindings


def _mentions(source: str, words: set[str]) -> bool:
    """Whether `source` has one of `words` as a whole word (so `dpo` is not found in `dpop` or `f_dpo`)."""
    return any(re.search(rf"(?<![\w+]){re.escape(w)}(?![\w+])", source) for w in words)


def _names_for(path: str, kind: str, name: str) -> set[str]:
    """The words by which a test in `path` may call the component: its id, aliases and function name, and the
    module-level names (aliases, tables, helpers) whose definition names one of those."""
    direct = {name, algos.entry(kind, name).fn.__name__, *aliases_of(kind, name)}
    _, bindings = _module(path)
    return direct | {bound for bound, source in bindings if _mentions(source, direct)}


def test_every_registered_component_has_its_line_and_nothing_else_does():
    registered = {(e.kind, e.name) for e in algos.entries()}
    assert set(verification.table()) == registered


def test_every_mark_names_a_test_that_calls_its_component():
    bad = []
    for (kind, name), rows in verification.table().items():
        for mark, node in rows:
            match = MARK.match(mark)
            path, _, test = node.partition("::")
            if not match or (match.group(2) and match.group(2) not in verification.FACT_ROWS):
                bad.append(f"{kind}/{name}: mark {mark!r}")
            elif not (ROOT / path).is_file() or test not in _module(path)[0]:
                bad.append(f"{kind}/{name}: no test {node}")
            elif not _mentions(_module(path)[0][test], _names_for(path, kind, name)):
                bad.append(f"{kind}/{name}: {node} does not call it")
    assert not bad, "\n".join(bad)


def test_summary_names_each_mark_once_with_its_reader_facing_label():
    assert verification.summary("preference", "alphapo").split(", ")[-1] == "peer TRL"  # TRL's cpo_loss, run in a test
    assert verification.summary("classic", "trpo") == "property, §13 C2"
    assert verification.summary("policy_loss", "no_such_id") == "none"
    for kind, name in verification.table():
        marks = verification.summary(kind, name).split(", ")
        assert len(marks) == len(set(marks))
