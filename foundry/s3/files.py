"""Objects under an S3 prefix seen as a folder: listed once, hashed in place.

`S3Files` is the remote `manifest.FileSource`, so `foundry verify` checks a published model
or a stage key in a bucket with the very rules it applies to a local folder, without
keeping a copy.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from foundry.s3.client import S3Location, is_missing
from foundry.s3.transfer import TransferConfig, hash_objects


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    modified: datetime
    etag: str = ""


def list_objects(s3: BaseClient, bucket: str, prefix: str) -> Iterator[S3Object]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield S3Object(item["Key"], int(item["Size"]), item["LastModified"], item.get("ETag", ""))


def delete_objects(s3: BaseClient, bucket: str, keys: list[str]) -> None:
    """Delete `keys`, a thousand per request (the API's limit), failing on any refusal."""
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start:start + 1000]]
        response = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise RuntimeError(f"s3://{bucket}/{first.get('Key')}: delete refused ({first.get('Code')}: {first.get('Message')})")


def read_bytes(s3: BaseClient, location: S3Location) -> bytes | None:
    """The object at `location`, or None when there is no such object."""
    try:
        return s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    except ClientError as error:
        if is_missing(error):
            return None
        raise


def read_json(s3: BaseClient, location: S3Location) -> Any | None:
    """The JSON document at `location`, or None when there is no such object."""
    body = read_bytes(s3, location)
    return None if body is None else json.loads(body)


class S3Files:
    """`skip`: a sub-folder (`name/`) that is not part of the folder's files (a store key's attempts)."""

    def __init__(self, s3: BaseClient, location: S3Location, config: TransferConfig | None = None, skip: str | None = None) -> None:
        self.s3, self.location, self.config, self.skip = s3, location, config, skip

    def sizes(self) -> dict[str, int]:
        prefix = self.location.prefix
        found = {item.key.removeprefix(prefix): item.size for item in list_objects(self.s3, self.location.bucket, prefix) if not item.key.endswith("/")}
        return {path: size for path, size in found.items() if not (self.skip and path.startswith(self.skip))}

    def digests(self, paths: list[str]) -> dict[str, str | None]:
        keys = {self.location.child(path).key: path for path in paths}
        found = hash_objects(self.s3, self.location.bucket, keys, self.config)
        return {keys[key]: digest for key, digest in found.items()}
