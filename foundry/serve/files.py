"""Static files the way browsers and transformers.js fetch them.

- a URL path maps to a file under one of the site's mounts, or to nothing: no `..`, no hidden
  names (the catalogue's lock file, a publish in progress), nothing outside the folder even
  through a symbolic link;
- the content type from the name, including the ONNX external data chunks
  (`model_q4.onnx_data_3`) and `.wasm`, which browsers compile only as application/wasm;
- one byte range (`Range: bytes=a-b`, `a-`, `-n`), as ONNX Runtime Web and the hub client ask;
  several ranges get the whole file (RFC 9110 lets a server ignore Range), an unsatisfiable
  one 416;
- validators: an ETag from size and modification time, Last-Modified, If-None-Match,
  If-Modified-Since and If-Range;
- integrity: a file a manifest lists is re-hashed before it is first sent, and again whenever
  it changes (inode, size or modification time); one that does not match is refused.
"""

import email.utils
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from foundry.hashing import sha256_file
from foundry.manifest import MANIFEST_NAME

TEXT = "; charset=utf-8"
CONTENT_TYPES = {
    ".html": "text/html" + TEXT,
    ".js": "text/javascript" + TEXT,
    ".mjs": "text/javascript" + TEXT,
    ".css": "text/css" + TEXT,
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".txt": "text/plain" + TEXT,
    ".md": "text/markdown" + TEXT,
    ".jinja": "text/plain" + TEXT,
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
EXTERNAL_DATA = re.compile(r"\.onnx_data(_\d+)?$")
UNSATISFIABLE = (-1, -1)
RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")        # one range; a list of them does not match


def content_type(name: str) -> str:
    if EXTERNAL_DATA.search(name):
        return "application/octet-stream"
    return CONTENT_TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")


def resolve(mounts: dict[str, Path], url_path: str) -> Path | None:
    """The file `url_path` (still percent-encoded) names under the longest matching mount, or None."""
    path = urllib.parse.unquote(url_path)
    if "\x00" in path or "\\" in path:
        return None
    for prefix in sorted(mounts, key=len, reverse=True):
        if path.startswith(prefix):
            found = _inside(mounts[prefix], path[len(prefix):])
            if found is not None:
                return found
    return None


def _inside(folder: Path, relative: str) -> Path | None:
    parts = [part for part in relative.split("/") if part]
    if any(part in (".", "..") or part.startswith(".") for part in parts):
        return None
    candidate = folder.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(folder.resolve()):
        return None
    return real


@dataclass(frozen=True)
class Validators:
    etag: str
    last_modified: str
    mtime: int

    @classmethod
    def of(cls, stat: os.stat_result) -> "Validators":
        return cls(f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"', email.utils.formatdate(stat.st_mtime, usegmt=True), int(stat.st_mtime))

    def not_modified(self, if_none_match: str | None, if_modified_since: str | None) -> bool:
        """Whether the client's copy is current (a 304), by RFC 9110 §13.2.2's order."""
        if if_none_match is not None:
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return "*" in tags or self.etag in tags
        if if_modified_since is not None:
            try:
                since = email.utils.parsedate_to_datetime(if_modified_since).timestamp()
            except (TypeError, ValueError):
                return False
            return self.mtime <= since
        return False

    def range_applies(self, if_range: str | None) -> bool:
        """If-Range: the range holds only for the current version (strong ETag or exact date)."""
        return if_range is None or if_range.strip() in (self.etag, self.last_modified)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for one satisfiable range; UNSATISFIABLE; None to send it all."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    match = RANGE_SPEC.fullmatch(spec.strip())
    if unit.strip().lower() != "bytes" or match is None or not any(match.groups()):
        return None
    first_text, last_text = match.groups()
    if not first_text:                                  # the last N bytes
        length = int(last_text)
        return (max(0, size - length), size - 1) if length and size else UNSATISFIABLE
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None                                     # invalid: ignored
    if first >= size:
        return UNSATISFIABLE
    return first, min(int(last_text), size - 1) if last_text else size - 1


class Integrity:
    """The manifests' word on each file they list, checked before the file is first sent.

    A verdict is kept per file version (inode, size, modification time), so a file is hashed
    once however many requests (and byte ranges) ask for it; a changed file is hashed again.
    """

    def __init__(self, recorded: dict[Path, tuple[int, str]]) -> None:
        self.recorded = recorded
        self._verdicts: dict[Path, tuple[tuple[int, int, int], str | None]] = {}
        self._lock = threading.Lock()

    def problem(self, path: Path, stat: os.stat_result) -> str | None:
        """Why `path` (resolved, as `resolve` returns it) must not be sent; None when it may."""
        expected = self.recorded.get(path)
        if expected is None:
            return None
        size, digest = expected
        if stat.st_size != size:
            return f"size {stat.st_size} bytes, {MANIFEST_NAME} says {size} (truncated or replaced)"
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._verdicts.get(path)
        if known is not None and known[0] == version:
            return known[1]
        verdict = None if sha256_file(path) == digest else f"sha256 differs from {MANIFEST_NAME} (corrupted)"
        with self._lock:
            self._verdicts[path] = (version, verdict)
        return verdict
