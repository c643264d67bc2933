"""A problem found in a recipe, and how it is told to the user: `file:line: field: what`."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from foundry.recipe.yamlsource import Loc


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str

    def render(self, path: Path, line: int) -> str:
        field = format_loc(self.loc)
        return f"{path}:{line}: {field}: {self.message}" if field else f"{path}:{line}: {self.message}"


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib  # only on the error path: it compiles regexes at import

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
