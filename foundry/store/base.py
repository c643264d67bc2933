"""What every store promises, whatever holds the bytes.

A stage writes its output into a local staging folder, then `commit` publishes it under
the stage's key and writes `_SUCCESS.json` last. Readers trust a key only when that
marker is present, so a crash at any point leaves nothing that looks done.
"""

import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from foundry.hashing import sha256_file

SUCCESS_MARKER = "_SUCCESS.json"

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
    kind: str           # "uncommitted key", "staging folder" or "unfinished upload"
    size_bytes: int
    modified: float     # seconds since the epoch, of the newest part
    handle: str         # what `remove_leftover` needs to find it again


class Store(ABC):
    url: str

    @abstractmethod
    def marker(self, recipe: str, key: str) -> dict[str, Any] | None:
        """The parsed `_SUCCESS.json` of a committed key, or None."""

    @abstractmethod
    def fetch(self, recipe: str, key: str) -> Path:
        """A local folder holding the committed files of `key`."""

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

    @abstractmethod
    def verify(self, recipe: str, key: str) -> list[str]:
        """Re-hash a committed key's files where they are stored; one line per problem."""

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
