"""The artifact store every stage reads from and commits to.

`open_store(url)` picks the implementation from the URL's scheme. Only `file://` (or a
plain path) exists so far; `s3://` plugs in here with the same commit discipline.
"""

import os
from pathlib import Path

from foundry.errors import UserError
from foundry.store.base import SUCCESS_MARKER, CommittedKey, Store, build_record
from foundry.store.local import LocalStore

DEFAULT_STORE = "./.foundry/store"
STORE_ENV = "FOUNDRY_STORE"

__all__ = ["SUCCESS_MARKER", "CommittedKey", "Store", "build_record", "open_store", "resolve_store_url"]


def resolve_store_url(flag: str | None) -> str:
    """--store wins over $FOUNDRY_STORE, which wins over the default folder."""
    return flag or os.environ.get(STORE_ENV) or DEFAULT_STORE


def open_store(url: str) -> Store:
    if url.startswith("s3://"):
        raise UserError(f"store {url}: s3:// stores are not available in this version; use a local folder or file:// URL")
    if "://" in url and not url.startswith("file://"):
        raise UserError(f"store {url}: unsupported scheme; expected a local folder, file://PATH or s3://BUCKET/PREFIX")
    return LocalStore(Path(url.removeprefix("file://")))
