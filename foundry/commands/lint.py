"""`foundry lint` and `foundry schema`."""

import json
from pathlib import Path

import typer

from foundry.errors import UserError
from foundry.recipe.load import load_recipe
from foundry.recipe.schema import Recipe

RECIPE_SUFFIXES = (".yml", ".yaml")


def recipe_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their recipes, sorted for stable output."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in RECIPE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path}: no recipe files (*.yml, *.yaml) in this folder")
            files += found
        else:
            files.append(path)
    return files


def lint_paths(paths: list[Path]) -> bool:
    clean = True
    for path in recipe_files(paths):
        try:
            recipe = load_recipe(path)
        except UserError as error:
            clean = False
            for line in error.lines():
                typer.echo(f"error: {line}", err=True)
            continue
        typer.echo(f"ok {path} ({recipe.name})")
    return clean


def recipe_json_schema() -> str:
    schema = Recipe.model_json_schema()
    schema["title"] = "Foundry recipe"
    schema["description"] = "A mergekit configuration with Foundry's keys beside it. `name` defaults to the file's stem."
    schema["required"] = [field for field in schema.get("required", []) if field != "name"]
    return json.dumps(schema, indent=2, sort_keys=True)
