"""`foundry render`: the objects `foundry submit` would apply, printed or written for GitOps."""

import os
from pathlib import Path

import typer

from foundry.commands.lint import recipe_files
from foundry.errors import UserError
from foundry.render import Rendered, render_recipes


def render_command(
    paths: list[Path],
    values_files: list[Path],
    sets: list[str],
    *,
    namespace: str,
    output: Path | None,
    cron: str | None,
    time_zone: str | None,
) -> None:
    """Render every recipe before writing anything, so a bad one leaves the output as it was."""
    if time_zone is not None and cron is None:
        raise UserError("--time-zone applies to a schedule; give --cron too")
    rendered = render_recipes(recipe_files(paths), values_files=values_files, sets=sets, namespace=namespace, cron=cron, time_zone=time_zone)
    for item in rendered:
        for warning in item.warnings:
            typer.echo(f"warning: {warning}", err=True)
    if output is None:
        typer.echo("".join(item.yaml() for item in rendered), nl=False)
    else:
        write_files(rendered, output)


def write_files(rendered: list[Rendered], folder: Path) -> list[Path]:
    """One `<recipe>.yaml` per recipe, each written whole (temporary file, then rename)."""
    names = [item.recipe for item in rendered]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"recipes named {', '.join(twice)} more than once; each needs its own name to get its own file")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: not a folder; -o takes the folder to write one file per recipe into")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for item in rendered:
        path = folder / f"{item.recipe}.yaml"
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(item.yaml())
        os.replace(partial, path)
        typer.echo(f"wrote {path}", err=True)
        written.append(path)
    return written
