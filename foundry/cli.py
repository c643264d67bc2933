"""The `foundry` command. Each command parses its flags and calls the library; no work here.

Imports of anything beyond typer happen inside the commands, so `foundry --help` stays
fast and the submitter never imports torch.
"""

import sys
from pathlib import Path

import click
import typer

from foundry import __version__
from foundry.errors import USER_ERROR_EXIT_CODE, UserError

app = typer.Typer(
    name="foundry",
    help="Turn model recipes into web-ready models: merge, fine-tune, evaluate, quantize, publish.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}

RecipeArg = typer.Argument(..., help="Recipe file (YAML).", show_default=False)
StoreOpt = typer.Option(None, "--store", help="Artifact store: a folder, file://PATH or s3://BUCKET/PREFIX. [env: FOUNDRY_STORE; default: ./.foundry/store]")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"foundry {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for every error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


@app.command()
def lint(paths: list[Path] = typer.Argument(..., help="Recipe files, or folders of them.", show_default=False)) -> None:
    """Validate recipes without running anything; exit 2 if any is wrong."""
    from foundry.commands.lint import lint_paths

    raise typer.Exit(0 if lint_paths(paths) else USER_ERROR_EXIT_CODE)


@app.command()
def schema(output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of standard output.")) -> None:
    """Print the recipe's JSON Schema, for editors' completion and validation."""
    from foundry.commands.lint import recipe_json_schema

    text = recipe_json_schema()
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")


@app.command()
def plan(recipe: Path = RecipeArg, store: str | None = StoreOpt) -> None:
    """Show the stages a recipe makes, their keys, and which are already committed."""
    from foundry.commands.run import show_plan

    show_plan(recipe, store)


@app.command()
def run(
    recipe: Path = RecipeArg,
    store: str | None = StoreOpt,
    runs_dir: Path = typer.Option(Path(".foundry/runs"), "--runs-dir", help="Where each run keeps its stage specs and logs."),
    force: bool = typer.Option(False, "--force", help="Redo the selected stages even when committed."),
    only: str | None = typer.Option(None, "--only", help="Run just this stage (its inputs must be committed)."),
    until: str | None = typer.Option(None, "--until", help="Run the stages up to and including this one."),
) -> None:
    """Run a recipe's stages on this machine, skipping what is already committed."""
    from foundry.commands.run import run_recipe

    raise typer.Exit(run_recipe(recipe, store, runs_dir, force=force, only=only, until=until))


@app.command()
def verify(target: str = typer.Argument(..., help="A published model folder, a stage key folder, or RECIPE/KEY in the store.", show_default=False), store: str | None = StoreOpt) -> None:
    """Re-hash every file of a published model or stage key; name what is missing or corrupted."""
    from foundry.commands.verify import verify_target

    raise typer.Exit(0 if verify_target(target, store) else 1)


def main() -> None:
    """Entry point: user errors become one line and exit code 2, unless --debug."""
    try:
        code = app(standalone_mode=False)
    except UserError as error:
        if _state["debug"] or "--debug" in sys.argv:
            raise
        for line in error.lines():
            typer.echo(f"error: {line}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
