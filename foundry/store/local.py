"""A store in a local folder: `<root>/<recipe>/<stage>-<hash>/`.

Staging folders live inside the root so that committing is a rename on one filesystem,
never a copy; the marker is written through a temporary file and `os.replace`, so it is
either absent or whole.
"""

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foundry.manifest import verify_files
from foundry.store.base import SUCCESS_MARKER, CommittedKey, Leftover, Store, document_parts, is_recipe_folder

_STAGING = ".staging"


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = f"file://{self.root}"

    def _key_dir(self, recipe: str, key: str) -> Path:
        return self.root / recipe / key

    def location(self, recipe: str, key: str) -> str:
        return str(self._key_dir(recipe, key))

    def marker(self, recipe: str, key: str) -> dict[str, Any] | None:
        path = self._key_dir(recipe, key) / SUCCESS_MARKER
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def fetch(self, recipe: str, key: str) -> Path:
        return self._key_dir(recipe, key)

    def new_staging(self, recipe: str, key: str) -> Path:
        # Named like the key itself: tools that record their output folder's name (mergekit's
        # model card, for one) then write the same bytes whichever attempt commits.
        staging = self.root / recipe / _STAGING / uuid.uuid4().hex[:8] / key
        staging.mkdir(parents=True)
        return staging

    def commit(self, recipe: str, key: str, staging: Path, record: dict[str, Any]) -> dict[str, Any]:
        target = self._key_dir(recipe, key)
        self.discard(recipe, key)
        os.replace(staging, target)
        staging.parent.rmdir()
        temporary = target / f".{SUCCESS_MARKER}.tmp"
        with open(temporary, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target / SUCCESS_MARKER)
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
        recipes = [self.root / recipe] if recipe else sorted(p for p in self.root.glob("*") if p.is_dir())
        for recipe_dir in recipes:
            for key_dir in sorted(recipe_dir.glob("*")):
                record = self.marker(recipe_dir.name, key_dir.name) if key_dir.is_dir() else None
                if record is not None:
                    yield CommittedKey(recipe_dir.name, key_dir.name, int(record.get("size_bytes", 0)), str(record.get("finished", "")))

    def put_document(self, path: str, document: dict[str, Any]) -> None:
        target = self.root.joinpath(*document_parts(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(temporary, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def get_document(self, path: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.root.joinpath(*document_parts(path)).read_text())
        except FileNotFoundError:
            return None

    def list_documents(self, prefix: str) -> list[str]:
        folder = self.root.joinpath(*document_parts(prefix))
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    def verify(self, recipe: str, key: str) -> list[str]:
        record = self.marker(recipe, key)
        if record is None:
            return [f"{SUCCESS_MARKER}: missing (the key is not committed)"]
        return verify_files(self._key_dir(recipe, key), record.get("files"), listing=SUCCESS_MARKER)

    def leftovers(self) -> Iterator[Leftover]:
        for recipe_dir in sorted(p for p in self.root.glob("*") if p.is_dir() and is_recipe_folder(p.name)):
            for folder in sorted(recipe_dir.glob("*")):
                if folder.name == _STAGING:
                    for staged in sorted(folder.glob("*")):
                        yield _leftover(recipe_dir.name, staged.name, "staging folder", staged)
                elif folder.is_dir() and not (folder / SUCCESS_MARKER).exists():
                    yield _leftover(recipe_dir.name, folder.name, "uncommitted key", folder)

    def remove_leftover(self, leftover: Leftover) -> None:
        path = Path(leftover.handle)
        if self.root not in path.parents or (path / SUCCESS_MARKER).exists():    # outside, or committed since
            return
        shutil.rmtree(path, ignore_errors=True)


def _leftover(recipe: str, name: str, kind: str, path: Path) -> Leftover:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    newest = max((p.stat().st_mtime for p in files), default=path.stat().st_mtime)
    return Leftover(recipe, name, kind, sum(p.stat().st_size for p in files), newest, str(path))
