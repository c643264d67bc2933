"""A model folder kept under an S3 prefix (`s3://bucket/models/my-merge/`), as a local folder.

The prefix is listed once; its objects are downloaded in parallel into
`$FOUNDRY_CACHE/models/s3/<bucket>/<prefix>/` by way of a temporary folder renamed into
place when whole, so a cached model is either complete or absent. The listing (keys, sizes,
ETags) is kept beside the files: the next stage on the same machine downloads nothing, and
a model replaced in the bucket is downloaded again. Pickled weights are not even fetched
unless the recipe allows them, as with the hub.
"""

import json
import shutil
import uuid
from pathlib import Path

from foundry.errors import UserError
from foundry.s3 import client as s3client
from foundry.s3.files import list_objects
from foundry.s3.transfer import Download, download_files
from foundry.store.s3 import cache_root, swap_in

LISTING = ".foundry-s3-listing.json"


def download_model(reference: str, *, pickle_suffixes: tuple[str, ...], allow_pickle: bool) -> Path:
    where = s3client.parse(reference, f"model {reference}")
    if not where.key:
        raise UserError(f"model {reference}: name the model's folder under the bucket (s3://bucket/models/name/), not the bucket alone")
    s3 = s3client.client()
    prefix = where.key + "/"
    with s3client.user_errors(s3, where.bucket, f"model {reference}", unreachable=True):
        objects = [item for item in list_objects(s3, where.bucket, prefix) if allow_pickle or not item.key.endswith(pickle_suffixes)]
    if not objects:
        raise UserError(f"model {reference}: no objects under s3://{where.bucket}/{prefix}; check the prefix (a folder holding config.json and *.safetensors)")
    listing = sorted([item.key.removeprefix(prefix), item.size, item.etag] for item in objects)
    target = cache_root() / "models" / "s3" / where.bucket / where.key
    if _cached_listing(target) == listing:
        return target
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        downloads = [Download(item.key, temporary / item.key.removeprefix(prefix), item.size) for item in objects]
        with s3client.user_errors(s3, where.bucket, f"model {reference}", unreachable=True):
            download_files(s3, where.bucket, downloads)
        (temporary / LISTING).write_text(json.dumps(listing))
        swap_in(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def _cached_listing(folder: Path) -> list[list[object]] | None:
    try:
        return json.loads((folder / LISTING).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
