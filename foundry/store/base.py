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

    def is_committed(self, recipe: str, key: str) -> bool:
        return self.marker(recipe, key) is not None


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
