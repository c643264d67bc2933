"""`foundry verify`: re-hash a published model or a stage key against what it recorded, in a
local folder, in the store, or in a bucket (read in place, never copied)."""

import json
from collections.abc import Iterator
from pathlib import Path

import typer

from foundry import manifest
from foundry.errors import UserError
from foundry.store import SUCCESS_MARKER, open_store, resolve_store_url


def verify_target(target: str, store_flag: str | None) -> bool:
    clean = True
    for where, problems in _checks(target, store_flag):
        for problem in problems:
            typer.echo(f"{where}/{problem}", err=True)
        if not problems:
            typer.echo(f"ok {where}: every file matches its sha256")
        clean = clean and not problems
    return clean


def _checks(target: str, store_flag: str | None) -> Iterator[tuple[str, list[str]]]:
    """(where, problems) for each folder the target names: a folder, RECIPE/KEY, or s3://..."""
    if target.startswith("s3://"):
        yield from _s3_checks(target)
        return
    folder = Path(target)
    if folder.is_dir():
        if (folder / manifest.MANIFEST_NAME).exists():
            yield str(folder), manifest.verify(folder)
        elif (folder / SUCCESS_MARKER).exists():
            marker = json.loads((folder / SUCCESS_MARKER).read_text())
            yield str(folder), manifest.verify_files(folder, marker.get("files"), listing=SUCCESS_MARKER)
        else:
            raise UserError(f"{target}: neither a published model (no {manifest.MANIFEST_NAME}) nor a committed stage key (no {SUCCESS_MARKER})")
        return
    recipe, _, key = target.partition("/")
    store = open_store(resolve_store_url(store_flag))
    if not key or not store.is_committed(recipe, key):
        raise UserError(f"{target}: no such folder, and no committed key {target!r} in {store.url}; give a published folder or RECIPE/KEY (see foundry plan)")
    yield store.location(recipe, key).rstrip("/"), store.verify(recipe, key)


def _s3_checks(url: str) -> Iterator[tuple[str, list[str]]]:
    """A published folder (manifest.json), a stage key (_SUCCESS.json), or a model's folder
    holding published versions (each `<version>/manifest.json`)."""
    from foundry.s3.client import S3Location, check_bucket, client, parse, user_errors
    from foundry.s3.files import S3Files, list_objects, read_json

    location = parse(url, "verify")
    s3 = client()
    check_bucket(s3, location, f"verify {url}")
    with user_errors(s3, location.bucket, f"verify {url}"):
        for listing in (manifest.MANIFEST_NAME, SUCCESS_MARKER):
            record = read_json(s3, location.child(listing))
            if record is not None:
                yield location.url, manifest.verify_source(S3Files(s3, location), record.get("files") if isinstance(record, dict) else None, listing=listing)
                return
        depth = location.prefix.count("/") + 1
        versions = sorted(item.key.rpartition("/")[0] for item in list_objects(s3, location.bucket, location.prefix)
                          if item.key.endswith("/" + manifest.MANIFEST_NAME) and item.key.count("/") == depth)
        if not versions:
            raise UserError(f"{url}: neither a published model (no {manifest.MANIFEST_NAME}) nor a committed stage key (no {SUCCESS_MARKER}), nor a model folder with published versions")
        for key in versions:
            folder = S3Location(location.bucket, key)
            record = read_json(s3, folder.child(manifest.MANIFEST_NAME))
            yield folder.url, manifest.verify_source(S3Files(s3, folder), record.get("files") if isinstance(record, dict) else None, listing=manifest.MANIFEST_NAME)
