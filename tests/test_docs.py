"""The README serves the first hour and the manual lives in docs/: every link in them
resolves (files and #anchors), every `foundry` command the README shows exists with the
flags it uses, every `make` target it names is in the Makefile, and it stays short."""

import re
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from foundry.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = LINK.findall(text)
    for target in links:
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue  # the web: not reachable from the tests
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link {target!r}: no such file {linked}"
        if anchor:
            assert linked.suffix == ".md", f"{page.name}: link {target!r}: an anchor into a non-Markdown file"
            assert anchor in anchors(linked), f"{page.name}: link {target!r}: {linked.name} has no heading with that anchor"


def test_the_readme_serves_the_first_hour() -> None:
    text = README.read_text()
    assert len(text.encode()) < 15_000
    assert "make demo    # installs what it needs, then runs recipes/tiny-demo.yml end to end, offline" in text
    assert "make test    # installs what it needs, then runs the test suite" in text
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in text, f"README does not link docs/{page.name}"


def readme_commands(word: str) -> list[str]:
    """The `word ...` lines of the README's shell blocks, their comments cut off."""
    commands, shell, fenced = [], False, False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            shell = fenced and line.strip("`").strip() in ("bash", "sh", "")
            continue
        line = line.split("  #", 1)[0].strip()
        if shell and line.startswith((f"{word} ", f".venv/bin/{word} ")):
            commands.append(line.removeprefix(".venv/bin/"))
    return commands


def test_every_foundry_command_in_the_readme_exists_with_its_flags() -> None:
    commands = readme_commands("foundry")
    assert len(commands) >= 10
    group = typer.main.get_command(app)
    runner = CliRunner()
    for line in commands:
        words = line.split()[1:]
        command, path = group, []
        while isinstance(command, click.Group) and words and words[0] in command.commands:
            path.append(words[0])
            command = command.commands[words.pop(0)]
        assert path and not isinstance(command, click.Group), f"README: {line!r} names no foundry command"
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"{line!r}: {result.output}"
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for flag in (word.split("=")[0] for word in words if word.startswith("-")):
            assert flag in options, f"README: {line!r}: `foundry {' '.join(path)}` has no {flag}"


def test_every_make_target_in_the_readme_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = [line.split()[1] for line in readme_commands("make")]
    assert {"demo", "test"} <= set(named) <= targets
