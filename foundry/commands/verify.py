"""`foundry verify`: re-hash a published model or a stage key against what it recorded, in a
local folder, in the store, or in a bucket (read in place, never copied).

With no target it checks every key of the store. `--repair` deletes each damaged or broken
key from the store (never a published folder: republish that), so that the next run
rebuilds it instead of stopping on it.
"""

from collections.abc import Iterator
from pathlib import Path

import typer

from foundry import manifest
from foundry.errors import UserError
from foundry.store import SUCCESS_MARKER, BrokenMarker, Store, open_store, parse_marker, resolve_store_url
from foundry.store.base import BROKEN_NOTE


def verify_target(target: str | None, store_flag: str | None, *, repair: bool = False) -> bool:
    """Print one line per problem (or one `ok` line per clean folder); whether all is well now."""
    if repair and target is not None and (target.startswith("s3://") or Path(target).is_dir()):
        raise UserError(f"--repair {target}: repairs keys of the store, named RECIPE/KEY (or all of them, with no target); republish a damaged published folder")
    clean = True
    for where, problems, key in _checks(target, store_flag):
        for problem in problems:
            typer.echo(f"{where}/{problem}", err=True)
        if not problems:
            typer.echo(f"ok {where}: every file matches its sha256")
        elif repair and key is not None:
            store, recipe, name = key
            store.discard(recipe, name)
            typer.echo(f"deleted {recipe}/{name} from {store.url}: the next run rebuilds it")
            continue
        clean = clean and not problems
    return clean


Check = tuple[str, list[str], tuple[Store, str, str] | None]     # where, problems, the store key it is


def _checks(target: str | None, store_flag: str | None) -> Iterator[Check]:
    """(where, problems, key) for each folder the target names: a folder, RECIPE/KEY, s3://..., or the whole store."""
    if target is None:
        yield from _store_checks(open_store(resolve_store_url(store_flag)))
        return
    if target.startswith("s3://"):
        yield from _s3_checks(target)
        return
    folder = Path(target)
    if folder.is_dir():
        if (folder / manifest.MANIFEST_NAME).exists():
            yield str(folder), manifest.verify(folder), None
        elif (folder / SUCCESS_MARKER).exists():
            yield str(folder), _verify_recorded((folder / SUCCESS_MARKER).read_bytes(), SUCCESS_MARKER, manifest.LocalFiles(folder)), None
        else:
            raise UserError(f"{target}: neither a published model (no {manifest.MANIFEST_NAME}) nor a committed stage key (no {SUCCESS_MARKER})")
        return
    recipe, _, key = target.partition("/")
    store = open_store(resolve_store_url(store_flag))
    if not key or not _has_marker(store, recipe, key):
        raise UserError(f"{target}: no such folder, and no committed key {target!r} in {store.url}; give a published folder or RECIPE/KEY (see foundry plan)")
    yield store.location(recipe, key).rstrip("/"), store.verify(recipe, key), (store, recipe, key)


def _store_checks(store: Store) -> Iterator[Check]:
    for recipe, key, reason in store.broken_keys():
        yield store.location(recipe, key).rstrip("/"), [reason + BROKEN_NOTE], (store, recipe, key)
    for item in store.list_committed():
        yield store.location(item.recipe, item.key).rstrip("/"), store.verify(item.recipe, item.key), (store, item.recipe, item.key)


def _has_marker(store: Store, recipe: str, key: str) -> bool:
    """Whether `key` has a marker, whole or broken (a broken one is verified, and named, too)."""
    try:
        return store.read_marker(recipe, key) is not None
    except BrokenMarker:
        return True


def _s3_checks(url: str) -> Iterator[Check]:
    """A published folder (manifest.json), a stage key (_SUCCESS.json), or a model's folder
    holding published versions (each `<version>/manifest.json`)."""
    from foundry.s3.client import S3Location, check_bucket, client, parse, user_errors
    from foundry.s3.files import S3Files, list_objects, read_bytes
    from foundry.store.base import readable_marker
    from foundry.store.s3 import marked_files

    location = parse(url, "verify")
    s3 = client()
    check_bucket(s3, location, f"verify {url}")
    with user_errors(s3, location.bucket, f"verify {url}"):
        raw = read_bytes(s3, location.child(manifest.MANIFEST_NAME))
        if raw is not None:
            yield location.url, _verify_recorded(raw, manifest.MANIFEST_NAME, S3Files(s3, location)), None
            return
        raw = read_bytes(s3, location.child(SUCCESS_MARKER))
        if raw is not None:     # a stage key: its files are where the marker says (its attempt)
            yield location.url, _verify_recorded(raw, SUCCESS_MARKER, marked_files(s3, location, readable_marker(raw))), None
            return
        depth = location.prefix.count("/") + 1
        versions = sorted(item.key.rpartition("/")[0] for item in list_objects(s3, location.bucket, location.prefix)
                          if item.key.endswith("/" + manifest.MANIFEST_NAME) and item.key.count("/") == depth)
        if not versions:
            raise UserError(f"{url}: neither a published model (no {manifest.MANIFEST_NAME}) nor a committed stage key (no {SUCCESS_MARKER}), nor a model folder with published versions")
        for key in versions:
            folder = S3Location(location.bucket, key)
            raw = read_bytes(s3, folder.child(manifest.MANIFEST_NAME)) or b""
            yield folder.url, _verify_recorded(raw, manifest.MANIFEST_NAME, S3Files(s3, folder)), None


def _verify_recorded(raw: bytes, listing: str, files: manifest.FileSource) -> list[str]:
    """`files` against the listing `raw` (a manifest.json or a _SUCCESS.json), itself maybe broken."""
    try:
        record = parse_marker(raw, listing)
    except BrokenMarker as broken:
        return [f"{broken}{BROKEN_NOTE if listing == SUCCESS_MARKER else ''}"]
    return manifest.verify_source(files, record["files"], listing=listing)
