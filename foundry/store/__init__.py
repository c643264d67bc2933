"""The artifact store every stage reads from and commits to.

`open_store(url)` picks the implementation from the URL's scheme: a plain path or `file://`
(store/local.py), or `s3://BUCKET/PREFIX` (store/s3.py, imported only then, so commands
that never touch S3 never import boto3), both with the same commit discipline.
"""

import os
from pathlib import Path

from foundry.errors import UserError
from foundry.store.base import SUCCESS_MARKER, BrokenMarker, CommittedKey, DamagedKey, Leftover, Store, build_record, parse_marker
from foundry.store.local import LocalStore

DEFAULT_STORE = "./.foundry/store"
STORE_ENV = "FOUNDRY_STORE"

__all__ = [
    "SUCCESS_MARKER", "BrokenMarker", "CommittedKey", "DamagedKey", "Leftover", "Store", "build_record", "open_store", "parse_marker", "resolve_store_url",
]


def resolve_store_url(flag: str | None) -> str:
    """--store wins over $FOUNDRY_STORE, which wins over the default folder."""
    return flag or os.environ.get(STORE_ENV) or DEFAULT_STORE


def open_store(url: str) -> Store:
    if url.startswith("s3://"):
        from foundry.s3.client import parse
        from foundry.store.s3 import S3Store

        return S3Store(parse(url, f"store {url}"))
    if "://" in url and not url.startswith("file://"):
        raise UserError(f"store {url}: unsupported scheme; expected a local folder, file://PATH or s3://BUCKET/PREFIX")
    return LocalStore(Path(url.removeprefix("file://")))
