"""`manifest.json`: what a published model folder holds, so anyone can check it.

Every file of the folder with its size and sha256, plus the recipe hash and the variants
with their sizes and agreement numbers. It is written last, after every file it names, and
`verify(folder)` re-reads the folder against it. Light: stdlib only, usable by the CLI.
"""

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from foundry import __version__
from foundry.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
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


def _unsafe(path: str) -> bool:
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


def verify_files(folder: Path, entries: Any, *, listing: str, strict: bool = True) -> list[str]:
    """Check `folder` against `entries` ({path, size, sha256}) read from the file `listing`.

    Shared by published folders (manifest.json) and stage keys (_SUCCESS.json), which list
    their files in the same shape.
    """
    if not isinstance(entries, list):
        return [f"{listing}: has no list of files"]
    problems: list[str] = []
    listed: set[str] = set()
    for entry in entries:
        path = entry.get("path", "") if isinstance(entry, dict) else ""
        if not isinstance(path, str) or _unsafe(path):
            problems.append(f"{listing}: refuses to check {path!r}, a path outside the folder")
            continue
        listed.add(path)
        file = folder / path
        if not file.is_file():
            problems.append(f"{path}: missing")
            continue
        size = file.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{path}: size {size} bytes, {listing} says {entry.get('size')} (truncated or replaced)")
            continue
        if sha256_file(file) != entry.get("sha256"):
            problems.append(f"{path}: sha256 differs from {listing} (corrupted)")
    if strict:
        for path in list_paths(folder, exclude=listing):
            if path not in listed:
                problems.append(f"{path}: not listed in {listing}")
    return problems


def list_paths(folder: Path, exclude: str = MANIFEST_NAME) -> list[str]:
    return [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != exclude
    ]
