"""Publishing a laid-out model folder to a bucket, so that no client sees half a model.

The files go to `<to>/<id>/<version>/`, where the version is a hash of every file's path and
sha256: a re-publish with other bytes lands in a new folder instead of over the files a
client may be loading, so every file is immutable and is served as such. The order is every
file but the manifest (in parallel, each checked against its sha256), then the manifest,
then the `models.json` rewrite (foundry/s3/catalog.py), which is the moment the new version
becomes visible. A re-run of the same version finds its manifest and uploads nothing again.
The catalogue page (foundry/web/) goes beside `models.json` last, with a short cache.

A publish killed mid-upload leaves a version folder without its manifest. So that it can be
told from one being uploaded, each writer first puts an empty tag beside the folder,
`<to>/<id>/.<version>.tmp-<pid>-<random>@<host>` (foundry/temporaries.py's name), and deletes
it when done. A folder without its manifest whose tags are all a dead writer's (this host,
no such process) is removed by the next publish of that model and by `foundry gc`, whatever
its age; one with a live writer's tag never; one with no tag (an older Foundry) or another
host's only by age (a day for a publish; gc's --older-than). A publish that fails without
being killed keeps its tag, so its upload becomes a dead writer's once the process exits (or
is completed by a later try in the same process, which then removes the tags of both): it
cannot delete the files itself, since a concurrent publisher of the same bytes may be
uploading the very same objects.
"""

import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.client import BaseClient

from foundry import catalog, manifest, temporaries
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
            for removed in clear_unfinished(self.s3, self.to.child(model_id)):
                LOG.info("publish: removed %s, left by a publish that was killed", removed)
            existing = read_json(self.s3, folder.child(manifest.MANIFEST_NAME))
            if isinstance(existing, dict) and existing.get("files") == files:
                LOG.info("publish: %s already holds these files; not uploading them again", folder.url)
            else:
                tag = self.to.child(model_id, temporaries.hidden_name(version))
                self.s3.put_object(Bucket=tag.bucket, Key=tag.key, Body=b"")
                uploads = [Upload(out / entry["path"], folder.child(entry["path"]).key, entry["sha256"], content_type(entry["path"]), IMMUTABLE) for entry in files]
                upload_files(self.s3, folder.bucket, uploads, config)
                self.s3.put_object(Bucket=folder.bucket, Key=folder.child(manifest.MANIFEST_NAME).key, Body=(out / manifest.MANIFEST_NAME).read_bytes(),
                                   ContentType="application/json", CacheControl=MANIFEST_CACHE)
                own = [item.key for item in list_objects(self.s3, tag.bucket, self.to.child(model_id, f".{version}.tmp-").key) if temporaries.is_own(_name(item.key))]
                delete_objects(self.s3, tag.bucket, own)        # this one, and any of an earlier failed try of this process
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


@dataclass(frozen=True)
class Unfinished:
    """What a publish that never finished left in a bucket: a version folder without its
    manifest (`url` ends with /, its writers' tags go with it), or a writer's tag alone."""

    url: str
    size_bytes: int
    modified: float         # the newest object's time
    dead: bool              # every writer it names is gone; else only its age tells


def unfinished_versions(to: str) -> list[Unfinished]:
    """What killed publishes left under `to` (`<to>/<id>/...`), a live writer's excluded."""
    where = parse(to, "publish.to")
    s3 = client()
    with user_errors(s3, where.bucket, f"publish.to {to}"):
        return _unfinished(s3, where, depth=2)


def _unfinished(s3: BaseClient, where: S3Location, *, depth: int) -> list[Unfinished]:
    """`depth` 2: `where` holds model folders (`<id>/<version>/...`); 1: it is one model's folder."""
    folders: dict[str, list[S3Object]] = {}
    tags: dict[str, list[S3Object]] = {}        # by the version folder each names
    for item in list_objects(s3, where.bucket, where.prefix):
        parts = item.key.removeprefix(where.prefix).split("/", depth)
        if len(parts) == depth + 1:
            folders.setdefault("/".join(parts[:depth]), []).append(item)
        elif len(parts) == depth and temporaries.writer_state(parts[-1]) is not None:
            tags.setdefault("/".join([*parts[:-1], parts[-1][1:].partition(".tmp-")[0]]), []).append(item)
    found = []
    for folder in sorted(set(folders) | set(tags)):
        items, writers = folders.get(folder, []), tags.get(folder, [])
        states = {_writer_state(tag.key) for tag in writers}
        if "live" in states:
            continue
        dead = bool(states) and states == {"dead"}
        if items and where.child(folder, manifest.MANIFEST_NAME).key not in {item.key for item in items}:
            everything = items + writers
            found.append(Unfinished(where.child(folder).url + "/", sum(item.size for item in everything), max(item.modified.timestamp() for item in everything), dead))
        else:
            found += [Unfinished(S3Location(where.bucket, tag.key).url, tag.size, tag.modified.timestamp(), _writer_state(tag.key) == "dead")
                      for tag in writers]
    return found


def clear_unfinished(s3: BaseClient, model_folder: S3Location, now: float | None = None) -> list[str]:
    """Remove what killed publishes left in one model's folder: a dead writer's, or anything
    older than a day (temporaries' rule); returns the URLs removed."""
    now = time.time() if now is None else now
    stale = [item.url for item in _unfinished(s3, model_folder, depth=1) if item.dead or now - item.modified >= temporaries.UNCHECKABLE_AFTER_SECONDS]
    for url in stale:
        _remove(s3, url)
    return stale


def remove_unfinished(url: str) -> None:
    """Delete what `unfinished_versions` listed, unless a manifest or a live writer arrived since."""
    _remove(client(), url)


def _remove(s3: BaseClient, url: str) -> None:
    where = parse(url, "publish.to")
    with user_errors(s3, where.bucket, f"publish.to {url}"):
        if not url.endswith("/"):       # a writer's tag
            if _writer_state(where.key) != "live":
                s3.delete_object(Bucket=where.bucket, Key=where.key)
            return
        parent, _, version = where.key.rpartition("/")
        tags = [item.key for item in list_objects(s3, where.bucket, f"{parent}/.{version}.tmp-")]
        if read_bytes(s3, where.child(manifest.MANIFEST_NAME)) is not None or any(_writer_state(tag) == "live" for tag in tags):
            return
        delete_objects(s3, where.bucket, [item.key for item in list_objects(s3, where.bucket, where.prefix)] + tags)


def _writer_state(key: str) -> str | None:
    """temporaries.writer_state of the object `key` names: "dead", "live", "unknown", or None
    for an object that is not a writer's tag."""
    return temporaries.writer_state(_name(key))


def _name(key: str) -> str:
    return key.rpartition("/")[2]


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
