"""YAML read with the line of every key kept, so errors can point into the file.

A recipe is a small hand-written file, so the reader refuses what no recipe needs and what
would hang or crash the parser: a file that is not a small regular file (foundry/smallfile.py,
at most `MAX_BYTES`), nesting deeper than `MAX_DEPTH`, an alias that refers to the node containing
it, and aliases that would expand to more than `MAX_VALUES` values (a "billion laughs").
The limits are checked while composing, from libyaml's events, one level at a time: a
100,000-deep file is refused after `MAX_DEPTH` events, not parsed (libyaml is quadratic in
flow depth) nor recursed into.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from foundry.smallfile import read_small

Loc = tuple[str | int, ...]
# libyaml's parser where PyYAML was built with it (a few ms per recipe saved on `lint`).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 20_000


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
    """The text is not YAML a recipe can be, at `line`."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def read_text(path: Path) -> str:
    data = read_small(path, MAX_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise YamlSyntaxError(line, f"not UTF-8 text (byte 0x{data[error.start]:02x}); a recipe is a YAML file") from None


def read_yaml(path: Path) -> YamlSource:
    text = read_text(path)
    loader = None
    try:
        loader = _Loader(text)
        node = _compose(loader)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"invalid YAML: {error.problem or error}".strip()) from None
    except yaml.reader.ReaderError as error:
        # Its text quotes the file; say where instead (the file may be /proc/self/environ).
        line = text.count("\n", 0, error.position) + 1
        raise YamlSyntaxError(line, f"invalid YAML: a character YAML does not allow (#x{error.character:04x}); a recipe is plain text") from None
    finally:
        if loader is not None:
            loader.dispose()
    source = YamlSource(path, data)
    if node is not None:
        _index(node, (), source)
    return source


def _compose(loader: Any) -> yaml.Node | None:
    """PyYAML's Composer, without recursion and within the limits above."""
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        return None
    loader.get_event()  # document start
    open_nodes: list[tuple[yaml.Node, int]] = []  # with the value count when each began
    closed: set[int] = set()
    anchors: dict[str, yaml.Node] = {}
    sizes: dict[int, int] = {}  # values under each anchored node, aliases expanded
    values = 0
    root: yaml.Node | None = None
    while True:
        event = loader.get_event()
        line = event.start_mark.line + 1
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            node, began = open_nodes.pop()
            node.end_mark = event.end_mark
            sizes[id(node)] = values - began
            closed.add(id(node))
        else:
            if isinstance(event, yaml.AliasEvent):
                node = anchors.get(event.anchor)  # type: ignore[assignment]
                if node is None:
                    raise YamlSyntaxError(line, f"invalid YAML: found undefined alias {event.anchor!r}")
                if id(node) not in closed:
                    raise YamlSyntaxError(line, f"alias *{event.anchor} refers to a value that contains it (a recursive alias); write the value out")
                values += sizes[id(node)]
            else:
                node = _new_node(loader, event)
                values += 1
                if event.anchor is not None:
                    if event.anchor in anchors:
                        raise YamlSyntaxError(line, f"invalid YAML: anchor &{event.anchor} is defined twice; give each anchor its own name")
                    anchors[event.anchor] = node
            if values > MAX_VALUES:
                raise YamlSyntaxError(line, f"more than {MAX_VALUES:,} values once aliases are expanded; a recipe is small, so write what an alias repeats once")
            _attach(open_nodes[-1][0] if open_nodes else None, node)
            if root is None:
                root = node
            if isinstance(node, yaml.ScalarNode):
                sizes[id(node)] = 1
                closed.add(id(node))
            elif id(node) not in closed:
                open_nodes.append((node, values))
                if len(open_nodes) > MAX_DEPTH:
                    raise YamlSyntaxError(line, f"nested more than {MAX_DEPTH} levels deep; a recipe is a few levels deep")
        if not open_nodes:
            break
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        raise YamlSyntaxError(loader.peek_event().start_mark.line + 1, "invalid YAML: a second YAML document (---); a recipe is one document")
    return root


def _new_node(loader: Any, event: yaml.Event) -> yaml.Node:
    tag = event.tag  # type: ignore[attr-defined]
    if isinstance(event, yaml.ScalarEvent):
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        return yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
    if tag is None or tag == "!":
        tag = loader.resolve(kind, None, event.implicit)  # type: ignore[attr-defined]
    return kind(tag, [], event.start_mark, None, flow_style=event.flow_style)  # type: ignore[attr-defined]


def _attach(parent: yaml.Node | None, node: yaml.Node) -> None:
    """Append to a sequence; in a mapping, a key starts a pair that its value completes."""
    if parent is None:
        return
    if isinstance(parent, yaml.SequenceNode):
        parent.value.append(node)
    elif parent.value and len(parent.value[-1]) == 1:
        parent.value[-1] = (parent.value[-1][0], node)
    else:
        parent.value.append((node,))


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
