"""`foundry verify`: re-hash a published model or a stage key against what it recorded."""

import json
from pathlib import Path

import typer

from foundry import manifest
from foundry.errors import UserError
from foundry.store import SUCCESS_MARKER, open_store, resolve_store_url


def verify_target(target: str, store_flag: str | None) -> bool:
    folder = _folder(target, store_flag)
    if (folder / manifest.MANIFEST_NAME).exists():
        problems = manifest.verify(folder)
    else:
        marker = json.loads((folder / SUCCESS_MARKER).read_text())
        problems = manifest.verify_files(folder, marker.get("files"), listing=SUCCESS_MARKER)
    for problem in problems:
        typer.echo(f"{folder}/{problem}", err=True)
    if not problems:
        typer.echo(f"ok {folder}: every file matches its sha256")
    return not problems


def _folder(target: str, store_flag: str | None) -> Path:
    """A folder given as is, else RECIPE/KEY looked up in the store."""
    path = Path(target)
    if path.is_dir():
        if not (path / manifest.MANIFEST_NAME).exists() and not (path / SUCCESS_MARKER).exists():
            raise UserError(f"{target}: neither a published model (no {manifest.MANIFEST_NAME}) nor a committed stage key (no {SUCCESS_MARKER})")
        return path
    recipe, _, key = target.partition("/")
    store = open_store(resolve_store_url(store_flag))
    if not key or not store.is_committed(recipe, key):
        raise UserError(f"{target}: no such folder, and no committed key {target!r} in {store.url}; give a published folder or RECIPE/KEY (see foundry plan)")
    return store.fetch(recipe, key)
