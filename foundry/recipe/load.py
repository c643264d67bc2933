"""Reading a recipe file into a validated `Recipe`, or every problem with its line.

Nothing runs and nothing is written before this succeeds: `lint`, `run`, `render` and
`submit` all start here.
"""

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from foundry.errors import UserError
from foundry.recipe import checks
from foundry.recipe.problems import Problem, did_you_mean
from foundry.recipe.schema import MERGEKIT_KEYS, SAFE_NAME, Recipe
from foundry.recipe.yamlsource import Loc, YamlSource, YamlSyntaxError, read_yaml
from foundry.smallfile import UnreadableFile

# Enough to see a pattern in; a generated recipe with a mistake in every value would
# otherwise print one line per value.
MAX_PROBLEMS = 30
FOUNDRY_KEYS = tuple(name for name in Recipe.model_fields if name not in MERGEKIT_KEYS)


def load_recipe(path: Path) -> Recipe:
    """The recipe at `path`, or a UserError listing each problem on its own line."""
    source = _read(path)
    problems = _shape_problems(source)
    data = {"name": path.stem, **{k: v for k, v in source.data.items() if k in Recipe.model_fields}}
    recipe, schema_problems = _validate(data, source)
    problems += schema_problems
    if recipe is None and schema_problems:
        # Check what did validate, so one lint shows every mistake, not the first layer.
        broken = {problem.loc[0] for problem in schema_problems if problem.loc}
        recipe, _ = _validate({k: v for k, v in data.items() if k not in broken}, source)
    if recipe is not None:
        problems += checks.check(recipe)
    if problems:
        problems.sort(key=lambda problem: source.line_of(problem.loc))
        lines = [problem.render(path, source.line_of(problem.loc)) for problem in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"{path}: and {len(problems) - MAX_PROBLEMS} more problems; fix these first")
        raise UserError(lines[0], details=lines[1:])
    assert recipe is not None
    return recipe


def _validate(data: dict[str, Any], source: YamlSource) -> tuple[Recipe | None, list[Problem]]:
    try:
        return Recipe.model_validate(data), []
    except ValidationError as error:
        return None, _from_pydantic(error, source)


def _read(path: Path) -> YamlSource:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a recipe file (.yml), or use a command that takes a folder")
    try:
        source = read_yaml(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such recipe file; check the path") from None
    except UnreadableFile as error:
        raise UserError(f"{path}: {error}; a recipe is a YAML file") from None
    except YamlSyntaxError as error:
        raise UserError(f"{path}:{error.line}: {error}") from None
    if source.data is None:
        raise UserError(f"{path}:1: the recipe is empty; expected a mapping with at least `models:` (see recipes/tiny-demo.yml)")
    if not isinstance(source.data, dict):
        kind = type(source.data).__name__
        raise UserError(f"{path}:1: expected a mapping of recipe keys (models, merge_method, ...), got a YAML {kind}")
    return source


def _shape_problems(source: YamlSource) -> list[Problem]:
    problems = [Problem(loc, "key given twice; keep one") for loc in source.duplicates]
    known = (*FOUNDRY_KEYS, *MERGEKIT_KEYS)
    for key in source.data:
        if not isinstance(key, str) or key not in known:
            hint = did_you_mean(str(key), known)
            problems.append(Problem((str(key),), f"unknown key{hint}; Foundry's keys are {', '.join(FOUNDRY_KEYS)} and mergekit's are {', '.join(MERGEKIT_KEYS)}"))
    if "name" not in source.data and not _is_safe(source.path.stem):
        problems.append(Problem((), f"the file name {source.path.stem!r} is not a safe recipe name; rename the file or set `name:`"))
    return problems


def _is_safe(name: str) -> bool:
    import re

    return bool(re.match(SAFE_NAME, name)) and ".." not in name


def _from_pydantic(error: ValidationError, source: YamlSource) -> list[Problem]:
    """One problem per field; of a union's failed branches, the one that got deepest."""
    located = [(_data_loc(item, source.data), item) for item in error.errors(include_url=False)]
    deepest = [
        (loc, item) for loc, item in located
        if not any(len(other) > len(loc) and other[: len(loc)] == loc for other, _ in located)
    ]
    by_loc: dict[Loc, list[str]] = {}
    for loc, item in deepest:
        message = _message(item, loc)
        if message not in by_loc.setdefault(loc, []):
            by_loc[loc].append(message)
    return [Problem(loc, "; or ".join(messages)) for loc, messages in by_loc.items()]


def _data_loc(item: Any, data: Any) -> Loc:
    """pydantic's location without union branch tags; a missing or extra key is kept."""
    kept: list[str | int] = []
    parts = item["loc"]
    for index, part in enumerate(parts):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        elif index == len(parts) - 1 and item["type"] in ("missing", "extra_forbidden"):
            pass
        else:
            continue
        kept.append(part)
    return tuple(kept)


def _message(item: Any, loc: Loc) -> str:
    kind, text = item["type"], item["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc)
        return f"unknown key{did_you_mean(str(loc[-1]), allowed)}; expected one of: {', '.join(allowed)}"
    if kind == "missing":
        return "required field is missing"
    text = text.removeprefix("Value error, ")
    if kind not in ("value_error",) and "input" in item and not isinstance(item["input"], (dict, list)):
        text += f", got {item['input']!r}"
    return text


def _allowed_keys(loc: Loc) -> list[str]:
    annotation: Any = Recipe
    for part in loc[:-1]:
        annotation = _child(annotation, part)
        if annotation is None:
            return []
    model = _model_class(annotation)
    return list(model.model_fields) if model else []


def _child(annotation: Any, part: str | int) -> Any:
    for option in _options(annotation):
        origin = typing.get_origin(option)
        if isinstance(part, int) and origin is list:
            return typing.get_args(option)[0]
        if isinstance(part, str) and origin is dict:
            return typing.get_args(option)[1]
        model = _model_class(option)
        if isinstance(part, str) and model and part in model.model_fields:
            return model.model_fields[part].annotation
    return None


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None
