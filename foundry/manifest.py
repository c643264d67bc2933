"""`manifest.json`: what a published model folder holds, so anyone can check it.

Every file of the folder with its size and sha256, plus the recipe hash and the variants
with their sizes and agreement numbers. It is written last, after every file it names, and
`verify(folder)` re-reads the folder against it. Light: stdlib only, usable by the CLI.
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from foundry import __version__
from foundry.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
_HASH_WORKERS = 4
FORMAT_VERSION = 1


def list_files(folder: Path) -> list[dict[str, Any]]:
    """Every regular file under `folder` but the manifest itself: path (posix), size, sha256."""
    return [
        {"path": path, "size": (folder / path).stat().st_size, "sha256": sha256_file(folder / path)}
        for path in list_paths(folder)
    ]


def build(folder: Path, *, recipe_hash: str | None, variants: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The manifest of `folder` as it is now. `extra` (id, name, ...) is recorded as given."""
    files = list_files(folder)
    return {
        "format": FORMAT_VERSION,
        **extra,
        "recipe_hash": recipe_hash,
        "created_by": f"Foundry {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variants": variants,
        "files": files,
        "size_bytes": sum(entry["size"] for entry in files),
    }


def write(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write `folder/manifest.json` whole (temporary file, then rename)."""
    target = folder / MANIFEST_NAME
    temporary = folder / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def read(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))


def is_unsafe(path: str) -> bool:
    """Whether a listed path could name something outside its folder."""
    posix = PurePosixPath(path)
    return not path or posix.is_absolute() or ".." in posix.parts or "\\" in path


def verify(folder: Path, *, strict: bool = True) -> list[str]:
    """Problems with `folder` against its manifest, one line each naming the file; [] when whole.

    Reports missing files, size or sha256 mismatches (corruption), and, when `strict`, files
    the manifest does not list.
    """
    folder = Path(folder)
    try:
        manifest = read(folder)
    except FileNotFoundError:
        return [f"{MANIFEST_NAME}: missing from {folder}"]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"{MANIFEST_NAME}: not valid JSON ({error})"]
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    return verify_files(folder, entries, listing=MANIFEST_NAME, strict=strict)


class FileSource(Protocol):
    """Where the files being checked live: a local folder, or an S3 prefix (foundry/s3/files.py)."""

    def sizes(self) -> dict[str, int]:
        """Every file present, by posix path relative to the folder, with its size."""

    def digests(self, paths: list[str]) -> dict[str, str | None]:
        """The sha256 of each of `paths`; None for one that vanished since `sizes`."""


class LocalFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def sizes(self) -> dict[str, int]:
        return {path: (self.folder / path).stat().st_size for path in list_paths(self.folder, exclude="")}

    def digests(self, paths: list[str]) -> dict[str, str | None]:
        """Several files at once: hashlib and reads release the GIL, so shards hash in parallel."""
        workers = min(len(paths), os.cpu_count() or 1, _HASH_WORKERS)
        if workers <= 1:
            return {path: _digest(self.folder / path) for path in paths}
        with ThreadPoolExecutor(workers, thread_name_prefix="foundry-hash") as pool:
            return dict(zip(paths, pool.map(lambda path: _digest(self.folder / path), paths), strict=True))


def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:       # vanished since it was listed
        return None


def verify_files(folder: Path, entries: Any, *, listing: str, strict: bool = True) -> list[str]:
    """Check `folder` against `entries` ({path, size, sha256}) read from the file `listing`.

    Shared by published folders (manifest.json) and stage keys (_SUCCESS.json), which list
    their files in the same shape.
    """
    return verify_source(LocalFiles(folder), entries, listing=listing, strict=strict)


def verify_source(source: FileSource, entries: Any, *, listing: str, strict: bool = True) -> list[str]:
    """`verify_files` for any FileSource: sizes first, then hashes of the files whose size is right."""
    if not isinstance(entries, list):
        return [f"{listing}: has no list of files"]
    present = source.sizes()
    problems: list[list[str]] = []
    listed: set[str] = set()
    to_hash: dict[str, tuple[int, Any]] = {}
    for entry in entries:
        problems.append([])
        path = entry.get("path", "") if isinstance(entry, dict) else ""
        if not isinstance(path, str) or is_unsafe(path):
            problems[-1].append(f"{listing}: refuses to check {path!r}, a path outside the folder")
            continue
        listed.add(path)
        if path not in present:
            problems[-1].append(f"{path}: missing")
        elif present[path] != entry.get("size"):
            problems[-1].append(f"{path}: size {present[path]} bytes, {listing} says {entry.get('size')} (truncated or replaced)")
        else:
            to_hash[path] = (len(problems) - 1, entry.get("sha256"))
    for path, digest in source.digests(list(to_hash)).items():
        index, expected = to_hash[path]
        if digest is None:
            problems[index].append(f"{path}: missing")
        elif digest != expected:
            problems[index].append(f"{path}: sha256 differs from {listing} (corrupted)")
    flat = [problem for entry_problems in problems for problem in entry_problems]
    if strict:
        flat += [f"{path}: not listed in {listing}" for path in sorted(present) if path != listing and path not in listed]
    return flat


def list_paths(folder: Path, exclude: str = MANIFEST_NAME) -> list[str]:
    """Every file under `folder` as a sorted posix path, but `exclude`."""
    return [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != exclude
    ]
