"""The `code` reward and its sandbox: pass fractions on real solutions, and hostile code that scores 0 and leaves the
trainer unharmed (fork bomb, endless loop, memory bomb, reading files outside the scratch directory, network)."""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from unipo.rewards import BUILTIN
from unipo.rewards.code import code, extract_code, parse_tests
from unipo.rewards.sandbox import NOBODY, Limits, isolation, run_python
from unipo.rewards.scorer import RewardScorer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is built on Linux facilities")

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"]
FAST = {"wall_s": 3.0}


def test_pass_fraction_of_real_solutions():
    replies = [
        "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.",  # all 3
        "def add(a, b):\n    return 4",  # only add(2, 2)
        "def add(a, b):\n    return a - b",  # only add(-1, 1)? no: -1 - 1 = -2; none pass
        "def add(a, b) return a + b",  # syntax error
        "```python\nimport sys\nsys.exit(0)\n```",  # exits 0 before the assertions: not a pass
    ]
    got = code([None] * 5, replies, [ADD_TESTS] * 5, **FAST)
    assert got == [1.0, 1 / 3, 0.0, 0.0, 0.0]


def test_stdin_stdout_tests_and_json_strings():
    tests = '{"inputs": ["1 2\\n", "5 7\\n"], "outputs": ["3", "12\\n"]}'
    replies = ["a, b = map(int, input().split())\nprint(a + b)  ", "print(3)", "print('3 ')\nprint()"]
    assert code([None] * 3, replies, [tests] * 3, **FAST) == [1.0, 0.5, 0.5]
    pairs = [{"input": "4\n", "output": "16"}, {"input": "3\n", "output": "9"}]
    assert code([None], ["n = int(input())\nprint(n * n)"], [pairs], **FAST) == [1.0]


def test_truncated_replies_score_0_and_malformed_tests_are_unscored():
    good = "def add(a, b):\n    return a + b"
    got = code([None] * 3, [good] * 3, [ADD_TESTS, ADD_TESTS, {"inputs": [1]}], truncated=[True, False, False])
    assert got == [0.0, 1.0, None]


def test_extract_code_and_parse_tests():
    assert extract_code("a\n```py\nx = 1\n```\nb\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("x = 1") == "x = 1"
    assert parse_tests("assert f() == 1") == [("assert f() == 1", None, None)]
    assert parse_tests('["assert 1", "assert 2"]') == [("assert 1", None, None), ("assert 2", None, None)]
    with pytest.raises(ValueError, match="differ in length"):
        parse_tests({"inputs": [1, 2], "outputs": [1]})
    with pytest.raises(ValueError, match="assertion strings or input/output pairs"):
        parse_tests([1, 2])
    assert BUILTIN["code"] is code


# -- hostile code ---------------------------------------------------------------------------------------------------


def _sandbox_processes() -> int:
    """Live processes of the sandbox user (none may outlive a run)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1]
        except (OSError, StopIteration):
            continue
        count += int(uid) == NOBODY
    return count


def test_fork_bomb_scores_0_and_leaves_nothing_behind():
    bomb = "import os\nwhile True:\n    os.fork()"
    result = run_python(bomb, "", Limits(wall_s=5.0))
    assert not result.ok
    if isolation()["uid"] is not None or isolation()["namespaces"]:
        assert _sandbox_processes() == 0
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).stdout == b"1\n"  # can still fork
    assert code([None], [bomb + "\ndef add(a, b):\n    return a + b"], [ADD_TESTS], **FAST) == [0.0]


def test_endless_loop_and_sleep_are_stopped():
    spin = run_python("while True:\n    pass", "", Limits(cpu_s=1, wall_s=10.0))
    assert not spin.ok and not spin.timed_out  # the CPU limit stopped it first
    sleep = run_python("import time\ntime.sleep(60)", "", Limits(wall_s=1.0))
    assert sleep.timed_out and not sleep.ok
    # the first test that runs out of time fails the rest without running them
    assert code([None], ["import time\ntime.sleep(60)"], [ADD_TESTS], wall_s=1.0) == [0.0]


def test_memory_bomb_scores_0():
    result = run_python("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", "", Limits(memory_mb=256))
    assert not result.ok and "allocated" not in result.stdout and "MemoryError" in result.stderr


def test_output_is_capped():
    result = run_python("while True:\n    print('x' * 1000)", "", Limits(output_bytes=10_000))
    assert not result.ok and len(result.stdout) <= 10_000


@pytest.mark.skipif(not isolation()["landlock"], reason="files outside scratch are kept out by Landlock")
def test_files_outside_scratch_are_out_of_reach():
    run_dir = Path(tempfile.mkdtemp(prefix="unipo-run-"))
    try:
        run_dir.chmod(0o755)  # readable by everyone: only the sandbox stands in the way
        secret = run_dir / "secret.txt"
        secret.write_text("hunter2")
        secret.chmod(0o644)
        thief = f"print(open({str(secret)!r}).read())"
        control = subprocess.run([sys.executable, "-c", thief], capture_output=True, text=True)
        assert control.stdout.strip() == "hunter2"  # outside the sandbox the program reads it
        result = run_python(thief)
        assert not result.ok and "hunter2" not in result.stdout and "PermissionError" in result.stderr
        writer = run_python(f"open({str(run_dir / 'new.txt')!r}, 'w').write('x')")
        assert not writer.ok and not (run_dir / "new.txt").exists()
        scratch = run_python("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())")
        assert scratch.ok and scratch.stdout.strip() == "ok"  # its own scratch directory is writable
    finally:
        for f in run_dir.iterdir():
            f.unlink()
        run_dir.rmdir()


@pytest.mark.skipif(
    not (isolation()["namespaces"] or isolation()["landlock"] >= 4), reason="needs a network namespace or Landlock"
)
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    thief = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    try:
        control = subprocess.run([sys.executable, "-c", thief], capture_output=True, text=True, timeout=10)
        assert control.stdout.strip() == "connected"
        result = run_python(thief)
        assert not result.ok and "connected" not in result.stdout
    finally:
        server.close()


def test_environment_is_empty_and_user_unprivileged():
    result = run_python("import os\nprint(sorted(os.environ))\nprint(os.getuid())")
    assert result.ok
    names, uid = result.stdout.splitlines()
    assert "PYTHONPATH" not in names and "HOME" in names
    if os.geteuid() == 0 and isolation()["uid"] is not None:
        assert int(uid) == NOBODY


def test_a_hostile_completion_does_not_stop_scoring():
    scorer = RewardScorer([code], [1.0], timeout_s=30.0)
    good = "def add(a, b):\n    return a + b"
    bomb = "import os\nwhile True:\n    os.fork()"
    rows = [{"prompt": "write add", "tests": ADD_TESTS}]
    got = scorer(rows, [0, 0, 0], [bomb, good, "while True: pass"])[:, 0]
    assert got.tolist() == [0.0, 1.0, 0.0]
