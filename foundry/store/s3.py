"""A store in an S3-compatible bucket: `s3://<bucket>/<prefix>/<recipe>/<stage>-<hash>/`.

The same discipline as the local store, with objects instead of renames. A stage writes to
a local scratch folder; `commit` uploads every file (parallel, verified against the record's
sha256) under a folder of its own attempt, `<key>/.attempts/<attempt id>/`, and then writes
the marker `<key>/_SUCCESS.json`, which names that attempt, in one conditional PUT
(compare-and-swap, as the catalogue does): `If-None-Match: *` when the key had no marker as
the stage began (`new_staging`), `If-Match: <its ETag>` when it replaces the one it found
(a forced re-run; a broken marker is replaced whenever found). So runs committing one key
at once never mix their files: exactly one marker wins, and it lists only its own
attempt's files; every loser deletes its own attempt and reports the marker that won. A
winner deletes the files of the marker it replaced (or, for a key that had none, files at
the key's root, which only an older Foundry's crash writes). A crash leaves an attempt no marker names, which `foundry gc` removes (an
"abandoned attempt", once older than --older-than, like any other leftover). Markers written
before attempts (no `attempt` field) list files at the key's root, and are read as such.

Readers resolve files through the marker. `fetch` downloads a committed key into
`$FOUNDRY_CACHE/store/<bucket>/<prefix>/<recipe>/<key>/`, checking every file's sha256
against the marker as it arrives, by way of a temporary folder renamed into place when
whole, so a cached key is either complete or absent; a key re-committed while it was being
downloaded is fetched again from its new marker. A key already cached with the same
files is not downloaded again (a sweep whose points share a merge fetches it once), but it
is re-hashed against the marker first: a cache copy damaged on this machine is downloaded
again, never used. A commit moves its staging folder into that cache, so the next stage on
the same machine downloads nothing.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from foundry import temporaries
from foundry.hashing import canonical_json
from foundry.manifest import verify_files, verify_source
from foundry.s3 import client as s3client
from foundry.s3.client import S3Location, is_missing, lost_race
from foundry.s3.files import S3Files, delete_objects, list_objects, read_json
from foundry.s3.transfer import Download, IntegrityError, TransferConfig, Upload, download_files, upload_files
from foundry.store.base import BROKEN_KEY, SUCCESS_MARKER, BrokenMarker, CommittedKey, DamagedKey, Leftover, Store, document_parts, is_recipe_folder, parse_marker, readable_marker

LOG = logging.getLogger("foundry.store")
SCRATCH_ENV = "FOUNDRY_SCRATCH"
CACHE_ENV = "FOUNDRY_CACHE"
ATTEMPTS = ".attempts"
ABANDONED_ATTEMPT = "abandoned attempt"
_ATTEMPT_ID = re.compile(r"^[0-9a-f]{16}$")
_MARKER_TRIES = 20          # lost races in a row before a commit gives up (each one is another commit landing)
_FETCH_TRIES = 3            # re-commits of a key while it is being fetched, before the damage is believed
_MARKER_READERS = 16        # markers read at once when listing keys


@dataclass
class _Part:
    """Objects of one key, or of one of its attempts: how many bytes, how new."""

    size_bytes: int = 0
    newest: float = 0.0

    def add(self, size: int, modified: float) -> None:
        self.size_bytes += size
        self.newest = max(self.newest, modified)


@dataclass
class _KeyScan:
    """What one listing says about a key: whether it is marked, and its files by attempt."""

    marked: float | None = None                 # when the marker was written
    whole: _Part = field(default_factory=_Part)     # every object but the marker
    root: _Part = field(default_factory=_Part)      # files at the key's root (markers written before attempts)
    attempts: dict[str, _Part] = field(default_factory=dict)

    def part(self, record: dict[str, Any]) -> _Part:
        """The files `record` (the key's marker) lists."""
        attempt = record.get("attempt")
        return self.root if attempt is None else self.attempts.get(attempt, _Part())


class S3Store(Store):
    def __init__(self, location: S3Location, s3: BaseClient | None = None, config: TransferConfig | None = None) -> None:
        self.root = location
        self.url = location.url
        self.s3 = s3 or s3client.client()
        self.config = config
        # The marker (bytes, ETag) each staging folder's key had when the stage began: what its
        # commit may replace (see `commit`).
        self._found: dict[Path, tuple[bytes | None, str | None]] = {}
        s3client.check_bucket(self.s3, location, f"store {self.url}")

    # --- where things are ------------------------------------------------------------------

    def _key(self, recipe: str, key: str) -> S3Location:
        return self.root.child(recipe, key)

    def location(self, recipe: str, key: str) -> str:
        return self._key(recipe, key).url + "/"

    def files_location(self, recipe: str, key: str, record: dict[str, Any]) -> S3Location:
        """Where the files of `record`, the key's marker, are."""
        return files_location(self._key(recipe, key), record)

    def _cache_dir(self, recipe: str, key: str) -> Path:
        return cache_root() / "store" / self.root.bucket / self.root.key / recipe / key

    def _errors(self, what: str) -> Any:
        return s3client.user_errors(self.s3, self.root.bucket, f"store {self.url}: {what}")

    # --- reading ---------------------------------------------------------------------------

    def _marker_bytes(self, recipe: str, key: str) -> bytes | None:
        return self._marker_object(recipe, key)[0]

    def _marker_object(self, recipe: str, key: str) -> tuple[bytes | None, str | None]:
        """The marker as stored and its ETag, (None, None) when there is none."""
        with self._errors(f"{recipe}/{key}"):
            try:
                response = self.s3.get_object(Bucket=self.root.bucket, Key=self._key(recipe, key).child(SUCCESS_MARKER).key)
            except ClientError as error:
                if is_missing(error):
                    return None, None
                raise
            return response["Body"].read(), response["ETag"]

    def read_marker(self, recipe: str, key: str) -> dict[str, Any] | None:
        record = super().read_marker(recipe, key)
        if record is not None:
            self.files_location(recipe, key, record)        # BrokenMarker when it names no attempt of ours
        return record

    def fetch(self, recipe: str, key: str) -> Path:
        for tries_left in reversed(range(_FETCH_TRIES)):
            record = self.marker(recipe, key)
            if record is None:
                raise FileNotFoundError(f"{self.location(recipe, key)} is not committed")
            target = self._cache_dir(recipe, key)
            try:
                with _cache_lock(target):
                    return self._fill_cache(recipe, key, record, target)
            except DamagedKey:
                # A forced re-run replaced the key meanwhile, deleting the files of the marker
                # read above: the key is whole, under its new marker.
                if not tries_left or self.marker(recipe, key) == record:
                    raise
                LOG.info("%s was committed again while being fetched; fetching its new files", self.location(recipe, key))
        raise AssertionError("unreachable")

    def _fill_cache(self, recipe: str, key: str, record: dict[str, Any], target: Path) -> Path:
        """`target` holding `record`'s files, downloaded unless a whole copy is there already."""
        if _cache_holds(target, record):
            return target
        temporary = target.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            folder = self.files_location(recipe, key, record)
            downloads = [Download(folder.child(entry["path"]).key, temporary / entry["path"], int(entry["size"]), entry["sha256"]) for entry in record["files"]]
            temporary.mkdir(parents=True)
            try:
                with self._errors(f"fetching {recipe}/{key}"):
                    download_files(self.s3, self.root.bucket, downloads, self.config)
            except IntegrityError as error:
                raise DamagedKey(recipe, key, self.location(recipe, key), [str(error).removeprefix(f"s3 object {folder.prefix}")]) from None
            _write_marker(temporary, record)
            swap_in(temporary, target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return target

    def list_committed(self, recipe: str | None = None) -> Iterator[CommittedKey]:
        """Keys whose marker is whole (one GET per marked key, as `is_committed` would), sized
        by the files of the attempt it names."""
        scans = self._scan(recipe)
        for (name, key), record in self._markers(scans):
            if isinstance(record, dict):
                scan = scans[(name, key)]
                yield CommittedKey(name, key, scan.part(record).size_bytes, _iso(scan.marked or 0.0))

    def _check_files(self, recipe: str, key: str, record: dict[str, Any]) -> list[str]:
        with self._errors(f"verifying {recipe}/{key}"):
            return verify_source(marked_files(self.s3, self._key(recipe, key), record, self.config), record["files"], listing=SUCCESS_MARKER)

    def broken_keys(self, recipe: str | None = None) -> Iterator[tuple[str, str, str]]:
        """One GET per marked key: the listing alone cannot tell a broken marker from a whole one."""
        for (name, key), record in self._markers(self._scan(recipe)):
            if isinstance(record, BrokenMarker):
                yield name, key, str(record)

    def _markers(self, scans: dict[tuple[str, str], _KeyScan]) -> list[tuple[tuple[str, str], dict[str, Any] | BrokenMarker]]:
        """The marker of each marked key in `scans`, parsed or broken, sorted by key; read in parallel."""
        def read(name_key: tuple[str, str]) -> dict[str, Any] | BrokenMarker | None:
            try:
                return self.read_marker(*name_key)
            except BrokenMarker as broken:
                return broken

        marked = sorted(name_key for name_key, scan in scans.items() if scan.marked is not None)
        with ThreadPoolExecutor(min(_MARKER_READERS, max(len(marked), 1))) as pool:
            records = list(pool.map(read, marked))
        return [(name_key, record) for name_key, record in zip(marked, records, strict=True) if record is not None]

    # --- writing ---------------------------------------------------------------------------

    def new_staging(self, recipe: str, key: str) -> Path:
        # Named like the key, as in the local store: tools that record their output folder's
        # name then write the same bytes whichever attempt commits.
        scratch = Path(os.environ.get(SCRATCH_ENV) or cache_root() / "scratch").expanduser()
        staging = scratch / uuid.uuid4().hex[:8] / key
        staging.mkdir(parents=True)
        self._found[staging] = self._marker_object(recipe, key)
        return staging

    def commit(self, recipe: str, key: str, staging: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Upload `staging` as a new attempt, then swap the marker in if the key still holds
        the marker it held when the stage began (none, for a key that was not committed; a
        forced re-run replaces the one it found). Returns the marker that won: this attempt's,
        or that of a run which committed the key while this one worked."""
        record = {**record, "attempt": uuid.uuid4().hex[:16]}
        folder = self.files_location(recipe, key, record)
        uploads = [Upload(staging / entry["path"], folder.child(entry["path"]).key, entry["sha256"]) for entry in record["files"]]
        with self._errors(f"committing {recipe}/{key}"):
            found = self._found.pop(staging, None) or self._marker_object(recipe, key)
            try:
                upload_files(self.s3, self.root.bucket, uploads, self.config)
                winner, replaced = self._swap_marker(recipe, key, record, found)
            except Exception:
                with contextlib.suppress(Exception):    # best effort: else gc removes the abandoned attempt
                    self._delete_under(folder.prefix)
                raise
            if winner is record:
                self._delete_replaced(recipe, key, replaced)
            else:
                self._delete_under(folder.prefix)
        if _files(winner) == _files(record):
            self._keep_as_cache(recipe, key, staging, winner)
        else:
            shutil.rmtree(staging.parent, ignore_errors=True)
        return winner

    def _swap_marker(self, recipe: str, key: str, record: dict[str, Any], found: tuple[bytes | None, str | None]) -> tuple[dict[str, Any], bytes | None]:
        """Write `record` as the key's marker in place of `found` (its bytes and ETag; None: no
        marker), by compare-and-swap. Returns the marker that won and the one it replaced. A
        broken marker written in between is replaced too; a whole one won the race."""
        where = self._key(recipe, key).child(SUCCESS_MARKER)
        previous, etag = found
        for _ in range(_MARKER_TRIES):
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.s3.put_object(Bucket=self.root.bucket, Key=where.key, Body=_marker_bytes(record), ContentType="application/json", **condition)
                return record, previous
            except ClientError as error:
                if not lost_race(error, replacing=etag is not None):
                    raise
            previous, etag = self._marker_object(recipe, key)
            if previous is not None:
                try:
                    current = parse_marker(previous)
                    files_location(self._key(recipe, key), current)
                    LOG.info("%s was committed by another run first; using its files", self.location(recipe, key))
                    return current, None
                except BrokenMarker:
                    pass
        raise RuntimeError(f"{where.url}: still losing the race to concurrent writers after {_MARKER_TRIES} attempts; run the stage again")

    def _delete_replaced(self, recipe: str, key: str, previous: bytes | None) -> None:
        """Delete the files of the marker `previous` that `record` replaced: its attempt, or the
        key's root files (a marker from before attempts, a broken one, or a crash of a Foundry
        that wrote there). Other attempts may be in flight: they are gc's."""
        prefix = self._key(recipe, key)
        folder = marked_folder(prefix, None if previous is None else readable_marker(previous))
        if folder == prefix:
            self._delete_root_files(prefix)
        else:
            self._delete_under(folder.prefix)

    def _delete_root_files(self, prefix: S3Location) -> None:
        """Every object at a key's root but its marker and its attempts."""
        keep = (prefix.child(SUCCESS_MARKER).key, prefix.child(ATTEMPTS).prefix)
        delete_objects(self.s3, self.root.bucket, [item.key for item in list_objects(self.s3, self.root.bucket, prefix.prefix) if not item.key.startswith(keep)])

    def _delete_under(self, prefix: str) -> None:
        delete_objects(self.s3, self.root.bucket, [item.key for item in list_objects(self.s3, self.root.bucket, prefix)])

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
            self._delete_under(prefix.prefix)

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
        scans = self._scan(None)
        markers = dict(self._markers(scans))
        for (recipe, key), scan in sorted(scans.items()):
            where = self._key(recipe, key)
            record = markers.get((recipe, key))
            if scan.marked is None:
                yield Leftover(recipe, key, "uncommitted key", scan.whole.size_bytes, scan.whole.newest, where.key)
            elif isinstance(record, BrokenMarker):
                yield Leftover(recipe, key, BROKEN_KEY, scan.whole.size_bytes, max(scan.whole.newest, scan.marked), where.key)
            elif record is not None:
                yield from self._abandoned(recipe, key, scan, record)
        with self._errors("listing unfinished uploads"):
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.root.bucket, Prefix=self.root.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    recipe, _, rest = upload["Key"].removeprefix(self.root.prefix).partition("/")
                    if not is_recipe_folder(recipe):
                        continue
                    yield Leftover(recipe, rest, "unfinished upload", 0, upload["Initiated"].timestamp(), f"{upload['Key']}\n{upload['UploadId']}")

    def _abandoned(self, recipe: str, key: str, scan: _KeyScan, record: dict[str, Any]) -> Iterable[Leftover]:
        """Attempts the marker does not name: losers or crashes that could not clean up."""
        where = self._key(recipe, key)
        for attempt, part in sorted(scan.attempts.items()):
            if attempt != record.get("attempt"):
                yield Leftover(recipe, f"{key}/{ATTEMPTS}/{attempt}", ABANDONED_ATTEMPT, part.size_bytes, part.newest, where.child(ATTEMPTS, attempt).key)
        if record.get("attempt") is not None and scan.root.newest > 0:      # a replaced marker's root files
            yield Leftover(recipe, key, ABANDONED_ATTEMPT, scan.root.size_bytes, scan.root.newest, where.key)

    def remove_leftover(self, leftover: Leftover) -> None:
        with self._errors(f"removing {leftover.recipe}/{leftover.name}"):
            if leftover.kind == "unfinished upload":
                key, _, upload_id = leftover.handle.partition("\n")
                self.s3.abort_multipart_upload(Bucket=self.root.bucket, Key=key, UploadId=upload_id)
            elif leftover.kind == ABANDONED_ATTEMPT:
                key = leftover.name.partition("/")[0]
                record = self.marker(leftover.recipe, key)
                if record is None:
                    return                                  # unmarked since: the whole key is garbage, listed next time
                current = self.files_location(leftover.recipe, key, record).key
                if leftover.handle == self._key(leftover.recipe, key).key:
                    if current != leftover.handle:
                        self._delete_root_files(self._key(leftover.recipe, key))
                elif leftover.handle != current:            # committed since it was listed: keep it
                    self._delete_under(leftover.handle + "/")
            elif not self.is_committed(leftover.recipe, leftover.name):     # committed since it was listed: keep it
                self._delete_under(leftover.handle + "/")

    def _scan(self, recipe: str | None) -> dict[tuple[str, str], _KeyScan]:
        """One listing of the store (or of one recipe), grouped by key and attempt."""
        keys: dict[tuple[str, str], _KeyScan] = {}
        base = self.root.prefix
        with self._errors("listing keys"):
            for item in list_objects(self.s3, self.root.bucket, base + (f"{recipe}/" if recipe else "")):
                parts = item.key.removeprefix(base).split("/", 2)
                if len(parts) < 3 or not parts[2] or not is_recipe_folder(parts[0]):
                    continue
                scan = keys.setdefault((parts[0], parts[1]), _KeyScan())
                modified = item.modified.timestamp()
                if parts[2] == SUCCESS_MARKER:
                    scan.marked = modified
                    continue
                scan.whole.add(item.size, modified)
                folder, _, rest = parts[2].partition("/")
                if folder == ATTEMPTS and rest:
                    scan.attempts.setdefault(rest.partition("/")[0], _Part()).add(item.size, modified)
                else:
                    scan.root.add(item.size, modified)
        return keys


def files_location(key: S3Location, record: dict[str, Any]) -> S3Location:
    """Where the files a key's marker lists are: its attempt's folder, or the key itself for a
    marker written before attempts; BrokenMarker when it names something else."""
    attempt = record.get("attempt")
    if attempt is None:
        return key
    if not isinstance(attempt, str) or not _ATTEMPT_ID.match(attempt):
        raise BrokenMarker(f"{SUCCESS_MARKER} names attempt {attempt!r}, not an attempt id")
    return key.child(ATTEMPTS, attempt)


def marked_files(s3: BaseClient, key: S3Location, record: dict[str, Any] | None, config: TransferConfig | None = None) -> S3Files:
    """The files of the key at `key` as its marker `record` finds them (None: a marker that
    cannot be read, then the key's root), for `verify_source`."""
    folder = marked_folder(key, record)
    return S3Files(s3, folder, config, skip=f"{ATTEMPTS}/" if folder == key else None)


def marked_folder(key: S3Location, record: dict[str, Any] | None) -> S3Location:
    """`files_location`, with the key's root for a marker that cannot be read (None) or names
    no attempt of ours."""
    try:
        return key if record is None else files_location(key, record)
    except BrokenMarker:
        return key


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
