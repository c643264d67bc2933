"""What every store promises, whatever holds the bytes.

A stage writes its output into a local staging folder, then `commit` publishes it under
the stage's key and writes `_SUCCESS.json` last. Readers trust a key only when that
marker is present and whole, so a crash at any point leaves nothing that looks done.

A marker that is there but cannot be read (not UTF-8, truncated, not a JSON object, no
list of files) is a broken key: never trusted, counted as not committed, named in one line
by `foundry verify` and `artifacts ls`, and removed by `gc` and by the next commit.

`fetch` hands a stage only what its marker promises: every file re-hashed against the
marker's sha256 (or hashed as it downloads); anything else raises DamagedKey, naming the
file and the key and how to repair it, instead of passing damaged bytes on.
"""

import json
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from foundry.errors import UserError
from foundry.hashing import sha256_file

SUCCESS_MARKER = "_SUCCESS.json"
BROKEN_NOTE = " (a broken key: counted as not committed)"
BROKEN_KEY = "broken key"

# Library versions recorded in every marker, when installed, so a result can be traced.
_TRACKED_DISTRIBUTIONS = (
    "foundry", "torch", "transformers", "mergekit", "tokenizers", "safetensors",
    "optimum", "optimum-onnx", "onnx", "onnxruntime", "peft", "accelerate",
)


@dataclass(frozen=True)
class CommittedKey:
    recipe: str
    key: str
    size_bytes: int
    finished: str


@dataclass(frozen=True)
class Leftover:
    """Something a crash or an interrupted run left behind: never trusted, safe to delete."""

    recipe: str
    name: str           # the key, or the staging folder or upload it belongs to
    kind: str           # "uncommitted key", "broken key", "staging folder", "unfinished upload", "abandoned attempt"
    size_bytes: int
    modified: float     # seconds since the epoch, of the newest part
    handle: str         # what `remove_leftover` needs to find it again


class BrokenMarker(Exception):
    """A `_SUCCESS.json` that is there but unreadable; the reason is the message."""


class DamagedKey(UserError):
    """A committed key whose files no longer match its marker: never used, never passed on.

    A UserError (exit 2), because no retry fixes it: the cluster fails the stage's Job at
    once, and a person deletes the key (`foundry verify RECIPE/KEY --repair`) so that the
    next run rebuilds it.
    """

    def __init__(self, recipe: str, key: str, location: str, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(
            f"{location.rstrip('/')}/{problems[0]}{more}: key {recipe}/{key} is damaged and was not used; "
            f"`foundry verify {recipe}/{key} --repair` deletes it so that the next run rebuilds it"
        )
        self.problems = problems


def parse_marker(raw: bytes, name: str = SUCCESS_MARKER) -> dict[str, Any]:
    """The content of a `_SUCCESS.json` (or of another listing of files, `name`, such as a
    manifest.json); BrokenMarker, saying why in a few words, when it is not one."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BrokenMarker(f"{name} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise BrokenMarker(f"{name} is truncated or not JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except RecursionError:
        raise BrokenMarker(f"{name} is nested too deep") from None
    if not isinstance(record, dict):
        raise BrokenMarker(f"{name} holds a JSON {type(record).__name__}, not an object")
    if not isinstance(record.get("files"), list):
        raise BrokenMarker(f"{name} has no list of files")
    return record


def readable_marker(raw: bytes) -> dict[str, Any] | None:
    """`parse_marker`, or None for a broken marker (where the caller falls back, not refuses)."""
    try:
        return parse_marker(raw)
    except BrokenMarker:
        return None


class Store(ABC):
    url: str

    @abstractmethod
    def _marker_bytes(self, recipe: str, key: str) -> bytes | None:
        """The `_SUCCESS.json` of `key` as stored, or None when there is none."""

    def read_marker(self, recipe: str, key: str) -> dict[str, Any] | None:
        """The parsed `_SUCCESS.json` of `key`, None when there is none; BrokenMarker when it
        is there but unreadable."""
        raw = self._marker_bytes(recipe, key)
        return None if raw is None else parse_marker(raw)

    def broken_reason(self, recipe: str, key: str) -> str | None:
        """Why the marker of `key` is broken, or None when it is whole or absent."""
        try:
            self.read_marker(recipe, key)
        except BrokenMarker as broken:
            return str(broken)
        return None

    def marker(self, recipe: str, key: str) -> dict[str, Any] | None:
        """The marker of a committed key, or None: a broken marker counts as none."""
        try:
            return self.read_marker(recipe, key)
        except BrokenMarker:
            return None

    @abstractmethod
    def fetch(self, recipe: str, key: str) -> Path:
        """A local folder holding the committed files of `key`, each checked against its
        marker's sha256; DamagedKey when one is missing, changed or extra."""

    @abstractmethod
    def new_staging(self, recipe: str, key: str) -> Path:
        """An empty local folder for a stage to write its output into."""

    @abstractmethod
    def commit(self, recipe: str, key: str, staging: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Publish `staging` under `key`, the marker last; return the marker written."""

    @abstractmethod
    def discard(self, recipe: str, key: str) -> None:
        """Remove a key, committed or not (used by --force and gc)."""

    @abstractmethod
    def list_committed(self, recipe: str | None = None) -> Iterator[CommittedKey]:
        """Committed keys, of one recipe or of all."""

    @abstractmethod
    def location(self, recipe: str, key: str) -> str:
        """Where a key lives, for people to read."""

    def verify(self, recipe: str, key: str) -> list[str]:
        """Re-hash a committed key's files where they are stored; one line per problem."""
        try:
            record = self.read_marker(recipe, key)
        except BrokenMarker as broken:
            return [f"{broken}{BROKEN_NOTE}"]
        if record is None:
            return [f"{SUCCESS_MARKER}: missing (the key is not committed)"]
        return self._check_files(recipe, key, record)

    @abstractmethod
    def _check_files(self, recipe: str, key: str, record: dict[str, Any]) -> list[str]:
        """`verify`'s work, where the files are stored (manifest.verify_source's rules)."""

    @abstractmethod
    def leftovers(self) -> Iterator[Leftover]:
        """What crashes left: keys without a marker, staging folders, unfinished uploads."""

    @abstractmethod
    def remove_leftover(self, leftover: Leftover) -> None:
        """Delete one thing `leftovers` listed."""

    @abstractmethod
    def put_document(self, path: str, document: dict[str, Any]) -> None:
        """Write a small JSON document at `path` ('/'-separated, relative to the store), whole.

        For records kept beside the artifacts, such as a run's status (`_runs/...`, a name no
        recipe can take): a reader sees the previous document or the new one, never a mix.
        """

    @abstractmethod
    def get_document(self, path: str) -> dict[str, Any] | None:
        """The document at `path`, or None when there is none."""

    @abstractmethod
    def list_documents(self, prefix: str) -> list[str]:
        """The paths of the documents under the folder `prefix`, sorted."""

    def is_committed(self, recipe: str, key: str) -> bool:
        return self.marker(recipe, key) is not None

    def broken_keys(self, recipe: str | None = None) -> Iterator[tuple[str, str, str]]:
        """(recipe, key, reason) of each key whose marker is broken; none unless a store can
        tell cheaply (the local store reads every marker to list keys anyway)."""
        return iter(())


def is_recipe_folder(name: str) -> bool:
    """Recipe names start with a letter or digit; other top-level names (`_runs`, dot-folders)
    hold the store's own records, never stage keys."""
    return name[:1].isalnum()


def document_parts(path: str) -> list[str]:
    """A document path's parts, refusing any that would leave the store."""
    parts = path.strip("/").split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a relative document path: {path!r}")
    return parts


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_record(staging: Path, *, key: str, stage: str, recipe: str, started: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The content of `_SUCCESS.json`: every file with its size and sha256, timings, versions."""
    files = [
        {"path": path.relative_to(staging).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.name != SUCCESS_MARKER
    ]
    finished = time.time()
    return {
        "key": key,
        "stage": stage,
        "recipe": recipe,
        "files": files,
        "size_bytes": sum(entry["size"] for entry in files),
        "started": _iso(started),
        "finished": _iso(finished),
        "seconds": round(finished - started, 3),
        "versions": library_versions(),
        **extra,
    }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
