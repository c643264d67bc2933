"""Publishing a laid-out model folder to a bucket, so that no client sees half a model.

The files go to `<to>/<id>/<version>/`, where the version is a hash of every file's path and
sha256: a re-publish with other bytes lands in a new folder instead of over the files a
client may be loading, so every file is immutable and is served as such. The order is every
file but the manifest (in parallel, each checked against its sha256), then the manifest,
then the `models.json` rewrite (foundry/s3/catalog.py), which is the moment the new version
becomes visible. A re-run of the same version finds its manifest and uploads nothing again.
The catalogue page (foundry/web/) goes beside `models.json` last, with a short cache.
"""

import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.client import BaseClient

from foundry import catalog, manifest
from foundry.errors import UserError
from foundry.hashing import short_hash
from foundry.s3 import catalog as s3catalog
from foundry.s3.client import S3Location, check_bucket, client, is_s3, parse, user_errors
from foundry.s3.files import S3Object, delete_objects, list_objects, read_bytes, read_json
from foundry.s3.transfer import TransferConfig, Upload, upload_files
from foundry.web import assets, page

LOG = logging.getLogger("foundry.publish")
IMMUTABLE = "public, max-age=31536000, immutable"
MANIFEST_CACHE = "no-cache"
PAGE_CACHE = "public, max-age=300"   # the catalogue page: a new Foundry's page shows within minutes
_CONTENT_TYPES = {".json": "application/json", ".onnx": "application/octet-stream", ".jinja": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class S3Target:
    to: S3Location
    catalog: S3Location
    s3: BaseClient

    def as_paths(self) -> tuple[Path, Path]:
        """`to` and the catalogue as absolute paths (/bucket/key), for catalog.base_url's rule."""
        return Path(f"/{self.to.bucket}/{self.to.key}"), Path(f"/{self.catalog.bucket}/{self.catalog.key}")

    @staticmethod
    def version(folder: Path) -> str:
        """The content hash that names a published folder: every file's path and sha256."""
        return short_hash([[entry["path"], entry["sha256"]] for entry in manifest.read(folder)["files"]], length=16)

    def publish(self, out: Path, model_id: str, version: str, key: str, entry: dict[str, Any], config: TransferConfig | None = None) -> str:
        """Upload `out` (files, then manifest), then set `key` in the catalogue; returns the folder's URL."""
        folder = self.to.child(model_id, version)
        files = manifest.read(out)["files"]
        with user_errors(self.s3, folder.bucket, f"publish.to {self.to.url}"):
            existing = read_json(self.s3, folder.child(manifest.MANIFEST_NAME))
            if isinstance(existing, dict) and existing.get("files") == files:
                LOG.info("publish: %s already holds these files; not uploading them again", folder.url)
            else:
                uploads = [Upload(out / entry["path"], folder.child(entry["path"]).key, entry["sha256"], content_type(entry["path"]), IMMUTABLE) for entry in files]
                upload_files(self.s3, folder.bucket, uploads, config)
                self.s3.put_object(Bucket=folder.bucket, Key=folder.child(manifest.MANIFEST_NAME).key, Body=(out / manifest.MANIFEST_NAME).read_bytes(),
                                   ContentType="application/json", CacheControl=MANIFEST_CACHE)
        s3catalog.update(self.s3, self.catalog, key, entry)
        return folder.url + "/"

    def publish_page(self) -> list[str]:
        """Put the catalogue page beside models.json, by foundry/web/page.py's rule; returns the URLs written."""
        parent = S3Location(self.catalog.bucket, self.catalog.key.rpartition("/")[0])
        written = []
        with user_errors(self.s3, parent.bucket, f"publish.catalog {self.catalog.url}"):
            for name, source in assets.page_files().items():
                where = parent.child(name)
                if name == assets.INDEX and page.skip_index(read_bytes(self.s3, where), where.url):
                    continue
                self.s3.put_object(Bucket=where.bucket, Key=where.key, Body=source.read_bytes(), ContentType=assets.content_type(name), CacheControl=PAGE_CACHE)
                written.append(where.url)
        return written


def unfinished_versions(to: str) -> list[tuple[str, int, float]]:
    """(URL, bytes, newest upload's time) of each `<to>/<id>/<version>/` folder without its
    manifest: a publish killed while uploading (`foundry gc` lists them; a re-run of the same
    version completes one instead)."""
    where = parse(to, "publish.to")
    s3 = client()
    folders: dict[str, list[S3Object]] = {}
    with user_errors(s3, where.bucket, f"publish.to {to}"):
        for item in list_objects(s3, where.bucket, where.prefix):
            parts = item.key.removeprefix(where.prefix).split("/", 2)
            if len(parts) == 3:
                folders.setdefault(f"{parts[0]}/{parts[1]}", []).append(item)
    return [
        (where.child(folder).url + "/", sum(item.size for item in items), max(item.modified.timestamp() for item in items))
        for folder, items in sorted(folders.items())
        if where.child(folder, manifest.MANIFEST_NAME).key not in {item.key for item in items}
    ]


def remove_unfinished(url: str) -> None:
    """Delete a version folder `unfinished_versions` listed, unless its manifest arrived since."""
    folder = parse(url, "publish.to")
    s3 = client()
    with user_errors(s3, folder.bucket, f"publish.to {url}"):
        if read_bytes(s3, folder.child(manifest.MANIFEST_NAME)) is None:
            delete_objects(s3, folder.bucket, [item.key for item in list_objects(s3, folder.bucket, folder.prefix)])


def wants_s3(to: Any, catalog_location: Any) -> bool:
    """Whether this publish goes to a bucket; mixing a bucket and a local folder is refused."""
    if not (is_s3(to) or is_s3(catalog_location)):
        return False
    if not is_s3(to) or not (catalog_location is None or is_s3(catalog_location)):
        raise UserError(f"publish: publish.to ({to}) and publish.catalog ({catalog_location}) must both be s3:// URLs or both local paths")
    return True


def open_target(to: str, catalog_location: str | None) -> S3Target:
    """Check the buckets and read the catalogue now, before any heavy work or upload."""
    target = parse(to, "publish.to")
    where = parse(catalog_location, "publish.catalog") if catalog_location else target.child(catalog.CATALOG_NAME)
    if not where.key or (catalog_location or "").endswith("/"):
        raise UserError(f"publish.catalog: {catalog_location}: name the catalogue object, e.g. {where.child(catalog.CATALOG_NAME).url}")
    s3 = client()
    check_bucket(s3, target, "publish.to")
    if where.bucket != target.bucket:
        check_bucket(s3, where, "publish.catalog")
    s3catalog.read(s3, where)       # an invalid catalogue is refused before anything is uploaded
    return S3Target(target, where, s3)


def content_type(path: str) -> str:
    name = path.rpartition("/")[2]
    if ".onnx_data" in name:
        return "application/octet-stream"
    suffix = "." + name.rpartition(".")[2] if "." in name else ""
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
