"""A sweep's grid, expanded into one plain recipe per point.

`sweep.grid` maps dotted paths into the recipe (`parameters.t`, `models.0.parameters.weight`)
to the values to try; the points are their cartesian product, in the grid's order. Each
point is validated as the recipe it becomes, so a value that makes no sense is refused
before anything is rendered. Points share every stage whose inputs they have in common:
their keys are the same.
"""

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from foundry.errors import UserError
from foundry.recipe import checks
from foundry.recipe.problems import format_loc
from foundry.recipe.schema import Recipe


@dataclass(frozen=True)
class SweepPoint:
    point: dict[str, Any]  # dotted path -> value
    recipe: Recipe  # the recipe at this point, without its `sweep`


def expand(recipe: Recipe) -> list[SweepPoint]:
    """Every point of the grid; a recipe without a sweep is its own single point."""
    if recipe.sweep is None:
        return [SweepPoint({}, recipe)]
    base = recipe.model_dump(exclude={"sweep"})
    paths = list(recipe.sweep.grid)
    points = []
    for values in itertools.product(*recipe.sweep.grid.values()):
        point = dict(zip(paths, values, strict=True))
        data = copy.deepcopy(base)
        for path, value in point.items():
            _set(data, path, value, recipe.name)
        points.append(SweepPoint(point, _validated(data, recipe.name, point)))
    return points


def _set(data: dict[str, Any], path: str, value: Any, recipe: str) -> None:
    """Set `value` at a dotted path; missing mapping keys are created, list indexes must exist."""
    parts = path.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"recipe {recipe}: sweep.grid.{path}: {where} is not an index of a list of {len(node)}")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise UserError(f"recipe {recipe}: sweep.grid.{path}: {'.'.join(parts[:depth]) or 'the recipe'} is a {type(node).__name__}, not a mapping or a list")


def _validated(data: dict[str, Any], recipe: str, point: dict[str, Any]) -> Recipe:
    where = ", ".join(f"{path}={value!r}" for path, value in point.items())
    try:
        swept = Recipe.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = format_loc(first["loc"])
        raise UserError(f"recipe {recipe}: sweep point {where}: {field}: {first['msg'].removeprefix('Value error, ')}") from None
    problems = checks.check(swept)
    if problems:
        field = format_loc(problems[0].loc)
        raise UserError(f"recipe {recipe}: sweep point {where}: {field}: {problems[0].message}")
    return swept
