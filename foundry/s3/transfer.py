"""Parallel, verified transfers between local files and S3, in bounded memory.

Uploads: a file up to `multipart_threshold` goes in one PUT streamed from disk and hashed
as it is sent; a bigger one in parts, read and hashed in order and sent by the pool.
Downloads: one GET streamed to disk and hashed, or ranged GETs written in place and hashed
in order. One pool serves every file, so many small files and one big file both keep
`workers` requests in flight; a multipart transfer holds at most `workers` parts in memory,
whatever the file's size.

Each request is retried on throttling (SlowDown, 503, RequestTimeout, ...) and connection
errors, with exponential backoff and full jitter; a failed body read is retried whole. Every
file's sha256 and size are checked against what the caller expects, so a commit can only
mark bytes that arrived as they were hashed.
"""

import hashlib
import http.client
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import botocore.exceptions
import urllib3.exceptions
from botocore.client import BaseClient

from foundry.errors import UserError
from foundry.s3.client import error_code, explain

LOG = logging.getLogger("foundry.transfer")
MIB = 1024 * 1024
_READ_BLOCK = MIB
PROGRESS_MIN_BYTES = 64 * MIB
WORKERS_ENV = "FOUNDRY_S3_WORKERS"
ATTEMPTS_ENV = "FOUNDRY_S3_ATTEMPTS"
RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded",
    "500", "502", "503", "504", "429",
}
_RETRYABLE_ERRORS = (
    botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError, botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError,
)
T = TypeVar("T")


@dataclass(frozen=True)
class TransferConfig:
    """Sizes chosen for many chunk files of up to ~100 MB (one request each, in parallel) and
    the occasional multi-GB weights file (32 MiB parts, at most `workers` of them in memory)."""

    workers: int = 8
    part_size: int = 32 * MIB
    multipart_threshold: int = 128 * MIB
    attempts: int = 5
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 8.0

    @classmethod
    def from_env(cls) -> "TransferConfig":
        """Defaults, with `FOUNDRY_S3_WORKERS` and `FOUNDRY_S3_ATTEMPTS` when set."""
        return cls(workers=_positive_env(WORKERS_ENV, cls.workers), attempts=_positive_env(ATTEMPTS_ENV, cls.attempts))


def _positive_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name}={text}: expected a positive whole number")
    return int(text)


@dataclass(frozen=True)
class Upload:
    path: Path
    key: str
    sha256: str | None = None          # checked against the bytes actually sent
    content_type: str = "application/octet-stream"
    cache_control: str | None = None


@dataclass(frozen=True)
class Download:
    key: str
    path: Path
    size: int
    sha256: str | None = None


class TransferError(RuntimeError):
    """A transfer that failed for good (after retries), naming the object."""


class IntegrityError(TransferError):
    """Bytes that do not hash to what was expected."""


# --- retries -------------------------------------------------------------------------------

def retryable(error: BaseException) -> bool:
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(error) in RETRYABLE_CODES or status >= 500 or status == 429
    return isinstance(error, _RETRYABLE_ERRORS)


def retrying(call: Callable[[], T], what: str, config: TransferConfig) -> T:
    """`call()`, again after a jittered exponential pause while it fails with a transient error."""
    for attempt in range(1, config.attempts + 1):
        try:
            return call()
        except Exception as error:
            if not retryable(error) or attempt == config.attempts:
                raise
            delay = random.uniform(0, min(config.max_backoff_seconds, config.backoff_seconds * 2 ** (attempt - 1)))
            LOG.warning("%s: %s; retrying in %.2fs (attempt %d of %d)", what, _short(error), delay, attempt + 1, config.attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:200]


# --- the pool ------------------------------------------------------------------------------

class _Window:
    """At most `size` tasks in flight; the oldest is finished (its `then` run, in submission
    order) before another starts, which bounds memory and lets hashes be taken in order."""

    def __init__(self, pool: ThreadPoolExecutor, size: int) -> None:
        self._pool = pool
        self._size = size
        self._pending: deque[tuple[Future[Any], Callable[[Any], None] | None]] = deque()

    def submit(self, task: Callable[[], Any], then: Callable[[Any], None] | None = None) -> None:
        while len(self._pending) >= self._size:
            self._finish_oldest()
        self._pending.append((self._pool.submit(task), then))

    def drain(self) -> None:
        while self._pending:
            self._finish_oldest()

    def cancel(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()

    def _finish_oldest(self) -> None:
        future, then = self._pending.popleft()
        result = future.result()
        if then is not None:
            then(result)


class _Progress:
    """A byte-counting bar on a terminal for transfers worth watching; silent otherwise."""

    def __init__(self, label: str, total: int, enabled: bool | None) -> None:
        self._bar: Any = None
        if enabled is None:
            enabled = total >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            self._bar = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class _Transfer:
    """One batch of files: a pool, its window, the progress bar, and clean-up on failure."""

    def __init__(self, s3: BaseClient, bucket: str, config: TransferConfig | None, label: str, total: int, progress: bool | None) -> None:
        config = config or TransferConfig.from_env()
        self.s3, self.bucket, self.config = s3, bucket, config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="foundry-s3")
        self.window = _Window(self.pool, config.workers)
        self.progress = _Progress(label, total, progress)
        self.handles: list[BinaryIO] = []

    def call(self, call: Callable[[], T], action: str, key: str, what: str = "") -> T:
        """`call()` with retries; a final failure raised as `fail` words it."""
        try:
            return retrying(call, what or f"{action} {key}", self.config)
        except Exception as error:
            raise self.fail(error, action, key) from error

    def close(self, failed: bool) -> None:
        if failed:
            self.window.cancel()
        self.pool.shutdown(wait=True, cancel_futures=failed)
        for handle in self.handles:
            handle.close()
        self.progress.close()

    def fail(self, error: BaseException, action: str, key: str) -> BaseException:
        """The error to raise for `action` on `key`: the user's fix when there is one."""
        if isinstance(error, (TransferError, UserError)):
            return error
        if action == "download of" and error_code(error) in ("NoSuchKey", "404"):
            return IntegrityError(f"s3 object {key}: missing")
        explained = explain(error, self.s3, self.bucket, action)
        if explained is not None:
            return explained
        return TransferError(f"{action} s3://{self.bucket}/{key} failed: {_short(error)}")


# --- uploads -------------------------------------------------------------------------------

class _HashingReader:
    """A file as a request body: hashed as botocore reads it, restarted when it rewinds."""

    def __init__(self, handle: BinaryIO, size: int, progress: _Progress) -> None:
        self._handle, self._size, self._progress = handle, size, progress
        self.digest = hashlib.sha256()
        self.sent = 0

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        self.sent += len(data)
        self._progress.advance(len(data))
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError("a hashing upload body can only rewind to its start")
        self._progress.advance(-self.sent)
        self.digest, self.sent = hashlib.sha256(), 0
        return self._handle.seek(0)

    def tell(self) -> int:
        return self.sent


def upload_files(s3: BaseClient, bucket: str, uploads: Iterable[Upload], config: TransferConfig | None = None, *,
                 progress: bool | None = None) -> dict[str, str]:
    """Upload every file; returns key -> sha256 of the bytes sent. Raises TransferError (or
    a UserError for the user's mistakes) naming the first object that failed for good; an
    unfinished multipart upload is aborted."""
    uploads = list(uploads)
    sizes = {upload.key: upload.path.stat().st_size for upload in uploads}
    job = _Transfer(s3, bucket, config, "upload", sum(sizes.values()), progress)
    digests: dict[str, str] = {}
    multipart: dict[str, str] = {}      # key -> upload id, until completed
    failed = True
    try:
        parts: dict[str, list[dict[str, Any]]] = {}
        for upload in uploads:
            if sizes[upload.key] <= job.config.multipart_threshold:
                job.window.submit(lambda upload=upload: _put_whole(job, upload, sizes[upload.key]),
                                  then=lambda digest, upload=upload: _expect(digests, upload.key, digest, upload.sha256, upload.path))
            else:
                parts[upload.key] = _put_parts(job, upload, multipart, digests)
        job.window.drain()
        for upload in uploads:
            if upload.key in parts:
                _complete(job, upload.key, multipart.pop(upload.key), parts[upload.key])
        failed = False
    finally:
        job.close(failed)
        for key, upload_id in multipart.items():
            _abort(job, key, upload_id)
    return digests


def _put_whole(job: _Transfer, upload: Upload, size: int) -> str:
    with open(upload.path, "rb") as handle:
        body = _HashingReader(handle, size, job.progress)

        def put() -> None:
            body.seek(0)
            job.s3.put_object(Bucket=job.bucket, Key=upload.key, Body=body, ContentType=upload.content_type, **_cache(upload))

        job.call(put, "upload to", upload.key)
        if body.sent != size:
            raise IntegrityError(f"{upload.path}: sent {body.sent} bytes, the file has {size}; it changed while uploading")
        return body.digest.hexdigest()


def _put_parts(job: _Transfer, upload: Upload, multipart: dict[str, str], digests: dict[str, str]) -> list[dict[str, Any]]:
    """Read the file in order (hashing it), hand each part to the pool; returns the part list,
    filled in as parts finish."""
    created = job.call(lambda: job.s3.create_multipart_upload(Bucket=job.bucket, Key=upload.key, ContentType=upload.content_type, **_cache(upload)),
                       "upload to", upload.key, f"start multipart upload {upload.key}")
    upload_id = multipart[upload.key] = created["UploadId"]
    digest = hashlib.sha256()
    parts: list[dict[str, Any]] = []
    with open(upload.path, "rb") as handle:
        number = 0
        while data := handle.read(job.config.part_size):
            number += 1
            digest.update(data)
            job.window.submit(lambda data=data, number=number: _put_part(job, upload.key, upload_id, number, data), then=parts.append)
    _expect(digests, upload.key, digest.hexdigest(), upload.sha256, upload.path)
    return parts


def _put_part(job: _Transfer, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
    def put() -> dict[str, Any]:
        response = job.s3.upload_part(Bucket=job.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": response["ETag"]}

    part = job.call(put, "upload to", key, f"upload {key} part {number}")
    job.progress.advance(len(data))
    return part


def _complete(job: _Transfer, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
    ordered = sorted(parts, key=lambda part: part["PartNumber"])
    job.call(lambda: job.s3.complete_multipart_upload(Bucket=job.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": ordered}),
             "upload to", key, f"complete upload {key}")


def _abort(job: _Transfer, key: str, upload_id: str) -> None:
    try:
        job.s3.abort_multipart_upload(Bucket=job.bucket, Key=key, UploadId=upload_id)
    except Exception as error:  # noqa: BLE001 - best effort; `foundry gc` lists what is left
        LOG.warning("could not abort the unfinished upload of %s (%s); `foundry gc` will list it", key, _short(error))


def _cache(upload: Upload) -> dict[str, str]:
    return {"CacheControl": upload.cache_control} if upload.cache_control else {}


def _expect(digests: dict[str, str], key: str, actual: str, expected: str | None, path: Path) -> None:
    if expected is not None and actual != expected:
        raise IntegrityError(f"{path}: sha256 of the bytes uploaded is {actual}, expected {expected}; the file changed while uploading")
    digests[key] = actual


# --- downloads -----------------------------------------------------------------------------

def download_files(s3: BaseClient, bucket: str, downloads: Iterable[Download], config: TransferConfig | None = None, *,
                   progress: bool | None = None) -> dict[str, str]:
    """Download every object to its path (parents created); returns key -> sha256. Raises
    IntegrityError when an object's bytes differ from the size or sha256 expected."""
    downloads = list(downloads)
    job = _Transfer(s3, bucket, config, "download", sum(d.size for d in downloads), progress)
    digests: dict[str, str] = {}
    failed = True
    try:
        for download in downloads:
            download.path.parent.mkdir(parents=True, exist_ok=True)
            if download.size <= job.config.multipart_threshold:
                job.window.submit(lambda download=download: _get_whole(job, download), then=lambda result, download=download: _check(digests, download, *result))
            else:
                _get_parts(job, download, digests)
        job.window.drain()
        failed = False
    finally:
        job.close(failed)
    return digests


def _get_whole(job: _Transfer, download: Download) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        try:
            body = job.s3.get_object(Bucket=job.bucket, Key=download.key)["Body"]
            with open(download.path, "wb") as out:
                while block := body.read(_READ_BLOCK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    job.progress.advance(len(block))
        except BaseException:
            job.progress.advance(-size)
            raise
        return size, digest.hexdigest()

    return job.call(get, "download of", download.key)


def _get_parts(job: _Transfer, download: Download, digests: dict[str, str]) -> None:
    handle = open(download.path, "wb")  # noqa: SIM115 - closed with the batch
    job.handles.append(handle)
    handle.truncate(download.size)
    digest = hashlib.sha256()
    received = [0]

    def then(data: bytes) -> None:
        digest.update(data)
        received[0] += len(data)

    def finish(_: None) -> None:
        _check(digests, download, received[0], digest.hexdigest())

    for offset in range(0, download.size, job.config.part_size):
        end = min(offset + job.config.part_size, download.size) - 1
        job.window.submit(lambda offset=offset, end=end: _get_range(job, download.key, handle.fileno(), offset, end), then=then)
    job.window.submit(lambda: None, then=finish)


def _get_range(job: _Transfer, key: str, fd: int, offset: int, end: int) -> bytes:
    def get() -> bytes:
        data = job.s3.get_object(Bucket=job.bucket, Key=key, Range=f"bytes={offset}-{end}")["Body"].read()
        if len(data) != end - offset + 1:
            raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=end - offset + 1)
        return data

    data = job.call(get, "download of", key, f"download {key} bytes {offset}-{end}")
    os.pwrite(fd, data, offset)
    job.progress.advance(len(data))
    return data


def _check(digests: dict[str, str], download: Download, size: int, actual: str) -> None:
    if size != download.size:
        raise IntegrityError(f"s3 object {download.key}: {size} bytes arrived, {download.size} expected (truncated or replaced)")
    if download.sha256 is not None and actual != download.sha256:
        raise IntegrityError(f"s3 object {download.key}: sha256 {actual} differs from the expected {download.sha256} (corrupted)")
    digests[download.key] = actual


# --- hashing in place ----------------------------------------------------------------------

def hash_objects(s3: BaseClient, bucket: str, keys: Iterable[str], config: TransferConfig | None = None) -> dict[str, str | None]:
    """sha256 of each object, read as a stream and never stored; None for a missing key."""
    keys = list(keys)
    job = _Transfer(s3, bucket, config, "verify", 0, False)
    digests: dict[str, str | None] = {}
    failed = True
    try:
        for key in keys:
            job.window.submit(lambda key=key: _hash_one(job, key), then=lambda value, key=key: digests.__setitem__(key, value))
        job.window.drain()
        failed = False
    finally:
        job.close(failed)
    return digests


def _hash_one(job: _Transfer, key: str) -> str | None:
    def get() -> str | None:
        try:
            body = job.s3.get_object(Bucket=job.bucket, Key=key)["Body"]
        except botocore.exceptions.ClientError as error:
            if error_code(error) in ("NoSuchKey", "404"):
                return None
            raise
        digest = hashlib.sha256()
        while block := body.read(_READ_BLOCK):
            digest.update(block)
        return digest.hexdigest()

    return job.call(get, "read of", key)
