"""`foundry run` and `foundry plan`: a recipe on this machine, with progress and a summary."""

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from foundry import gate
from foundry.errors import USER_ERROR_EXIT_CODE, UserError
from foundry.gate import GATED_EXIT_CODE
from foundry.plan import Plan, PlannedStage, plan
from foundry.recipe.load import load_recipe
from foundry.recipe.schema import Recipe
from foundry.runner import Gated, StageFailed, StageResult, new_run_dir, run_plan, select_stages
from foundry.store import Store, open_store, resolve_store_url

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _load(recipe_path: Path, store_flag: str | None, strict: bool = False) -> tuple[Plan, Store]:
    recipe = load_recipe(recipe_path)
    refuse_sweep(recipe, recipe_path)
    the_plan = plan(recipe, strict=strict)
    for warning in the_plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    return the_plan, open_store(resolve_store_url(store_flag))


def show_plan(recipe_path: Path, store_flag: str | None, *, strict: bool = False) -> None:
    the_plan, store = _load(recipe_path, store_flag, strict)
    table = Table(title=f"{the_plan.recipe} (recipe hash {the_plan.recipe_hash})")
    for column in ("stage", "key", "inputs", "state"):
        table.add_column(column)
    for planned in the_plan.stages:
        inputs = ", ".join(f"{name}={source.key or source.model}" for name, source in planned.inputs.items())
        state = "committed" if store.is_committed(the_plan.recipe, planned.key) else "to run"
        stopped = gate.blocking(store, the_plan.recipe, planned.after, planned.gate)
        state += f" (gated: {stopped})" if stopped else ""
        table.add_row(planned.stage, planned.key, inputs or "-", state)
    Console(highlight=False).print(table)


def run_recipe(recipe_path: Path, store_flag: str | None, runs_dir: Path, *, force: bool, only: str | None, until: str | None, strict: bool = False) -> int:
    the_plan, store = _load(recipe_path, store_flag, strict)
    stages = select_stages(the_plan, only, until)
    check_publish_target(the_plan, store, stages, force)
    run_dir = new_run_dir(runs_dir, the_plan.recipe)
    console.print(f"run {the_plan.recipe}: {len(stages)} stage(s), store {store.url}, logs in {run_dir}")
    progress = Progress()
    try:
        results = run_plan(the_plan, store, run_dir, stages, force=force, report=progress)
    except StageFailed as failure:
        progress.stop()
        console.print(f"[red]✗ {failure.result.stage}[/] {failure.result.key} failed after {failure.result.seconds:.1f}s (exit {failure.exit_code})")
        for line in failure.tail:
            console.print(f"  {line}", markup=False)
        console.print(f"  log: {failure.result.log}")
        return USER_ERROR_EXIT_CODE if failure.is_user_error else 1
    except Gated as gated:
        progress.stop()
        _summary(gated.results)
        _print_metrics(the_plan, store, gated.results)
        skipped = [s.stage for s in stages[stages.index(gated.stage):]]
        console.print(f"[red]✗ gated:[/] {escape(gated.line)}")
        console.print(f"  not run: {', '.join(skipped)}")
        return GATED_EXIT_CODE
    _summary(results)
    _print_metrics(the_plan, store, results)
    return 0


def _print_metrics(the_plan: Plan, store: Store, results: list[StageResult]) -> None:
    """The evaluation's flat metrics under the summary, ran or cached."""
    for result in results:
        if result.stage == "evaluate":
            metrics = ((store.marker(the_plan.recipe, result.key) or {}).get("result") or {}).get("metrics") or {}
            console.print(f"metrics ({result.key}): " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()), markup=False)


def refuse_sweep(recipe: Recipe, path: Path) -> None:
    """`foundry run` and `plan` take one plan; a sweep's points, selection and winner are `foundry sweep`'s."""
    if recipe.sweep is not None:
        paths = ", ".join(recipe.sweep.grid)
        raise UserError(f"recipe {recipe.name} has a sweep over {paths}; run it with `foundry sweep {path}`, which runs every point and publishes only the best (`--plan` lists their stages)")


def check_publish_target(the_plan: Plan, store: Store, stages: list[PlannedStage], force: bool) -> None:
    """A bucket that cannot be published to fails now, not after the stages before publish."""
    for planned in stages:
        to = str(planned.params.get("to") or "")
        if planned.stage == "publish" and to.startswith("s3://") and (force or not store.is_committed(the_plan.recipe, planned.key)):
            from foundry.s3.publish import open_target

            open_target(to, planned.params.get("catalog"))


class Progress:
    """A spinner on a terminal, plain lines elsewhere (CI logs, pipes)."""

    def __init__(self) -> None:
        self._status = None

    def __call__(self, event: str, planned: PlannedStage, result: StageResult | None) -> None:
        if event == "start":
            self._status = console.status(f"{planned.stage} {planned.key} running…")
            self._status.start()
            if not console.is_terminal:
                console.print(f"▶ {planned.stage} {planned.key}")
            return
        self.stop()
        assert result is not None
        if result.outcome == "cached":
            console.print(f"• {planned.stage} {planned.key} cached")
        else:
            console.print(f"✓ {planned.stage} {planned.key} {result.seconds:.1f}s")

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _summary(results: list[StageResult]) -> None:
    table = Table(title="summary")
    for column, justify in (("stage", "left"), ("key", "left"), ("cached", "left"), ("seconds", "right"), ("output", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for result in results:
        table.add_row(result.stage, result.key, "yes" if result.outcome == "cached" else "no", f"{result.seconds:.1f}", _size(result.size_bytes))
    Console(highlight=False).print(table)


def _size(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
