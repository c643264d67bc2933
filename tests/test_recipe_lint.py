"""Recipes are refused before anything runs, with file, line, field and what was expected."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.recipe.load import load_recipe

BAD = Path(__file__).parent / "bad_recipes"
BAD_RECIPES = sorted(BAD.glob("*.yml"))


def _expectation(path: Path) -> tuple[str, int]:
    text = path.read_bytes().decode("utf-8", errors="replace")  # some are not UTF-8 on purpose
    return re.search(r"# expect: (.*)", text).group(1), int(re.search(r"# line: (\d+)", text).group(1))


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD_RECIPES) >= 25


@pytest.mark.parametrize("path", BAD_RECIPES, ids=lambda p: p.stem)
def test_bad_recipe_is_refused_with_its_message_and_line(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)  # relative model paths in the corpus are read from here
    expected, line = _expectation(path)
    with pytest.raises(UserError) as caught:
        load_recipe(Path(path.name))
    lines = caught.value.lines()
    matching = [text for text in lines if expected in text]
    assert matching, f"expected {expected!r} among {lines}"
    assert matching[0].startswith(f"{path.name}:{line}: ")


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "recipes").glob("*.yml")), ids=lambda p: p.stem)
def test_shipped_recipes_lint_clean(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name


def _foundry(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_lint_exit_code_and_one_line_per_problem_without_traceback() -> None:
    result = _foundry("lint", str(BAD / "08-t-out-of-range.yml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {BAD / '08-t-out-of-range.yml'}:6: parameters.t: t must be in [0, 1], got 1.5"
    ]


def test_cli_debug_shows_the_traceback() -> None:
    result = _foundry("--debug", "plan", str(BAD / "01-empty.yml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_lint_of_a_folder_reports_every_file(repo: Path) -> None:
    result = _foundry("lint", str(repo / "recipes"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(list((repo / "recipes").glob("*.yml")))


def test_cli_lint_missing_file() -> None:
    result = _foundry("lint", "no/such/recipe.yml")
    assert result.returncode == 2
    assert "no/such/recipe.yml: no such recipe file" in result.stderr


def test_every_problem_of_a_recipe_is_reported_at_once(tmp_path: Path) -> None:
    recipe = tmp_path / "many.yml"
    recipe.write_text(
        "models: [{model: tiny:llama-a}, {model: tiny:llama-b}]\n"
        "merge_method: slerp\nbase_model: tiny:llama-a\nparameters: {t: 7}\n"
        "quantize: {variants: [q3]}\nfinetun: {}\n"
    )
    with pytest.raises(UserError) as caught:
        load_recipe(recipe)
    text = "\n".join(caught.value.lines())
    assert "parameters.t: t must be in [0, 1]" in text
    assert "q3 is not supported" in text
    assert "finetun: unknown key (did you mean 'finetune'?)" in text


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    recipe = tmp_path / "my-model-v2.yml"
    recipe.write_text("models: [{model: tiny:llama-a}]\n")
    assert load_recipe(recipe).name == "my-model-v2"


def test_mergekit_part_is_kept_as_written(repo: Path) -> None:
    recipe = load_recipe(repo / "recipes" / "tiny-demo.yml")
    assert recipe.mergekit_config() == {
        "models": [{"model": "tiny:llama-a"}, {"model": "tiny:llama-b"}],
        "merge_method": "slerp",
        "base_model": "tiny:llama-a",
        "parameters": {"t": 0.4},
        "dtype": "float32",
    }


def test_schema_command_prints_a_json_schema_of_every_key() -> None:
    result = _foundry("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    for key in ("models", "merge_method", "quantize", "publish", "sweep", "finetune", "evaluate"):
        assert key in schema["properties"]
    assert "name" not in schema.get("required", [])


def _fifo(path: Path) -> None:
    import os

    os.mkfifo(path)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda path: path.symlink_to(path.name), "cannot be read (Too many levels of symbolic links)"),
        (lambda path: path.symlink_to("/dev/zero"), "a device, pipe or socket, not a regular file"),
        (_fifo, "a device, pipe or socket, not a regular file"),  # opening it would wait for a writer
        (lambda path: path.symlink_to("/proc/self/environ"), ":1: invalid YAML: a character YAML does not allow (#x0000)"),
        (lambda path: path.write_text("# " + "x" * (1024 * 1024) + "\n"), "larger than 1024 KiB"),
    ],
    ids=["symlink-loop", "dev-zero", "fifo", "proc-environ", "too-large"],
)
def test_a_recipe_path_that_is_no_recipe_file_is_refused_in_one_line(tmp_path: Path, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.yml"
    make(path)
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert caught.value.lines() == [str(caught.value)] and expected in str(caught.value), caught.value.lines()
    assert "PATH=" not in str(caught.value)  # the environment is never quoted


def test_cli_refuses_a_billion_laughs_and_a_root_model_folder_in_one_line_each(tmp_path: Path) -> None:
    for name in ("39-billion-laughs.yml", "47-root-as-model.yml"):
        for command in (["lint"], ["plan", "--store", str(tmp_path)]):
            result = _foundry(*command, name, cwd=BAD)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr[:2000]


def test_many_problems_are_cut_to_a_readable_number(tmp_path: Path) -> None:
    recipe = tmp_path / "many.yml"
    recipe.write_text("models: [{model: tiny:llama-a}, {model: tiny:llama-b}]\nmerge_method: slerp\nbase_model: tiny:llama-a\nparameters:\n  t: [" + ", ".join(["2"] * 500) + "]\n")
    with pytest.raises(UserError) as caught:
        load_recipe(recipe)
    lines = caught.value.lines()
    assert len(lines) == 31 and lines[-1] == f"{recipe}: and 470 more problems; fix these first"
