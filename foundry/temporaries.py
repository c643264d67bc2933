"""Things written whole beside where they go: hidden temporaries, folder swaps, and clearing
the temporaries of a writer that was killed.

Publishing writes each thing under a hidden temporary name in the destination folder and
renames it into place when whole (a model folder's copy, models.json, the catalogue page).
A writer killed with SIGKILL cannot remove its temporary, and a static web server or a sync
tool would publish it, so the name says who wrote it:

    .<name>.<kind>-<pid>-<random>@<host>        kind: tmp (being written) or old (being replaced)

A temporary is a dead writer's, and is removed by the next publish to that folder and by
`foundry gc`, when its host is this machine and no process has its pid. One written on
another host (another pod, another machine sharing the folder), or named by an older Foundry
(`.<name>.tmp-<hex>`, `.<name>.<pid>.<hex>.tmp`), cannot be checked: it is removed once
older than a day (gc: its --older-than), far longer than any copy or rename takes. A live
writer's is never touched; a pid reused since only delays the removal to that age rule.
A publish to a bucket names the tags of its uploads the same way (foundry/s3/publish.py).

`replace_folder` puts a finished folder in place of another, which readers never find
missing: a rename when the place is free, else one atomic swap (Linux's renameat2 with
RENAME_EXCHANGE) and the old folder deleted, else (other kernels, filesystems) the old folder
renamed aside first. Concurrent callers replacing one folder never fail; the last one wins.
"""

import ctypes
import errno
import os
import re
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

UNCHECKABLE_AFTER_SECONDS = 86400.0
_TAGGED = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{12}@(?P<host>[A-Za-z0-9._-]+)$")
_UNTAGGED = (
    re.compile(r"^\..+\.(?:tmp|old)-[0-9a-f]{8,12}$"),            # .<id>.tmp-<hex>, .<id>.old-<hex>
    re.compile(r"^\..+\.\d+\.(?:[0-9a-f]{8}\.)?tmp$"),              # .models.json.<pid>.<hex>.tmp, .manifest.json.<pid>.tmp
)


def beside(path: Path, kind: str = "tmp") -> Path:
    """A hidden temporary name for `path`, in its folder, naming this writer."""
    return path.with_name(hidden_name(path.name, kind))


def hidden_name(name: str, kind: str = "tmp") -> str:
    """`.<name>.<kind>-<pid>-<random>@<host>`: the name of this writer's temporary for `name`."""
    return f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}@{_host()}"


@dataclass(frozen=True)
class Temporary:
    path: Path
    size_bytes: int
    modified: float
    dead: bool              # its writer is known to be gone; else only its age tells


def find(folder: Path) -> list[Temporary]:
    """The writers' temporaries directly in `folder`, live ones excluded."""
    found = []
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for path in entries:
        state = writer_state(path.name)
        if state == "live" or state is None:
            continue
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() and not path.is_symlink() else [path]
        stats = [p.lstat() for p in files if p.exists() or p.is_symlink()]
        modified = max((s.st_mtime for s in stats), default=path.lstat().st_mtime)
        found.append(Temporary(path, sum(s.st_size for s in stats), modified, state == "dead"))
    return found


def stale(folder: Path, older_than: float = UNCHECKABLE_AFTER_SECONDS, now: float | None = None) -> list[Temporary]:
    """The temporaries in `folder` that no writer will finish: a dead writer's, or any older than `older_than`."""
    now = time.time() if now is None else now
    return [item for item in find(folder) if item.dead or now - item.modified >= older_than]


def clear(folder: Path) -> list[Path]:
    """Remove the stale temporaries in `folder`; returns what was removed."""
    removed = []
    for item in stale(folder):
        remove(item.path)
        removed.append(item.path)
    return removed


def replace_folder(folder: Path, target: Path) -> None:
    """Make `folder` the folder at `target`, whatever is there (see the module's docstring)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            os.rename(folder, target)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if exchange(folder, target):            # `folder` now holds what was there
            remove(folder)
            return
        aside = beside(target, "old")
        try:
            os.rename(target, aside)            # `target` is missing for the time of one rename
        except FileNotFoundError:
            continue                            # another caller moved it first
        remove(aside)


def exchange(first: Path, second: Path) -> bool:
    """Swap `first` and `second` atomically; False where the platform cannot, untouched then."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def remove(path: Path) -> None:
    """Delete a file, a link or a folder tree; what is already gone is no error."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def is_own(name: str) -> bool:
    """Whether `name` is a temporary of this process (`hidden_name`'s)."""
    tagged = _TAGGED.match(name)
    return tagged is not None and int(tagged["pid"]) == os.getpid() and tagged["host"] == _host()


def writer_state(name: str) -> str | None:
    """"dead", "live" or "unknown" for a writer's temporary; None for any other name."""
    tagged = _TAGGED.match(name)
    if tagged is None:
        return "unknown" if any(pattern.match(name) for pattern in _UNTAGGED) else None
    if tagged["host"] != _host():
        return "unknown"
    return "live" if _alive(int(tagged["pid"])) else "dead"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # someone else's process
        return True
    except OverflowError:
        return False
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"
