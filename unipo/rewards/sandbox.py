"""Running untrusted code (a model's completion) in a sandboxed subprocess: the executor of the `code` reward.

Linux, no container, no daemon. Every run gets a fresh scratch directory as its working directory (removed
afterwards), an empty environment, only the given text on stdin, and these layers, each probed once and the level
logged (`isolation()`):

1. **Resource limits**, set in the child before the code starts: CPU seconds, address space, file size (which also
   caps stdout and stderr: they are written to files), open files, processes, no core dumps. A wall-clock limit
   kills the whole run from outside.
2. **An unprivileged user** when the trainer runs as root (as CI does): the child drops to `nobody` (uid 65534), for
   which `RLIMIT_NPROC` holds (root ignores it, so a fork bomb would otherwise be unbounded) and the trainer's
   private files are unreadable. The limit counts every process of that user, so concurrent sandboxes share it.
3. **Landlock** (Linux >= 5.13, found through its syscalls): the code may read and execute only beneath the
   interpreter's and the system's library directories, write only in its scratch directory, and (ABI >= 4)
   neither bind nor connect TCP sockets; the run directory, the home directory and the rest of the file system
   are out of reach.
4. **Namespaces** (`unshare --net --pid --fork --kill-child`, with `--user` when not root): no network but a
   loopback that is down, and a PID namespace of its own, so every process the code started dies with the run.

What is not covered (say so to anyone who runs code they do not trust on a shared machine): system calls are not
filtered (no seccomp), and a layer the kernel refuses is skipped (logged once) rather than failing the run.
The harness (`run_python`) checks a run by its exit status and output; a program that exits 0 early (`sys.exit`)
does not pass an assertion test, because the test must print a per-run token after its last assertion.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger("unipo")

NOBODY = 65534

# Run in the child, in the sandbox's interpreter (`-I -S -c`): limits, user, Landlock, then exec the program.
_WRAPPER = r"""
import ctypes, json, os, resource, struct, sys
cfg = json.loads(sys.argv[1])
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if cfg["uid"] is not None:
    os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
if cfg["landlock"]:
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.syscall
    call.restype = ctypes.c_long
    abi = call(444, None, 0, 1)
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    attr = struct.pack("QQQ", fs, 3, 3) if abi >= 6 else struct.pack("QQ", fs, 3) if abi >= 4 else struct.pack("Q", fs)
    ruleset = call(444, ctypes.c_char_p(attr), len(attr), 0)
    if ruleset < 0:
        sys.exit(125)
    file_rights = 1 | 2 | 4 | (1 << 14) | (1 << 15)
    for path, rights in [(p, 1 | 4 | 8) for p in cfg["read"]] + [(p, fs) for p in cfg["write"]]:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        mask = rights & fs if os.path.isdir(path) else rights & fs & file_rights
        if call(445, ruleset, 1, ctypes.c_char_p(struct.pack("=Qi", mask, fd)), 0) != 0:
            sys.exit(125)
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or call(446, ruleset, 0) != 0:
        sys.exit(125)
os.execve(cfg["python"], [cfg["python"], "-I", "-S", *cfg["argv"]], cfg["env"])
"""
SANDBOX_FAILED = 125
"""Exit status of a run whose sandbox could not be set up (the code never ran)."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits: CPU seconds, wall-clock seconds, address space (MiB), bytes of output (stdout and stderr
    each, and any file written), processes (of the sandbox user, all runs together) and open files."""

    cpu_s: int = 2
    wall_s: float = 5.0
    memory_mb: int = 512
    output_bytes: int = 1 << 20
    processes: int = 64
    open_files: int = 64


@dataclass(frozen=True)
class Result:
    """How a run ended: exit status (negative: killed by that signal), output (capped), and whether the
    wall-clock limit killed it."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _world_usable(path: str) -> bool:
    """Whether user `nobody` can run `path`: every directory on the way searchable by others, the file readable
    and executable by others."""
    p = Path(path).resolve()
    if not p.is_file() or p.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
        return False
    return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)


_PROBE = threading.Lock()


def isolation() -> dict[str, object]:
    """The layers this machine allows (probed once, logged): interpreter, user, Landlock ABI, namespace command."""
    with _PROBE:  # the code reward calls this from several threads at once
        return _probe()


@cache
def _probe() -> dict[str, object]:
    root = os.geteuid() == 0
    python = str(Path(sys.executable).resolve())
    if root and not _world_usable(python):
        python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if _world_usable(p)), python)
    uid = NOBODY if root and _world_usable(python) else None
    unshare = shutil.which("unshare")
    ns = [unshare, *([] if root else ["--user"]), "--net", "--pid", "--fork", "--kill-child"] if unshare else []
    if ns and subprocess.run([*ns, "true"], capture_output=True, timeout=10).returncode != 0:
        ns = []
    level = {"python": python, "uid": uid, "landlock": _landlock_abi(), "namespaces": ns}
    probe = _run(["-c", "print(1)"], "", Limits(), level)
    if probe.returncode == SANDBOX_FAILED and level["landlock"]:
        level["landlock"] = 0
    log.info(
        "code sandbox: %s, limits on CPU/memory/output/processes, %s, %s, %s",
        python,
        "user nobody" if uid is not None else ("same user (root: process limit NOT enforced)" if root else "same user"),
        f"Landlock ABI {level['landlock']}" if level["landlock"] else "no Landlock (files outside scratch readable)",
        "network and PID namespaces" if ns else "no namespaces (network reachable)",
    )
    return level


def _landlock_abi() -> int:
    if sys.platform != "linux":
        return 0
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, 0, 1)))


def run_python(source: str, stdin: str = "", limits: Limits | None = None) -> Result:
    """Run Python `source` as `main.py` in a fresh scratch directory inside the sandbox (module docstring)."""
    return _run(["main.py"], stdin, limits or Limits(), isolation(), source)


def _run(argv: list[str], stdin: str, limits: Limits, level: dict, source: str | None = None) -> Result:
    scratch = tempfile.mkdtemp(prefix="unipo-sandbox-")
    outputs = tempfile.mkdtemp(prefix="unipo-sandbox-out-")
    try:
        if source is not None:
            Path(scratch, "main.py").write_text(source)
        if level["uid"] is not None:
            os.chown(scratch, level["uid"], level["uid"])
            for f in Path(scratch).iterdir():
                os.chown(f, level["uid"], level["uid"])
        python = str(level["python"])
        prefixes = {sys.prefix, sys.base_prefix, str(Path(python).parent.parent)}
        cfg = {
            "rlimits": {
                "RLIMIT_CPU": limits.cpu_s,
                "RLIMIT_AS": limits.memory_mb << 20,
                "RLIMIT_FSIZE": limits.output_bytes,
                "RLIMIT_NOFILE": limits.open_files,
                "RLIMIT_NPROC": limits.processes,
                "RLIMIT_CORE": 0,
            },
            "uid": level["uid"],
            "landlock": bool(level["landlock"]),
            "read": sorted(prefixes | {"/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/dev/urandom"}),
            "write": [scratch, "/dev/null"],
            "python": python,
            "argv": argv,
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": scratch, "PYTHONHASHSEED": "0"},
        }
        cmd = [*level["namespaces"], python, "-I", "-S", "-c", _WRAPPER, json.dumps(cfg)]
        with open(Path(outputs, "out"), "wb") as out, open(Path(outputs, "err"), "wb") as err:
            return _wait(cmd, stdin, limits, scratch, out, err, outputs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(outputs, ignore_errors=True)


def _wait(cmd: list[str], stdin: str, limits: Limits, cwd: str, out, err, outputs: str) -> Result:  # noqa: ANN001
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env={},
                            start_new_session=True, close_fds=True)  # fmt: skip
    timed_out = False
    try:
        proc.communicate(stdin.encode(), timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    except (BrokenPipeError, OSError):  # the program closed stdin or died while it was written
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group; with namespaces, the PID namespace goes too
        except ProcessLookupError:
            pass
        proc.wait()
    read = lambda name: Path(outputs, name).read_bytes()[: limits.output_bytes].decode(errors="replace")  # noqa: E731
    return Result(proc.returncode, read("out"), read("err"), timed_out, time.monotonic() - t0)
