"""Folder swaps that readers never see half done, shared by the store and publish.

`exchange` swaps two paths in one step (Linux's renameat2 with RENAME_EXCHANGE), so a
folder being replaced is never missing, not even for the time of a rename; where the
kernel, libc or filesystem lacks it, callers fall back to two renames.
"""

import ctypes
import errno
import os
import shutil
import sys
from pathlib import Path


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
