"""A store in a local folder: `<root>/<recipe>/<stage>-<hash>/`.

Staging folders live inside the root (`<root>/<recipe>/.staging/<random>/<key>/`, one per
attempt) so that committing is a rename on one filesystem, never a copy. The marker is
written into the staging folder, last, and the whole folder is renamed into place: a key
appears with its files and its marker at once. A key already there (a forced re-run, a
crashed attempt's leftover, or a run that committed the same key a moment before) is
swapped out in one step (renameat2 RENAME_EXCHANGE, foundry/temporaries.py) and deleted,
so concurrent commits of one key never collide and a reader never finds it missing.
"""

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foundry import temporaries
from foundry.manifest import verify_files
from foundry.store.base import BROKEN_KEY, SUCCESS_MARKER, CommittedKey, DamagedKey, Leftover, Store, document_parts, is_recipe_folder

_STAGING = ".staging"


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = f"file://{self.root}"

    def _key_dir(self, recipe: str, key: str) -> Path:
        return self.root / recipe / key

    def location(self, recipe: str, key: str) -> str:
        return str(self._key_dir(recipe, key))

    def _marker_bytes(self, recipe: str, key: str) -> bytes | None:
        try:
            return (self._key_dir(recipe, key) / SUCCESS_MARKER).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            return b""          # not a marker: broken

    def fetch(self, recipe: str, key: str) -> Path:
        """The committed folder itself, once every file is re-hashed against the marker: one
        read of the inputs before the stage's own (which then mostly finds them in the page cache)."""
        record = self.marker(recipe, key)
        if record is None:
            raise FileNotFoundError(f"{self.location(recipe, key)} is not committed")
        problems = self._check_files(recipe, key, record)
        if problems:
            raise DamagedKey(recipe, key, self.location(recipe, key), problems)
        return self._key_dir(recipe, key)

    def new_staging(self, recipe: str, key: str) -> Path:
        # Named like the key itself: tools that record their output folder's name (mergekit's
        # model card, for one) then write the same bytes whichever attempt commits.
        staging = self.root / recipe / _STAGING / uuid.uuid4().hex[:8] / key
        staging.mkdir(parents=True)
        return staging

    def commit(self, recipe: str, key: str, staging: Path, record: dict[str, Any]) -> dict[str, Any]:
        _write_json(staging / SUCCESS_MARKER, record)
        temporaries.replace_folder(staging, self._key_dir(recipe, key))
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
        return record

    def discard(self, recipe: str, key: str) -> None:
        target = self._key_dir(recipe, key)
        if not target.exists():
            return
        # Unmark first, then move aside: a reader never sees a marked half-deleted key.
        (target / SUCCESS_MARKER).unlink(missing_ok=True)
        doomed = self.root / recipe / _STAGING / f"{key}.discarded.{uuid.uuid4().hex[:8]}"
        doomed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def list_committed(self, recipe: str | None = None) -> Iterator[CommittedKey]:
        for recipe_dir in self._recipe_dirs(recipe):
            for key_dir in sorted(p for p in recipe_dir.glob("*") if not p.name.startswith(".")):
                record = self.marker(recipe_dir.name, key_dir.name) if key_dir.is_dir() else None
                if record is not None:
                    yield CommittedKey(recipe_dir.name, key_dir.name, int(record.get("size_bytes", 0)), str(record.get("finished", "")))

    def put_document(self, path: str, document: dict[str, Any]) -> None:
        target = self.root.joinpath(*document_parts(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        _write_json(temporary, document)
        os.replace(temporary, target)

    def get_document(self, path: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.root.joinpath(*document_parts(path)).read_text())
        except FileNotFoundError:
            return None

    def list_documents(self, prefix: str) -> list[str]:
        folder = self.root.joinpath(*document_parts(prefix))
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    def _check_files(self, recipe: str, key: str, record: dict[str, Any]) -> list[str]:
        return verify_files(self._key_dir(recipe, key), record["files"], listing=SUCCESS_MARKER)

    def broken_keys(self, recipe: str | None = None) -> Iterator[tuple[str, str, str]]:
        for recipe_dir in self._recipe_dirs(recipe):
            for key_dir in sorted(p for p in recipe_dir.glob("*") if p.is_dir() and not p.name.startswith(".")):
                reason = self.broken_reason(recipe_dir.name, key_dir.name)
                if reason is not None:
                    yield recipe_dir.name, key_dir.name, reason

    def leftovers(self) -> Iterator[Leftover]:
        broken = {(name, key) for name, key, _ in self.broken_keys()}
        for recipe_dir in self._recipe_dirs(None):
            for folder in sorted(recipe_dir.glob("*")):
                if folder.name == _STAGING:
                    for staged in sorted(folder.glob("*")):
                        yield _leftover(recipe_dir.name, staged.name, "staging folder", staged)
                elif folder.name.startswith("."):       # a key moved aside while being replaced
                    yield _leftover(recipe_dir.name, folder.name, "staging folder", folder)
                elif (recipe_dir.name, folder.name) in broken:
                    yield _leftover(recipe_dir.name, folder.name, BROKEN_KEY, folder)
                elif folder.is_dir() and not (folder / SUCCESS_MARKER).exists():
                    yield _leftover(recipe_dir.name, folder.name, "uncommitted key", folder)

    def remove_leftover(self, leftover: Leftover) -> None:
        path = Path(leftover.handle)
        if self.root not in path.parents:
            return
        if leftover.kind != "staging folder" and self.is_committed(path.parent.name, path.name):    # committed since
            return
        shutil.rmtree(path, ignore_errors=True)

    def _recipe_dirs(self, recipe: str | None) -> list[Path]:
        if recipe:
            return [self.root / recipe] if (self.root / recipe).is_dir() else []
        return sorted(p for p in self.root.glob("*") if p.is_dir() and is_recipe_folder(p.name))


def _leftover(recipe: str, name: str, kind: str, path: Path) -> Leftover:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    newest = max((p.stat().st_mtime for p in files), default=path.stat().st_mtime)
    return Leftover(recipe, name, kind, sum(p.stat().st_size for p in files), newest, str(path))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
