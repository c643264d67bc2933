"""What `foundry gc` may delete from a store, and why. Nothing is deleted until `collect`'s
answer is handed to `delete`.

Garbage is of three kinds:
- leftovers of crashes: keys without a marker (or with a broken one), staging folders,
  unfinished multipart uploads, a bucket key's attempts its marker does not name (runs that
  lost a race to commit it, or crashed, without cleaning up: foundry/store/s3.py);
- what a killed publish left where models are published (the places the recipes and the
  committed publish keys name): in a local folder, hidden copies and catalogue writes of a
  writer that is gone (foundry/temporaries.py tells dead from live), whatever their age; in
  a bucket, version folders without their manifest.json (an upload that never finished) and
  writer tags, whatever their age when every tag names a dead writer, never while one names
  a live one, else by age (foundry/s3/publish.py);
- committed keys nothing refers to: no recipe of the recipes folder plans them (with its
  current parameters, at any point of its sweep), and no catalogue lists the model they
  published, nor, through a publish key's inputs, one made from them.
Anything younger than `older_than` is kept whatever it is: it may belong to a run in flight.
A recipe that does not plan, or a catalogue that cannot be read, keeps what it might refer to.
"""

import calendar
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry import catalog, temporaries
from foundry.errors import UserError
from foundry.store import CommittedKey, Leftover, Store

if TYPE_CHECKING:
    from foundry.s3.publish import Unfinished

UNREFERENCED = "unreferenced key"
PUBLISH_TEMPORARY = "publish temporary"
UNFINISHED_PUBLISH = "unfinished publish"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Candidate:
    recipe: str
    name: str
    kind: str                       # a Leftover's kind, or UNREFERENCED
    size_bytes: int
    age_seconds: float
    leftover: Leftover | None = None


@dataclass
class Collection:
    doomed: list[Candidate] = field(default_factory=list)
    recent: list[Candidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(item.size_bytes for item in self.doomed)


def parse_duration(text: str) -> float:
    """Seconds in '90s', '30m', '6h', '2d', '1w' or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UserError(f"--older-than {text!r}: expected a duration such as 30m, 6h, 2d or 0")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def collect(store: Store, recipes_dir: Path, *, older_than: float, now: float | None = None) -> Collection:
    now = time.time() if now is None else now
    found = Collection()
    planned, protected, web = _planned_keys(recipes_dir, found.warnings)
    committed = list(store.list_committed())
    kept = planned | _published_keys(store, committed, found.warnings, web)
    candidates = [
        Candidate(item.recipe, item.key, UNREFERENCED, item.size_bytes, now - _timestamp(item.finished, now))
        for item in committed
        if (item.recipe, item.key) not in kept and item.recipe not in protected
    ]
    candidates += [Candidate(item.recipe, item.name, item.kind, item.size_bytes, now - item.modified, item) for item in store.leftovers()]
    for location, recipe in sorted(web.items()):
        if location.startswith("s3://"):
            candidates += [Candidate(recipe, item.url, UNFINISHED_PUBLISH, item.size_bytes, math.inf if item.dead else now - item.modified)
                           for item in _unfinished_versions(location, found.warnings)]
        else:
            candidates += [Candidate(recipe, str(item.path), PUBLISH_TEMPORARY, item.size_bytes, math.inf if item.dead else now - item.modified)
                           for item in temporaries.find(Path(location))]
    for candidate in candidates:
        (found.doomed if candidate.age_seconds >= older_than else found.recent).append(candidate)
    return found


def delete(store: Store, doomed: Iterable[Candidate]) -> None:
    for candidate in doomed:
        if candidate.leftover is not None:
            store.remove_leftover(candidate.leftover)
        elif candidate.kind == PUBLISH_TEMPORARY:
            temporaries.remove(Path(candidate.name))
        elif candidate.kind == UNFINISHED_PUBLISH:
            from foundry.s3 import publish as s3_publish

            s3_publish.remove_unfinished(candidate.name)
        else:
            store.discard(candidate.recipe, candidate.name)


def _planned_keys(recipes_dir: Path, warnings: list[str]) -> tuple[set[tuple[str, str]], set[str], dict[str, str]]:
    """(recipe, key) of every stage the recipes plan, the names of recipes that would not plan,
    and where their publish stages write to (with the recipe that names each)."""
    from foundry.commands.lint import recipe_files
    from foundry.plan import plan
    from foundry.recipe.load import load_recipe
    from foundry.sweep.plan import expand

    if not recipes_dir.is_dir():
        raise UserError(f"--recipes {recipes_dir}: no such folder; gc keeps every key its recipes plan, so it needs them")
    keys: set[tuple[str, str]] = set()
    protected: set[str] = set()
    web: dict[str, str] = {}
    for path in recipe_files([recipes_dir]):
        try:
            plans = [plan(point.recipe) for point in expand(load_recipe(path))]    # every point of a sweep
        except UserError as error:
            protected.add(path.stem)
            warnings.append(f"{path}: {error.lines()[0]}; keeping every key of recipe {path.stem}")
            continue
        keys |= {(the_plan.recipe, stage.key) for the_plan in plans for stage in the_plan.stages}
        for the_plan in plans:
            for stage in the_plan.stages:
                if stage.stage == "publish":
                    _web_folders(web, the_plan.recipe, stage.params.get("to"), stage.params.get("catalog"))
    return keys, protected, web


def _published_keys(store: Store, committed: list[CommittedKey], warnings: list[str], web: dict[str, str]) -> set[tuple[str, str]]:
    """Publish keys whose model a catalogue lists now, and every key they were made from;
    the local folders they published to go into `web`."""
    catalogs: dict[str, dict[str, Any] | None] = {}
    kept: set[tuple[str, str]] = set()
    for item in committed:
        if not item.key.startswith("publish-"):
            continue
        marker = store.marker(item.recipe, item.key) or {}
        result = marker.get("result") or {}
        location, entry_key = result.get("catalog"), result.get("entry_key")
        if not isinstance(location, str) or not isinstance(entry_key, str):
            continue
        published = result.get("published")    # a local <to>/<id> (a bucket's `to` comes from the recipes)
        _web_folders(web, item.recipe, str(Path(published).parent) if isinstance(published, str) and "://" not in published else None, location)
        if location not in catalogs:
            catalogs[location] = _read_catalog(location, warnings)
        listed = catalogs[location]
        if listed is None or _lists(listed.get(entry_key), marker):
            _with_inputs(store, item.recipe, item.key, marker, kept)
    return kept


def _web_folders(web: dict[str, str], recipe: str, folder: Any, catalogue: Any) -> None:
    """Add where a publish writes to `web`: the local `folder` and the one holding `catalogue`;
    a bucket's `folder` (s3://...: where its versions go) as it is."""
    if isinstance(folder, str) and folder.startswith("s3://"):
        web.setdefault(folder.rstrip("/"), recipe)
    for location, is_file in ((folder, False), (catalogue, True)):
        if not isinstance(location, str) or not location or location.startswith("s3://"):
            continue
        try:
            path = catalog.local_path(location, "publish")
        except UserError:
            continue
        web.setdefault(str(path.parent if is_file else path), recipe)


def _unfinished_versions(location: str, warnings: list[str]) -> list["Unfinished"]:
    from foundry.s3 import publish as s3_publish

    try:
        return s3_publish.unfinished_versions(location)
    except Exception as error:  # noqa: BLE001 - unreadable: nothing listed, and say so
        warnings.append(f"publish.to {location}: cannot be listed ({str(error).splitlines()[0]}); its unfinished versions are not looked for")
        return []


def _lists(entry: Any, marker: dict[str, Any]) -> bool:
    """Whether a catalogue entry is the model this publish key made: same URL, same bytes."""
    if not isinstance(entry, dict) or entry.get("urls", {}).get("base") != (marker.get("result") or {}).get("base_url"):
        return False
    files = {item.get("path"): item.get("sha256") for item in marker.get("files", []) if isinstance(item, dict)}
    variants = entry.get("variants") or {}
    return all(isinstance(v, dict) and files.get(v.get("file")) == v.get("sha256") for v in variants.values())


def _with_inputs(store: Store, recipe: str, key: str, marker: dict[str, Any], kept: set[tuple[str, str]]) -> None:
    kept.add((recipe, key))
    for source in (marker.get("inputs") or {}).values():
        upstream = source.get("key") if isinstance(source, dict) else None
        if isinstance(upstream, str) and (recipe, upstream) not in kept:
            _with_inputs(store, recipe, upstream, store.marker(recipe, upstream) or {}, kept)


def _read_catalog(location: str, warnings: list[str]) -> dict[str, Any] | None:
    try:
        if location.startswith("s3://"):
            from foundry.s3 import catalog as s3catalog
            from foundry.s3.client import client, parse

            return s3catalog.read(client(), parse(location, "catalog"))[0]
        return catalog.read(Path(location))
    except Exception as error:  # noqa: BLE001 - unreadable: keep what it may list, and say so
        warnings.append(f"catalog {location}: cannot be read ({str(error).splitlines()[0]}); keeping every key that published to it")
        return None


def _timestamp(iso: str, default: float) -> float:
    try:
        return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return default          # unknown age: treated as new, so kept
