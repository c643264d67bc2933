"""`models.json`, the catalogue web clients read: one entry per published model.

The shape web clients already read (kept, keys added beside it):

    {"<key>": {"id": "orion-dev-polyglot-v1-q4", "name": "ORION Dev Polyglot", "size_mb": 1200.0,
               "urls": {"base": "/models/orion-dev-polyglot-v1-q4/"},
               "metadata": {"fusion": {"method": "slerp", "sources": [...], "created_by": "Foundry 0.1.0"}},
               "default_variant": "q4",
               "variants": {"q4": {"file": "onnx/model_q4.onnx", "dtype": "q4",
                                   "devices": {"webgpu": {"features": []}, "wasm": {"features": []}},
                                   "size_mb": ..., "chunks": 3, "sha256": "...", "top1_agreement": 0.98}},
               "recipe_hash": "...", "published": "2025-01-01T00:00:00Z"}}

A variant's `dtype` is the transformers.js option that loads it; `devices` says where it runs
(transformers.js `device` names, most preferred first, each with the WebGPU adapter features
it needs, e.g. fp16's `["shader-f16"]`; foundry/web/devices.py, docs/webgpu.md).

The module keeps three things apart, so that a catalogue in a bucket (foundry/s3/catalog.py:
a conditional PUT on the object's ETag instead of a lock) reuses the middle one:
- parsing and dumping the document (`parse`, `dump`);
- the merge, pure (`merge_entry`, `remove_entry`): every other entry is kept as it was;
- local storage (`read`, `write`, `locked`, `update`): an fcntl lock file beside the
  catalogue serialises writers, and each write goes to a temporary file in the same folder
  and is swapped in with `os.replace`, so a reader sees the old or the new file, whole.

Light: stdlib only; the CLI imports it.
"""

import contextlib
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foundry import __version__, temporaries
from foundry.errors import UserError

CATALOG_NAME = "models.json"
LOCK_SUFFIX = ".lock"
# transformers.js loads at most this many external data chunks per model file
# (MAX_EXTERNAL_DATA_CHUNKS in huggingface/transformers.js src/utils/hub.js).
MAX_EXTERNAL_DATA_CHUNKS = 100


# --- locations -----------------------------------------------------------------------------

def local_path(location: str | os.PathLike[str], what: str = "publish.to") -> Path:
    """A local path from a plain path or a file:// URL; s3:// and other schemes are refused."""
    text = os.fspath(location)
    if not text:
        raise UserError(f"{what}: empty location; give a local folder or a file:// URL")
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme == "s3":
        raise UserError(f"{what}: {text}: an s3:// URL where a local path is needed (foundry/s3/catalog.py handles catalogues in buckets)")
    if scheme == "file":
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise UserError(f"{what}: {text}: file:// URLs must name a local path (file:///path)")
        return Path(urllib.request.url2pathname(parts.path)).expanduser()
    if scheme and len(scheme) > 1:      # one letter: a Windows drive, not a scheme
        raise UserError(f"{what}: {text}: unsupported scheme {scheme}://; use a local folder or a file:// URL")
    return Path(text).expanduser()


def validate_id(model_id: Any, what: str = "publish.entry.id") -> str:
    """An entry id that names one folder inside the publish target, nothing else."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise UserError(f"{what}: must be a non-empty string, got {model_id!r}")
    if "/" in model_id or "\\" in model_id or ".." in model_id or model_id.startswith("."):
        raise UserError(f"{what}: {model_id!r} would leave the publish folder; an id may not contain '/', '\\' or '..' nor start with '.'")
    if any(ord(char) < 32 or ord(char) == 127 for char in model_id):
        raise UserError(f"{what}: {model_id!r} contains control characters")
    return model_id


def base_url(to: Path, catalog_path: Path, model_id: str) -> str:
    """The `urls.base` of an entry: `/models/<id>/` when `to` is a folder named models (the
    web root's models folder, as ORION serves it), else the model folder relative to the
    catalogue's folder (`<id>/` when the catalogue sits in `to`)."""
    quoted = urllib.parse.quote(model_id)
    target = Path(os.path.abspath(to))
    if target.name == "models":
        return f"/models/{quoted}/"
    relative = os.path.relpath(target / model_id, os.path.abspath(catalog_path.parent))
    parts = [urllib.parse.quote(part) for part in Path(relative).parts]
    return "/".join(parts) + "/"


# --- the document --------------------------------------------------------------------------

def parse(text: str, source: str) -> dict[str, Any]:
    """The catalogue in `text`; an empty document is an empty catalogue."""
    if not text.strip():
        return {}
    try:
        catalog = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"catalog {source}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "fix or remove the file, Foundry will not overwrite it"
        ) from None
    if not isinstance(catalog, dict):
        raise UserError(f"catalog {source}: expected a JSON object of entries, found {type(catalog).__name__}; Foundry will not overwrite it")
    return catalog


def dump(catalog: dict[str, Any]) -> str:
    return json.dumps(catalog, indent=2, ensure_ascii=False) + "\n"


def merge_entry(catalog: dict[str, Any], key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A new catalogue with `key` set to `entry`; every other entry, and the order, kept."""
    if not isinstance(key, str) or not key:
        raise UserError(f"catalog entry key must be a non-empty string, got {key!r}")
    merged = dict(catalog)
    merged[key] = entry
    return merged


def remove_entry(catalog: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in catalog.items() if name != key}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def build_entry(
    *, model_id: str, name: str | None, size_mb: float, base: str, variants: dict[str, dict[str, Any]],
    default_variant: str | None, recipe_hash: str | None, fusion: dict[str, Any] | None,
    description: str | None = None, published: str | None = None, metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One entry in the shape web clients read. Without a merge, `metadata` holds only who made it."""
    created_by = f"Foundry {__version__}"
    if fusion:
        metadata: dict[str, Any] = {"fusion": {"method": fusion.get("method"), "sources": list(fusion.get("sources") or []), "created_by": created_by}}
    else:
        metadata = {"created_by": created_by}
    entry: dict[str, Any] = {"id": model_id, "name": name or model_id}
    if description:
        entry["description"] = description
    entry.update({
        "size_mb": size_mb,
        "urls": {"base": base},
        "metadata": metadata,
        "default_variant": default_variant,
        "variants": variants,
        "recipe_hash": recipe_hash,
        "published": published or now_iso(),
    })
    if metrics:
        entry["metrics"] = metrics  # the evaluate stage's, flat: {"arc_easy.acc_norm": 0.47, ...}
    return entry


# --- local storage -------------------------------------------------------------------------

def read(path: Path) -> dict[str, Any]:
    """The catalogue at `path`; a missing file is an empty catalogue."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise UserError(f"catalog {path}: not UTF-8 text; fix or remove the file, Foundry will not overwrite it") from None
    return parse(text, str(path))


def write(path: Path, catalog: dict[str, Any]) -> None:
    """Replace the catalogue at `path` whole: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporaries.beside(path)
    # Web servers must read it: 0644 (less the umask), or the mode of the file it replaces.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dump(catalog))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def lock_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + LOCK_SUFFIX)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of the catalogue at `path` (a `<name>.lock` file beside it).

    flock, not lockf: flock locks belong to the open file, so two threads of one process
    exclude each other as two processes do; the kernel drops the lock if the holder dies.
    Not re-entrant: do not call `update` (which locks) while holding it; use `lock=False`.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise UserError("writing a local catalog needs POSIX file locks (fcntl), which this platform lacks") from None
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)        # closing the file releases the lock


def update(path: Path, key: str, entry: dict[str, Any], *, lock: bool = True) -> dict[str, Any]:
    """Set one entry of the catalogue at `path`, keeping every other one; returns the catalogue written.

    Read, merge and write happen under the lock, so concurrent publishers never lose each
    other's entries. Pass `lock=False` only while already holding `locked(path)`.
    """
    with locked(path) if lock else contextlib.nullcontext():
        catalog = merge_entry(read(path), key, entry)
        write(path, catalog)
    return catalog


def remove(path: Path, key: str, *, lock: bool = True) -> bool:
    """Drop one entry; returns whether it was there."""
    with locked(path) if lock else contextlib.nullcontext():
        catalog = read(path)
        if key not in catalog:
            return False
        write(path, remove_entry(catalog, key))
    return True
