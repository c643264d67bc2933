"""`models.json` in a bucket, rewritten with compare-and-swap instead of a lock.

Each writer reads the catalogue and its ETag, merges its entry with `catalog.merge_entry`
(the same pure merge as the local catalogue), and writes back only if nobody wrote in
between: `If-None-Match: *` when it creates the object, `If-Match: <etag>` when it replaces
it. A writer that lost the race (412 Precondition Failed, or 409 while another conditional
write is in flight) reads again, merges again and retries after a jittered pause, so
concurrent publishers never lose each other's entries.
"""

import logging
import random
import time
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from foundry import catalog
from foundry.errors import UserError
from foundry.s3.client import S3Location, is_missing, lost_race, user_errors

LOG = logging.getLogger("foundry.catalog")
CACHE_CONTROL = "no-cache"          # clients revalidate (cheap, with the ETag) on every load
CONTENT_TYPE = "application/json"
DEADLINE_SECONDS = 300.0


def read(s3: BaseClient, location: S3Location) -> tuple[dict[str, Any], str | None]:
    """The catalogue and its ETag; an absent object is an empty catalogue with no ETag."""
    with user_errors(s3, location.bucket, f"catalog {location.url}"):
        try:
            response = s3.get_object(Bucket=location.bucket, Key=location.key)
        except ClientError as error:
            if is_missing(error):
                return {}, None
            raise
        body = response["Body"].read()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"catalog {location.url}: not UTF-8 text; fix or remove the object, Foundry will not overwrite it") from None
    return catalog.parse(text, location.url), response["ETag"]


def update(s3: BaseClient, location: S3Location, key: str, entry: dict[str, Any], *, deadline_seconds: float = DEADLINE_SECONDS) -> dict[str, Any]:
    """Set one entry, keeping every other one, however many writers race; returns what was written."""
    give_up = time.monotonic() + deadline_seconds
    attempt = 0
    while True:
        attempt += 1
        current, etag = read(s3, location)
        merged = catalog.merge_entry(current, key, entry)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            with user_errors(s3, location.bucket, f"catalog {location.url}"):
                s3.put_object(Bucket=location.bucket, Key=location.key, Body=catalog.dump(merged).encode("utf-8"),
                              ContentType=CONTENT_TYPE, CacheControl=CACHE_CONTROL, **condition)
            return merged
        except ClientError as error:
            if not lost_race(error, replacing=etag is not None):
                raise
            if time.monotonic() > give_up:
                raise RuntimeError(f"catalog {location.url}: still losing the race to concurrent writers after {attempt} attempts; try again") from error
            delay = random.uniform(0, min(2.0, 0.05 * 2 ** min(attempt, 6)))
            LOG.info("catalog %s changed while %s was being merged in; merging again in %.2fs", location.url, key, delay)
            time.sleep(delay)
