"""YAML read with the line of every key kept, so errors can point into the file."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]
# libyaml's parser where PyYAML was built with it (a few ms per recipe saved on `lint`).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class YamlSource:
    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    duplicates: list[Loc] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest part of `loc` that the file has (1 when none)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def read_yaml(path: Path) -> YamlSource:
    text = path.read_text(encoding="utf-8")
    loader = _Loader(text)
    try:
        # One parse: the node tree gives the lines, the same tree is constructed into data.
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"{error.problem or error}".strip()) from None
    finally:
        loader.dispose()
    source = YamlSource(path, data)
    if node is not None:
        _index(node, (), source)
    return source


def _index(node: yaml.Node, loc: Loc, source: YamlSource) -> None:
    source.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*loc, key)
            if key in seen:
                source.duplicates.append(child)
            seen.add(key)
            source.lines[child] = key_node.start_mark.line + 1
            _index(value_node, child, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index(item, (*loc, index), source)
