"""Reading a small file a user points at (a recipe, a model's config.json), safely.

The path may be anything: a symlink loop, `/dev/zero`, a pipe that never ends, a folder,
a file of gigabytes. A device, pipe or folder is refused before it is opened, and at most
`limit` bytes are read, so a bad path costs a stat and a bounded read, never a hang.
"""

import stat
from pathlib import Path


class UnreadableFile(Exception):
    """The path is not a small regular file; the message says why, in a few words."""


def read_small(path: Path, limit: int) -> bytes:
    """The file's bytes; FileNotFoundError when nothing is there, UnreadableFile otherwise."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{'a folder' if stat.S_ISDIR(mode) else 'a device, pipe or socket'}, not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise UnreadableFile(f"cannot be read ({error.strerror or error})") from None
    except ValueError:  # a NUL byte in the path
        raise UnreadableFile("not a usable path (it contains a NUL character)") from None
    if len(data) > limit:
        raise UnreadableFile(f"larger than {limit // 1024} KiB")
    return data
