"""Helm, the one engine every Kubernetes object of Foundry comes from.

The `helm` binary where one is on PATH (the Helm a team already pins in CI), else the Helm
SDK that helm-python-sdk embeds, so `foundry render` works from a bare `pip install`. Both are
driven with one values document that Foundry has already merged (see `values_from_files`),
and both report errors as one line each through `UserError`, naming the value at fault.

`FOUNDRY_HELM` picks the engine: `sdk`, or the path of a helm binary.
"""

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from foundry.errors import UserError
from foundry.hashing import canonical_json

ENGINE_ENV = "FOUNDRY_HELM"
WARNING = 2  # helm lint's severities: 1 info, 2 warning, 3 error

# A rendered template: its path in the chart (foundry/templates/x.yaml) and its text.
Template = tuple[str, str]


# One release to render: its name, and the values only it has (Foundry's `generated` plan).
Run = tuple[str, dict[str, Any]]


class Engine(Protocol):
    name: str

    def template(self, chart: Path, values: dict[str, Any], runs: Sequence[Run], *, namespace: str) -> list[list[Template]]:
        """Render the chart offline once per run, like `helm template RELEASE` with `values` and then the
        run's own; values are checked against the chart's schema."""
        ...

    def lint(self, chart: Path, values: dict[str, Any], *, namespace: str) -> list[str]:
        """`helm lint --strict`: its warnings and errors, one line each; empty when clean."""
        ...


class SdkEngine:
    """Helm's Go SDK in this process: the chart is loaded once, each render costs milliseconds.

    Helm checks values against values.schema.json on every render, and compiling the schema is
    half of a render's time. The runs of one call share their values and differ only in strings
    Foundry generates (`generated.plan`/`generated.sweep`, which the schema takes as any string),
    so Helm checks the schema as it renders the first run, and renders the others from a copy
    of the chart without it: 100 recipes render in half the time, with the same checks.
    """

    name = "helm-python-sdk"

    def template(self, chart: Path, values: dict[str, Any], runs: Sequence[Run], *, namespace: str) -> list[list[Template]]:
        from helm_python import HelmError

        chart = chart.resolve()
        try:
            rendered = [
                _load_chart(chart, with_schema=index == 0).render(merge_values(values, own), name=release, namespace=namespace, is_install=True)
                for index, (release, own) in enumerate(runs)
            ]
        except HelmError as error:
            raise _helm_error(str(error), chart) from None
        return [sorted(templates.items()) for templates in rendered]

    def lint(self, chart: Path, values: dict[str, Any], *, namespace: str) -> list[str]:
        import helm_python

        report = helm_python.lint(str(chart), values, strict=True, namespace=namespace)
        return [f"{message['path']}: {message['error'].strip()}" for message in report["messages"] if message["severity"] >= WARNING]


class BinaryEngine:
    """A `helm` executable, given the merged values as one file."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.name = executable

    def template(self, chart: Path, values: dict[str, Any], runs: Sequence[Run], *, namespace: str) -> list[list[Template]]:
        rendered = []
        for release, own in runs:
            done = self._run(["template", release, str(chart), "--namespace", namespace], merge_values(values, own))
            if done.returncode != 0:
                raise _helm_error(done.stderr or done.stdout, chart)
            rendered.append(_split_sources(done.stdout))
        return rendered

    def lint(self, chart: Path, values: dict[str, Any], *, namespace: str) -> list[str]:
        done = self._run(["lint", str(chart), "--strict", "--namespace", namespace], values)
        return [line.strip() for line in done.stdout.splitlines() if line.startswith(("[WARNING]", "[ERROR]"))]

    def _run(self, args: list[str], values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="foundry-helm-") as folder:
            values_file = Path(folder) / "values.json"
            values_file.write_text(canonical_json(values))
            return subprocess.run([self.executable, *args, "--values", str(values_file)], capture_output=True, text=True)


def engine() -> Engine:
    """The engine `FOUNDRY_HELM` names, else `helm` on PATH, else the embedded SDK."""
    choice = os.environ.get(ENGINE_ENV, "")
    if choice == "sdk":
        return SdkEngine()
    if choice:
        found = shutil.which(choice)
        if found is None:
            raise UserError(f"{ENGINE_ENV}={choice}: no such helm executable; give the path of a helm binary, or `sdk`")
        return BinaryEngine(found)
    found = shutil.which("helm")
    return BinaryEngine(found) if found else SdkEngine()


@functools.cache
def _load_chart(chart: Path, *, with_schema: bool) -> Any:
    """The chart as Helm loaded it, once per process; without its values.schema.json on request."""
    from helm_python import Chart, HelmError

    try:
        if with_schema:
            return Chart.load(str(chart))
        with tempfile.TemporaryDirectory(prefix="foundry-chart-") as folder:
            copy = Path(folder) / chart.name
            shutil.copytree(chart, copy, ignore=shutil.ignore_patterns("values.schema.json"))
            return Chart.load(str(copy))
    except HelmError as error:
        raise UserError(f"{chart}: not a loadable Helm chart: {error}") from None


def parse_set(expression: str) -> dict[str, Any]:
    """One `--set` expression, parsed by Helm's own parser (the SDK's), so `a.b[0]=x` means what it means to Helm."""
    from helm_python import HelmError, parse_set_string

    try:
        return parse_set_string(expression)
    except HelmError as error:
        raise UserError(f"--set {expression}: {error}") from None


def parse_values_file(path: Path) -> dict[str, Any]:
    """A `-f` values file, parsed as Helm parses it (YAML 1.1 as sigs.k8s.io/yaml reads it)."""
    from helm_python import HelmError, values_from_yaml

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such values file") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"{path}: not a values file; expected a YAML mapping of chart values") from None
    try:
        values = values_from_yaml(text)
    except HelmError as error:
        raise UserError(f"{path}: invalid values file: {_strip_prefix(str(error))}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a YAML mapping of chart values")
    return values


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of `-f` files and `--set`s: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def values_from_files(files: Sequence[Path], sets: Sequence[str]) -> dict[str, Any]:
    """The values `helm -f FILE... --set K=V...` would pass: files in order, then the sets in order."""
    values: dict[str, Any] = {}
    for path in files:
        values = merge_values(values, parse_values_file(path))
    for expression in sets:
        values = _set_into(values, parse_set(expression))
    return values


def _set_into(base: Any, parsed: Any) -> Any:
    """A `--set` lands in what is already there, as Helm's strvals.ParseInto does: lists index by index
    (`a[0].key=x` then `a[0].value=y` make one item), and an index it skipped keeps its item."""
    if isinstance(base, dict) and isinstance(parsed, dict):
        return {**base, **{key: _set_into(base.get(key), value) for key, value in parsed.items()}}
    if isinstance(base, list) and isinstance(parsed, list):
        merged = [*base, *[None] * (len(parsed) - len(base))]
        return [item if new is None else _set_into(item, new) for item, new in zip(merged, [*parsed, *[None] * (len(merged) - len(parsed))], strict=True)]
    return parsed


_SCHEMA_PROBLEM = re.compile(r"^(?P<indent> *)- at '(?P<path>[^']*)': (?P<message>.*)$")
_EXECUTION = re.compile(r"execution error at \([^)]*\): (?P<message>.*)")


def _helm_error(message: str, chart: Path) -> UserError:
    lines = _one_line(message, chart)
    return UserError(lines[0], details=lines[1:])


def _one_line(message: str, chart: Path) -> list[str]:
    """Helm's error as one line per problem: schema violations name the value by its dotted path."""
    problems = _schema_problems(message)
    if problems:
        return [_schema_problem(path, text, chart) for path, text in problems]
    execution = _EXECUTION.search(message)
    if execution:
        return [execution["message"].strip()]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return [_strip_prefix(" ".join(lines)) or "helm failed without a message"]


def _schema_problems(message: str) -> list[tuple[str, str]]:
    """(JSON pointer, message) per violation. For a failed anyOf, the branch a person meant: the
    pattern a string missed or the minimum a number missed, rather than "got string, want number"."""
    found: list[tuple[str, str, list[str]]] = []
    for match in (_SCHEMA_PROBLEM.match(line) for line in message.splitlines()):
        if match and not match["indent"]:
            found.append((match["path"], match["message"], []))
        elif match and found:
            found[-1][2].append(match["message"])
    problems = []
    for path, text, branches in found:
        if branches and text.endswith("Of' failed"):
            text = next((branch for branch in branches if not branch.startswith("got ")), branches[0])
        problems.append((path, text))
    return problems


def _schema_problem(pointer: str, message: str, chart: Path) -> str:
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/") if part]
    path = ".".join(parts)
    description = _schema_description(chart, parts)
    if description and "does not match pattern" in message:
        value = message.split(" does not match pattern", 1)[0]
        message = f"{value} is not valid; expected {description[0].lower()}{description[1:].rstrip('.')}"
    return f"values: {path or '(top level)'}: {message}"


def _schema_description(chart: Path, parts: list[str]) -> str:
    """The description the chart's values.schema.json gives the value at `parts`, if any."""
    import json

    try:
        schema = json.loads((chart / "values.schema.json").read_text())
    except (OSError, ValueError):
        return ""
    node = schema
    for part in [*parts, None]:
        while isinstance(node, dict) and "$ref" in node:
            # A definition's description says its format, which is what a pattern failure needs.
            described = node.get("description")
            node = schema.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1], {})
            node = {"description": described, **node}
        if part is None:
            break
        if not isinstance(node, dict):
            return ""
        node = node.get("properties", {}).get(part) or (node.get("items") if part.isdigit() else None)
    return node.get("description", "") if isinstance(node, dict) else ""


def _strip_prefix(text: str) -> str:
    return text.removeprefix("Error: ").removeprefix("error converting YAML to JSON: ").strip()


def _split_sources(output: str) -> list[Template]:
    """`helm template`'s stream, cut back into (template path, text) at its `# Source:` lines."""
    templates: dict[str, list[str]] = {}
    for document in re.split(r"^---\s*$", output, flags=re.MULTILINE):
        source = re.match(r"\s*# Source: (.+)\n", document)
        if source:
            templates.setdefault(source[1].strip(), []).append(document[source.end():])
    return sorted((path, "\n---\n".join(parts)) for path, parts in templates.items())
