"""A store in an S3-compatible bucket: `s3://<bucket>/<prefix>/<recipe>/<stage>-<hash>/`.

The same discipline as the local store, with objects instead of renames: a stage writes to
a local scratch folder; `commit` uploads every file (parallel, verified against the record's
sha256) and only then the marker, so a key without `_SUCCESS.json` is never trusted and a
crash at any point leaves nothing that looks done. `discard` deletes the marker first.

Readers get a local copy: `fetch` downloads a committed key into
`$FOUNDRY_CACHE/store/<bucket>/<prefix>/<recipe>/<key>/`, checking every file's sha256
against the marker as it arrives, by way of a temporary folder renamed into place when
whole, so a cached key is either complete or absent. A key already cached with the same
files is not downloaded again (a sweep whose points share a merge fetches it once), but it
is re-hashed against the marker first: a cache copy damaged on this machine is downloaded
again, never used. A commit moves its staging folder into that cache, so the next stage on
the same machine downloads nothing.
"""

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.client import BaseClient

from foundry import temporaries
from foundry.hashing import canonical_json
from foundry.manifest import verify_files, verify_source
from foundry.s3 import client as s3client
from foundry.s3.client import S3Location
from foundry.s3.files import S3Files, delete_objects, list_objects, read_bytes, read_json
from foundry.s3.transfer import Download, IntegrityError, TransferConfig, Upload, download_files, upload_files
from foundry.store.base import SUCCESS_MARKER, BrokenMarker, CommittedKey, DamagedKey, Leftover, Store, document_parts, is_recipe_folder, parse_marker

LOG = logging.getLogger("foundry.store")
SCRATCH_ENV = "FOUNDRY_SCRATCH"
CACHE_ENV = "FOUNDRY_CACHE"


@dataclass
class _KeyScan:
    """What one listing says about a key: whether it is marked, how big, how old."""

    size_bytes: int = 0
    marked: float | None = None     # when the marker was written
    newest: float = 0.0


class S3Store(Store):
    def __init__(self, location: S3Location, s3: BaseClient | None = None, config: TransferConfig | None = None) -> None:
        self.root = location
        self.url = location.url
        self.s3 = s3 or s3client.client()
        self.config = config
        s3client.check_bucket(self.s3, location, f"store {self.url}")

    # --- where things are ------------------------------------------------------------------

    def _key(self, recipe: str, key: str) -> S3Location:
        return self.root.child(recipe, key)

    def location(self, recipe: str, key: str) -> str:
        return self._key(recipe, key).url + "/"

    def _cache_dir(self, recipe: str, key: str) -> Path:
        return cache_root() / "store" / self.root.bucket / self.root.key / recipe / key

    def _errors(self, what: str) -> Any:
        return s3client.user_errors(self.s3, self.root.bucket, f"store {self.url}: {what}")

    # --- reading ---------------------------------------------------------------------------

    def _marker_bytes(self, recipe: str, key: str) -> bytes | None:
        with self._errors(f"{recipe}/{key}"):
            return read_bytes(self.s3, self._key(recipe, key).child(SUCCESS_MARKER))

    def fetch(self, recipe: str, key: str) -> Path:
        record = self.marker(recipe, key)
        if record is None:
            raise FileNotFoundError(f"{self.location(recipe, key)} is not committed")
        target = self._cache_dir(recipe, key)
        with _cache_lock(target):
            return self._fill_cache(recipe, key, record, target)

    def _fill_cache(self, recipe: str, key: str, record: dict[str, Any], target: Path) -> Path:
        """`target` holding `record`'s files, downloaded unless a whole copy is there already."""
        if _cache_holds(target, record):
            return target
        temporary = target.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            prefix = self._key(recipe, key)
            downloads = [Download(prefix.child(entry["path"]).key, temporary / entry["path"], int(entry["size"]), entry["sha256"]) for entry in record["files"]]
            temporary.mkdir(parents=True)
            try:
                with self._errors(f"fetching {recipe}/{key}"):
                    download_files(self.s3, self.root.bucket, downloads, self.config)
            except IntegrityError as error:
                raise DamagedKey(recipe, key, self.location(recipe, key), [str(error).removeprefix(f"s3 object {prefix.prefix}")]) from None
            _write_marker(temporary, record)
            swap_in(temporary, target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return target

    def list_committed(self, recipe: str | None = None) -> Iterator[CommittedKey]:
        for (name, key), scan in sorted(self._scan(recipe).items()):
            if scan.marked is not None:
                yield CommittedKey(name, key, scan.size_bytes, _iso(scan.marked))

    def _check_files(self, recipe: str, key: str, entries: list[Any]) -> list[str]:
        with self._errors(f"verifying {recipe}/{key}"):
            return verify_source(S3Files(self.s3, self._key(recipe, key), self.config), entries, listing=SUCCESS_MARKER)

    def broken_keys(self, recipe: str | None = None) -> Iterator[tuple[str, str, str]]:
        """One GET per marked key: the listing alone cannot tell a broken marker from a whole one."""
        for (name, key), scan in sorted(self._scan(recipe).items()):
            reason = None if scan.marked is None else self.broken_reason(name, key)
            if reason is not None:
                yield name, key, reason

    # --- writing ---------------------------------------------------------------------------

    def new_staging(self, recipe: str, key: str) -> Path:
        # Named like the key, as in the local store: tools that record their output folder's
        # name then write the same bytes whichever attempt commits.
        scratch = Path(os.environ.get(SCRATCH_ENV) or cache_root() / "scratch").expanduser()
        staging = scratch / uuid.uuid4().hex[:8] / key
        staging.mkdir(parents=True)
        return staging

    def commit(self, recipe: str, key: str, staging: Path, record: dict[str, Any]) -> dict[str, Any]:
        self.discard(recipe, key)           # a crashed attempt's objects, or a forced re-run's
        prefix = self._key(recipe, key)
        uploads = [Upload(staging / entry["path"], prefix.child(entry["path"]).key, entry["sha256"]) for entry in record["files"]]
        with self._errors(f"committing {recipe}/{key}"):
            upload_files(self.s3, self.root.bucket, uploads, self.config)
            self.s3.put_object(Bucket=self.root.bucket, Key=prefix.child(SUCCESS_MARKER).key, Body=_marker_bytes(record), ContentType="application/json")
        self._keep_as_cache(recipe, key, staging, record)
        return record

    def _keep_as_cache(self, recipe: str, key: str, staging: Path, record: dict[str, Any]) -> None:
        """The staging folder holds exactly the committed bytes: make it the fetch cache."""
        target = self._cache_dir(recipe, key)
        try:
            _write_marker(staging, record)
            with _cache_lock(target):
                swap_in(staging, target)
        except OSError:     # another filesystem ($FOUNDRY_SCRATCH elsewhere): just clean up
            shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()

    def discard(self, recipe: str, key: str) -> None:
        prefix = self._key(recipe, key)
        with self._errors(f"discarding {recipe}/{key}"):
            # Unmark first: a reader never sees a marked, half-deleted key.
            self.s3.delete_object(Bucket=self.root.bucket, Key=prefix.child(SUCCESS_MARKER).key)
            delete_objects(self.s3, self.root.bucket, [item.key for item in list_objects(self.s3, self.root.bucket, prefix.prefix)])

    # --- documents beside the keys (run records) -------------------------------------------

    def put_document(self, path: str, document: dict[str, Any]) -> None:
        with self._errors(f"writing {path}"):      # one PUT: readers see the old object or the new
            self.s3.put_object(Bucket=self.root.bucket, Key=self.root.child(*document_parts(path)).key,
                               Body=json.dumps(document, indent=2, sort_keys=True).encode(), ContentType="application/json")

    def get_document(self, path: str) -> dict[str, Any] | None:
        with self._errors(f"reading {path}"):
            return read_json(self.s3, self.root.child(*document_parts(path)))

    def list_documents(self, prefix: str) -> list[str]:
        folder = self.root.child(*document_parts(prefix))
        with self._errors(f"listing {prefix}"):
            paths = [item.key.removeprefix(self.root.prefix) for item in list_objects(self.s3, self.root.bucket, folder.prefix)]
        return sorted(path for path in paths if not path.rpartition("/")[2].startswith("."))

    # --- garbage ---------------------------------------------------------------------------

    def leftovers(self) -> Iterator[Leftover]:
        for (recipe, key), scan in sorted(self._scan(None).items()):
            if scan.marked is None:
                yield Leftover(recipe, key, "uncommitted key", scan.size_bytes, scan.newest, self._key(recipe, key).key)
        with self._errors("listing unfinished uploads"):
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.root.bucket, Prefix=self.root.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    recipe, _, rest = upload["Key"].removeprefix(self.root.prefix).partition("/")
                    if not is_recipe_folder(recipe):
                        continue
                    yield Leftover(recipe, rest, "unfinished upload", 0, upload["Initiated"].timestamp(), f"{upload['Key']}\n{upload['UploadId']}")

    def remove_leftover(self, leftover: Leftover) -> None:
        with self._errors(f"removing {leftover.recipe}/{leftover.name}"):
            if leftover.kind == "unfinished upload":
                key, _, upload_id = leftover.handle.partition("\n")
                self.s3.abort_multipart_upload(Bucket=self.root.bucket, Key=key, UploadId=upload_id)
            elif not self.is_committed(leftover.recipe, leftover.name):     # committed since it was listed: keep it
                delete_objects(self.s3, self.root.bucket, [item.key for item in list_objects(self.s3, self.root.bucket, leftover.handle + "/")])

    def _scan(self, recipe: str | None) -> dict[tuple[str, str], _KeyScan]:
        """One listing of the store (or of one recipe), grouped by key."""
        keys: dict[tuple[str, str], _KeyScan] = {}
        base = self.root.prefix
        with self._errors("listing keys"):
            for item in list_objects(self.s3, self.root.bucket, base + (f"{recipe}/" if recipe else "")):
                parts = item.key.removeprefix(base).split("/", 2)
                if len(parts) < 3 or not parts[2] or not is_recipe_folder(parts[0]):
                    continue
                scan = keys.setdefault((parts[0], parts[1]), _KeyScan())
                modified = item.modified.timestamp()
                scan.newest = max(scan.newest, modified)
                if parts[2] == SUCCESS_MARKER:
                    scan.marked = modified
                else:
                    scan.size_bytes += item.size
        return keys


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/foundry").expanduser()


def _files(record: dict[str, Any] | None) -> str | None:
    return None if record is None else canonical_json(record.get("files"))


def _cached_record(folder: Path) -> str | None:
    try:
        return _files(parse_marker((folder / SUCCESS_MARKER).read_bytes()))
    except (FileNotFoundError, NotADirectoryError, BrokenMarker):
        return None


def _cache_holds(folder: Path, record: dict[str, Any]) -> bool:
    """Whether the cache copy at `folder` is this record's, every file re-hashed against it."""
    if _cached_record(folder) != _files(record):
        return False
    problems = verify_files(folder, record["files"], listing=SUCCESS_MARKER)
    if problems:
        LOG.warning("%s: %s%s; downloading the key again", folder, problems[0], f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return not problems


def _marker_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True).encode()


def _write_marker(folder: Path, record: dict[str, Any]) -> None:
    (folder / SUCCESS_MARKER).write_bytes(_marker_bytes(record))


def swap_in(folder: Path, target: Path) -> None:
    """Make `folder` the cache entry at `target`, replacing a stale one whole."""
    temporaries.replace_folder(folder, target)


@contextlib.contextmanager
def _cache_lock(target: Path) -> Iterator[None]:
    """One process at a time checks and fills a key's cache entry (an flock beside it), so a
    copy another process was handed is never swapped out from under it while whole."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
