"""Reading the registry: Foundry's presets, then the user's own files, each validated.

Foundry's file ships in the package. A user's presets live in
`~/.config/foundry/presets.yaml` (`$XDG_CONFIG_HOME` honoured), or in the files that
`$FOUNDRY_PRESETS` lists (separated like PATH); they use the same format, and a preset of
theirs with an alias Foundry also uses replaces Foundry's. A mistake in any file is refused
with the file, the line and the field, like a mistake in a recipe.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from foundry.errors import UserError
from foundry.recipe.problems import Problem, did_you_mean
from foundry.registry.schema import FinetuneDefaults, Preset, RegistryFile

PACKAGE_FILE = Path(__file__).with_name("presets.yaml")
PRESETS_ENV = "FOUNDRY_PRESETS"


@dataclass(frozen=True)
class Registry:
    presets: dict[str, Preset]
    defaults: FinetuneDefaults

    def get(self, alias: str) -> Preset:
        """The preset named `alias` (or whose hub id it is); a did-you-mean when none is."""
        found = self.presets.get(alias) or self.by_model(alias)
        if found is None:
            hint = did_you_mean(alias, self.presets)
            raise UserError(f"unknown model {alias!r}{hint}; `foundry models list` shows the {len(self.presets)} the registry knows")
        return found

    def by_model(self, reference: str) -> Preset | None:
        """The preset for a model reference: `tiny:NAME`, or a hub id in any letter case,
        with or without mergekit's `@revision`."""
        wanted = reference.partition("+")[0].partition("@")[0].lower()
        for preset in self.presets.values():
            if preset.hub_id.lower() == wanted:
                return preset
        return None


def user_files() -> list[Path]:
    listed = os.environ.get(PRESETS_ENV)
    if listed:
        return [Path(part).expanduser() for part in listed.split(os.pathsep) if part]
    default = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "foundry" / "presets.yaml"
    return [default] if default.is_file() else []


def load_registry() -> Registry:
    presets, defaults = _read(PACKAGE_FILE, "foundry")
    assert defaults is not None, "Foundry's presets.yaml has a defaults block"
    for path in user_files():
        if not path.is_file():
            raise UserError(f"{path}: no such presets file (named by ${PRESETS_ENV}); fix or unset ${PRESETS_ENV}")
        theirs, their_defaults = _read(path, str(path))
        presets.update(theirs)
        defaults = their_defaults or defaults
    return Registry(presets, defaults)


def registry_of(path: Path) -> Registry:
    """The presets of one file alone, without Foundry's: to try a presets file on its own."""
    presets, defaults = _read(path, str(path))
    if defaults is None:
        raise UserError(f"{path}: a registry of its own needs a defaults block (the settings for models no preset knows)")
    return Registry(presets, defaults)


def _read(path: Path, source: str) -> tuple[dict[str, Preset], FinetuneDefaults | None]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise UserError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror})") from None
    problems: list[Problem] = []
    registry = _validate(RegistryFile, data if data is not None else {}, (), problems)
    presets: dict[str, Preset] = {}
    if isinstance(registry, RegistryFile):
        for alias, fields in registry.presets.items():
            preset = _validate(Preset, {**(fields or {}), "alias": str(alias), "source": source}, ("presets", str(alias)), problems)
            if isinstance(preset, Preset):
                presets[preset.alias] = preset
    if problems:
        _raise(path, problems)
    assert isinstance(registry, RegistryFile)
    return presets, registry.defaults


def _validate(model: Any, data: Any, loc: tuple[str | int, ...], problems: list[Problem]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        for item in error.errors():
            where = (*loc, *item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(Problem(where, message))
        return None


def _raise(path: Path, problems: list[Problem]) -> None:
    """Problems with their lines; the file is read a second time for those, on this path only."""
    from foundry.recipe.yamlsource import read_yaml

    source = read_yaml(path)
    lines = [problem.render(path, source.line_of(problem.loc)) for problem in problems]
    raise UserError(lines[0], details=lines[1:])
