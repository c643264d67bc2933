"""`foundry artifacts ls` and `foundry gc`: what a store holds, and clearing what nothing needs."""

import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from foundry import gc
from foundry.commands.run import _size
from foundry.store import open_store, resolve_store_url

# Keys are long and meant to be copied or grepped: no wrapping when the output is not a terminal.
_out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def list_artifacts(recipe: str | None, store_flag: str | None) -> None:
    store = open_store(resolve_store_url(store_flag))
    broken = {(name, key): reason for name, key, reason in store.broken_keys(recipe)}
    for (name, key), reason in broken.items():
        typer.echo(f"broken key {name}/{key}: {reason}; counted as not committed (`foundry verify --repair` deletes it)", err=True)
    keys = [item for item in store.list_committed(recipe) if (item.recipe, item.key) not in broken]
    if not keys:
        typer.echo(f"no committed keys{f' of recipe {recipe}' if recipe else ''} in {store.url}")
        return
    table = Table(title=f"committed keys in {store.url}", caption=f"{len(keys)} key(s), {_size(sum(k.size_bytes for k in keys))}")
    for column, justify in (("recipe", "left"), ("stage", "left"), ("key", "left"), ("size", "right"), ("committed", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for key in keys:
        table.add_row(key.recipe, key.key.partition("-")[0], key.key, _size(key.size_bytes), key.finished)
    _out.print(table)


def collect_garbage(store_flag: str | None, recipes_dir: Path, older_than: str, yes: bool) -> int:
    store = open_store(resolve_store_url(store_flag))
    found = gc.collect(store, recipes_dir, older_than=gc.parse_duration(older_than))
    for warning in found.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if found.recent:
        typer.echo(f"keeping {len(found.recent)} item(s) younger than {older_than} (they may belong to a run in flight)", err=True)
    if not found.doomed:
        typer.echo(f"nothing to collect in {store.url}")
        return 0
    table = Table(title=f"{'deleting' if yes else 'would delete'} from {store.url}")
    for column, justify in (("what", "left"), ("recipe", "left"), ("key", "left"), ("size", "right"), ("age", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for item in found.doomed:
        table.add_row(item.kind, item.recipe, item.name, _size(item.size_bytes), _age(item.age_seconds))
    _out.print(table)
    if not yes:
        typer.echo(f"dry run: {len(found.doomed)} item(s), {_size(found.size_bytes)}; run again with --yes to delete them")
        return 0
    gc.delete(store, found.doomed)
    typer.echo(f"deleted {len(found.doomed)} item(s), {_size(found.size_bytes)}")
    return 0


def _age(seconds: float) -> str:
    if seconds == math.inf:
        return "writer gone"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f}{unit}"
    return f"{max(seconds, 0):.0f}s"
