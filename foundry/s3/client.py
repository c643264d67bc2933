"""Where an s3:// URL points, a client configured for it, and errors a person can act on.

The endpoint is `FOUNDRY_S3_ENDPOINT` when set, else whatever boto3 resolves itself
(`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, or AWS).
Credentials and region come from boto3's standard chain. `FOUNDRY_S3_ADDRESSING=path`
selects path-style URLs (MinIO, Ceph and most self-hosted servers need it).

Every failure that is the user's to fix (a missing bucket, refused credentials, an endpoint
that does not answer, a wrong region) becomes one `UserError` line naming the endpoint, the
bucket and what to check; `check_bucket` raises it before anything is written.
"""

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

from foundry.errors import UserError

ENDPOINT_ENV = "FOUNDRY_S3_ENDPOINT"
ADDRESSING_ENV = "FOUNDRY_S3_ADDRESSING"
_ADDRESSING = ("auto", "path", "virtual")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")

_REFUSED = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
    "AccessDenied", "AllAccessDisabled", "InvalidSecurity", "403",
}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key or key prefix inside it, without leading or trailing slashes."""

    bucket: str
    key: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    @property
    def prefix(self) -> str:
        """The key as a folder: '' for the bucket's root, else the key and a slash."""
        return f"{self.key}/" if self.key else ""

    def child(self, *parts: str) -> "S3Location":
        return S3Location(self.bucket, "/".join(part.strip("/") for part in (self.key, *parts) if part.strip("/")))


def is_s3(location: Any) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


def parse(url: str, what: str) -> S3Location:
    """`s3://bucket/some/prefix/` -> S3Location('bucket', 'some/prefix')."""
    if not is_s3(url):
        raise UserError(f"{what}: {url!r} is not an s3://BUCKET/PREFIX URL")
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UserError(f"{what}: {url}: {bucket!r} is not a valid bucket name (3-255 letters, digits, '.', '-', '_')")
    parts = [part for part in key.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise UserError(f"{what}: {url}: '.' and '..' are not allowed in an S3 key")
    return S3Location(bucket, "/".join(parts))


# --- clients -------------------------------------------------------------------------------

_clients: dict[tuple[tuple[str, str], ...], BaseClient] = {}
_clients_lock = threading.Lock()


def client() -> BaseClient:
    """An S3 client for the current environment; one per distinct configuration, shared by
    threads (boto3 clients are thread-safe, creating them is not)."""
    snapshot = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith(("AWS_", "FOUNDRY_S3_"))))
    with _clients_lock:
        if snapshot not in _clients:
            _clients[snapshot] = _new_client()
        return _clients[snapshot]


def _new_client() -> BaseClient:
    addressing = os.environ.get(ADDRESSING_ENV, "auto").strip().lower() or "auto"
    if addressing not in _ADDRESSING:
        raise UserError(f"{ADDRESSING_ENV}={addressing}: expected one of {', '.join(_ADDRESSING)} (path for MinIO and most self-hosted servers)")
    options: dict[str, Any] = {
        "max_pool_connections": 32,
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"mode": "standard"},     # 3 attempts, or AWS_MAX_ATTEMPTS
        # Integrity is the sha256 Foundry checks end to end; signing every payload again
        # over plain-HTTP endpoints would hash each byte a second time.
        "s3": {"addressing_style": addressing, "payload_signing_enabled": False},
    }
    # boto3's newer default sends CRC trailers that several S3-compatible servers refuse;
    # keep them to the operations that require them, unless the user chose otherwise.
    if "AWS_REQUEST_CHECKSUM_CALCULATION" not in os.environ:
        options["request_checksum_calculation"] = "when_required"
    if "AWS_RESPONSE_CHECKSUM_VALIDATION" not in os.environ:
        options["response_checksum_validation"] = "when_required"
    endpoint = os.environ.get(ENDPOINT_ENV) or None
    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint, config=Config(**options))
    except ValueError as error:         # a malformed endpoint URL
        raise UserError(f"S3 endpoint {endpoint or os.environ.get('AWS_ENDPOINT_URL')!r}: {error}; check {ENDPOINT_ENV} / AWS_ENDPOINT_URL") from None
    except BotoCoreError as error:      # a profile that does not exist, an invalid config file
        raise UserError(f"S3 client: {error}; check AWS_PROFILE and ~/.aws/config") from None


def endpoint_of(s3: BaseClient) -> str:
    return str(s3.meta.endpoint_url)


# --- errors --------------------------------------------------------------------------------

_LOST_RACE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def error_code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


def is_missing(error: BaseException) -> bool:
    """A key (not a bucket) that is not there."""
    return error_code(error) in ("NoSuchKey", "404", "NotFound")


def lost_race(error: BaseException, *, replacing: bool) -> bool:
    """Whether a conditional PUT (If-None-Match: *, or If-Match: <etag> when `replacing`) failed
    because another writer got there first: 412 Precondition Failed, 409 while another
    conditional write is in flight, or (If-Match) 404 on an object deleted meanwhile."""
    return error_code(error) in _LOST_RACE or (replacing and is_missing(error))


def explain(error: BaseException, s3: BaseClient, bucket: str, what: str, *, unreachable: bool = False) -> UserError | None:
    """The user's fix for `error`, as one line; None when it is not theirs to fix.

    An endpoint that does not answer is the user's to fix only when `unreachable` says so
    (the first contact, in `check_bucket`); later it is an outage, and a stage that fails on
    it should be retried rather than refused.
    """
    endpoint = endpoint_of(s3)
    where = f"{what}: endpoint {endpoint}, bucket {bucket}"
    if isinstance(error, NoCredentialsError):
        return UserError(f"{where}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if unreachable and isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
        return UserError(f"{where}: cannot reach the endpoint ({_reason(error)}); check AWS_ENDPOINT_URL or {ENDPOINT_ENV} and that the server is up")
    if not isinstance(error, ClientError):
        return None
    code = error_code(error)
    if code == "NoSuchBucket":
        return UserError(f"{where}: the bucket does not exist; check the bucket name, or create it")
    if code in _REFUSED:
        return UserError(f"{where}: credentials refused ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and that they may list, read and write the bucket")
    if code in _WRONG_REGION:
        actual = _bucket_region(error)
        fix = f"set AWS_REGION={actual}" if actual else "set AWS_REGION to the bucket's region"
        return UserError(f"{where}: the bucket is in region {actual or 'another region'}, not {s3.meta.region_name}; {fix}")
    if code == "NotImplemented":
        detail = error.response.get("Error", {}).get("Message", "")
        return UserError(f"{where}: the server does not implement {error.operation_name} ({detail}); Foundry needs an S3-compatible server with conditional writes")
    return None


def _reason(error: BaseException) -> str:
    text = str(error)
    return "connection refused" if "refused" in text.lower() or "Could not connect" in text else type(error).__name__


def _bucket_region(error: ClientError) -> str | None:
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers.get("x-amz-bucket-region") or error.response.get("Error", {}).get("Region") or None


@contextlib.contextmanager
def user_errors(s3: BaseClient, bucket: str, what: str, *, unreachable: bool = False) -> Iterator[None]:
    """Turn the errors `explain` knows into UserErrors; let the rest through as they are."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        explained = explain(error, s3, bucket, what, unreachable=unreachable)
        if explained is None:
            raise
        raise explained from None


def check_bucket(s3: BaseClient, location: S3Location, what: str) -> None:
    """Fail now, with the user's fix, when the bucket cannot be listed: before anything is written."""
    with user_errors(s3, location.bucket, what, unreachable=True):
        s3.list_objects_v2(Bucket=location.bucket, Prefix=location.prefix, MaxKeys=1)
