"""What `foundry serve TARGET` serves, decided before a socket is opened.

TARGET is a publish folder (`publish.to`: `models.json` beside one folder per model) or one
published model folder (its `manifest.json`). Files are served under several URL prefixes, so
that every URL a catalogue entry names works: the folder itself at `/` and at `/<its name>/`
(a folder named `models` publishes entries at `/models/<id>/`), and each entry's `urls.base`.

The API serves one variant of each model; that variant's files and the shared ones (config,
tokenizer) are re-hashed against the manifest first, and a missing chunk or a mismatch stops
the server before it starts, naming the file. Every other file a manifest lists (the other
variants, which browsers load) is re-hashed when first requested (foundry/serve/files.py's
Integrity), and a damaged one is refused, never sent.
"""

import calendar
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry import catalog, manifest
from foundry.catalog import CATALOG_NAME
from foundry.errors import UserError
from foundry.manifest import MANIFEST_NAME
from foundry.variants import ONNX_FOLDER, VARIANT_FILES


@dataclass(frozen=True)
class ServedModel:
    id: str
    key: str                 # its catalogue key, accepted as a model name too
    name: str
    folder: Path
    variant: str
    created: int             # unix seconds: when it was published


@dataclass(frozen=True)
class Site:
    root: Path
    mounts: dict[str, Path]                  # URL path prefix (decoded, ends with "/") -> folder
    models: list[ServedModel]
    notes: list[str] = field(default_factory=list)     # catalogue entries not served, and why
    recorded: dict[Path, tuple[int, str]] = field(default_factory=dict)    # file (resolved) -> its manifest's size and sha256

    def model(self, name: str) -> ServedModel | None:
        return next((served for served in self.models if name in (served.id, served.key)), None)


@dataclass(frozen=True)
class _Candidate:
    id: str
    key: str
    name: str
    folder: Path
    created: int
    record: dict[str, Any]       # its manifest


def open_site(target: Path, *, model: str | None = None, variant: str | None = None) -> Site:
    """The site for TARGET, its served variants checked; UserError (one line) when it cannot be served."""
    root = Path(target)
    if not root.is_dir():
        raise UserError(f"{target}: no such folder; give a publish folder (publish.to, holding {CATALOG_NAME}) or one published model folder")
    if (root / CATALOG_NAME).is_file():
        candidates, mounts, notes = _from_catalogue(root)
    elif (root / MANIFEST_NAME).is_file():
        candidates, mounts, notes = _from_model_folder(root)
    else:
        raise UserError(f"{target}: neither a publish folder (no {CATALOG_NAME}) nor a published model (no {MANIFEST_NAME}); `foundry run` publishes one")
    chosen = _choose(candidates, model, root)
    return Site(root, mounts, [_checked(candidate, variant) for candidate in chosen], notes, _recorded(candidates))


def _recorded(candidates: list[_Candidate]) -> dict[Path, tuple[int, str]]:
    """What each manifest says of each file it lists, by the file's resolved path."""
    recorded: dict[Path, tuple[int, str]] = {}
    for candidate in candidates:
        entries = candidate.record.get("files")
        for entry in entries if isinstance(entries, list) else []:
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str) and not manifest.is_unsafe(path):
                recorded[(candidate.folder / path).resolve()] = (entry["size"], entry["sha256"])
    return recorded


def _from_catalogue(root: Path) -> tuple[list[_Candidate], dict[str, Path], list[str]]:
    entries = catalog.read(root / CATALOG_NAME)
    mounts = {"/": root, f"/{root.name}/": root}
    candidates, notes = [], []
    for key, entry in entries.items():
        model_id = entry.get("id") if isinstance(entry, dict) else None
        try:
            catalog.validate_id(model_id, f"{CATALOG_NAME}: entry {key!r}: id")
        except UserError as error:
            notes.append(f"{error}; not served")
            continue
        folder = root / model_id
        if not (folder / MANIFEST_NAME).is_file():
            notes.append(f"{CATALOG_NAME}: entry {key!r}: no published folder {folder} (with {MANIFEST_NAME}) here; not served")
            continue
        base = (entry.get("urls") or {}).get("base")
        if isinstance(base, str) and base:
            path = urllib.parse.unquote(urllib.parse.urlsplit(urllib.parse.urljoin("/" + CATALOG_NAME, base)).path)
            if path.endswith("/") and path != "/":
                mounts[path] = folder
        record = _manifest(folder)
        candidates.append(_Candidate(model_id, key, str(entry.get("name") or model_id), folder, _created(entry.get("published"), folder), record))
    return candidates, mounts, notes


def _from_model_folder(root: Path) -> tuple[list[_Candidate], dict[str, Path], list[str]]:
    record = _manifest(root)
    model_id = record.get("id") if isinstance(record.get("id"), str) and record.get("id") else root.name
    candidate = _Candidate(model_id, model_id, str(record.get("name") or model_id), root, _created(record.get("created"), root), record)
    return [candidate], {"/": root, f"/{model_id}/": root}, []


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        record = manifest.read(folder)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{folder / MANIFEST_NAME}: not valid JSON ({error}); republish the model") from None
    if not isinstance(record, dict):
        raise UserError(f"{folder / MANIFEST_NAME}: expected a JSON object; republish the model")
    return record


def _created(stamp: Any, folder: Path) -> int:
    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return int(folder.stat().st_mtime)


def _choose(candidates: list[_Candidate], model: str | None, root: Path) -> list[_Candidate]:
    if not candidates:
        raise UserError(f"{root}: {CATALOG_NAME} lists no model published in this folder; nothing to serve")
    if model is None:
        return candidates
    chosen = [candidate for candidate in candidates if model in (candidate.id, candidate.key)]
    if not chosen:
        raise UserError(f"--model {model}: not published in {root}; it holds {', '.join(candidate.id for candidate in candidates)}")
    return chosen[:1]


def _checked(candidate: _Candidate, variant: str | None) -> ServedModel:
    """The variant the API will run, its files and the shared ones re-hashed against the manifest."""
    variants = candidate.record.get("variants") if isinstance(candidate.record.get("variants"), dict) else {}
    default = candidate.record.get("default_variant")
    level = variant or (default if default in variants else "q4" if "q4" in variants else next(iter(variants), None))
    if level not in variants or level not in VARIANT_FILES:
        raise UserError(f"{candidate.folder}: no {level} variant in its {MANIFEST_NAME}; it has {', '.join(variants) or 'none'} (--variant picks one)")
    model_file = variants[level].get("file") or f"{ONNX_FOLDER}/{VARIANT_FILES[level]}"
    files = candidate.record.get("files")
    if isinstance(files, list):
        files = [entry for entry in files if not _other_variant(entry, model_file)]
    problems = manifest.verify_files(candidate.folder, files, listing=MANIFEST_NAME, strict=False)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{candidate.folder}/{problems[0]}{more}; refusing to serve variant {level} of {candidate.id}: republish it (`foundry verify {candidate.folder}` lists every problem)")
    return ServedModel(candidate.id, candidate.key, candidate.name, candidate.folder, level, candidate.created)


def _other_variant(entry: Any, model_file: str) -> bool:
    """Whether a manifest entry is a file of another variant (its graph or its external data)."""
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or not path.startswith(f"{ONNX_FOLDER}/"):
        return False
    return path != model_file and not path.startswith(f"{model_file}_data")
