"""Run one heavy step of a stage in a process of its own, and say how much memory it took.

A step that loads a PyTorch model (the export, the reference logits) only gives its memory
back to the system by exiting: PyTorch's and Python's allocators keep what they freed. So
each such step runs in a fresh process, and the stage's peak is the largest step's, not
their sum. (What ONNX Runtime and numpy hold is returned when freed, with
`give_back_freed_memory`'s help, so the variants need no process of their own.)

Each step reports the kernel's peak resident set (VmHWM) of the process that ran it. A
step killed by the kernel (out of memory, as a too-small pod limit does it) is reported
by name with the memory the process was allowed, instead of a bare "Killed".
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry.errors import UserError

GIB = 1024**3
# How a step says that the input, not the step, is wrong: this prefix on its last line of
# stderr and exit code 2 (`user_error_exit`); the stage then raises the line as a UserError.
USER_ERROR_PREFIX = "foundry user error: "


@dataclass
class StepLog:
    """The peak RSS of each step of one stage run that ran in a process of its own."""

    stage: str
    peaks: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, peak_bytes: int) -> None:
        self.peaks[name] = max(peak_bytes, self.peaks.get(name, 0))


class StepKilled(UserError):
    """A step died of a signal; most often the kernel's out-of-memory killer."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, the kernel's VmHWM (getrusage counts KiB
    on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def memory_allowed() -> str:
    """What this process may use: the container's cgroup limit, else the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:
            return f"{int(value) / GIB:.1f} GiB (the container's memory limit)"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{total / GIB:.1f} GiB (the machine's memory)"


def run_step(log: StepLog, name: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh Python process; its result, once that process has exited.

    `function` must be a module-level function: it travels by name, its arguments and
    result by pickle, through files in a private temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="foundry-step-") as folder:
        call, result = Path(folder) / "call.pickle", Path(folder) / "result.pickle"
        call.write_bytes(pickle.dumps((function, args)))
        run_command(log, name, [sys.executable, "-m", "jobs.steps", str(call), str(result)])
        return pickle.loads(result.read_bytes())


# The step runs under a small parent of its own, which reports the step's exit code and peak.
# A child's peak (ru_maxrss) starts from its parent's at the fork: a step started by the
# stage process itself would be charged whatever that process had held (measured: 1.45 GB
# for a step that held 0.3 GB, started from a 1.4 GB process).
_PROBE = (
    "import resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run_command(log: StepLog, name: str, command: list[str], *, env: dict[str, str] | None = None) -> None:
    """A step that is a program of its own, waited for so that its own peak is known."""
    with tempfile.TemporaryFile("w+") as stderr:
        probe = subprocess.run([sys.executable, "-c", _PROBE, *command], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        stderr.seek(0)
        errors = stderr.read()
    reported = probe.stdout.split()
    if probe.returncode != 0 or len(reported) != 2:
        raise RuntimeError(f"{log.stage}: step {name!r} could not be run (exit {probe.returncode}):\n{errors.strip()[-2000:]}")
    code, peak_kib = int(reported[0]), int(reported[1])
    log.record(name, peak_kib * 1024)
    if code < 0:
        raise StepKilled(
            f"{log.stage}: step {name!r} was killed by signal {-code} before it finished (SIGKILL: most often the kernel's "
            f"out-of-memory killer); it had {memory_allowed()}: give the {log.stage} stage more memory (resources.{log.stage}.memory)"
        )
    last_line = errors.strip().rpartition("\n")[2]
    if code == 2 and last_line.startswith(USER_ERROR_PREFIX):
        raise UserError(last_line.removeprefix(USER_ERROR_PREFIX))
    if code != 0:
        tail = "\n".join(errors.strip().splitlines()[-15:])
        raise RuntimeError(f"{log.stage}: step {name!r} failed (exit {code}):\n{tail}")


def give_back_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc keeps freed chunks below its
    mmap threshold, which grows to 32 MiB after large frees); a no-op without glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def user_error_exit() -> Iterator[None]:
    """In a step's process: a UserError ends it with one line the stage raises again (run_command)."""
    try:
        yield
    except UserError as error:
        print(f"{USER_ERROR_PREFIX}{error}", file=sys.stderr)
        sys.exit(2)


def _child(call: Path, result: Path) -> None:
    function, args = pickle.loads(call.read_bytes())
    with user_error_exit():
        result.write_bytes(pickle.dumps(function(*args)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))

