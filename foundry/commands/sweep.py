"""`foundry sweep`: every point of a recipe's grid on this machine, the best one published,
with progress, a table per point and a report (sweep.json, sweep.md, sweep.png) in the run folder."""

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from foundry.commands.run import Progress, check_publish_target, console
from foundry.errors import USER_ERROR_EXIT_CODE, UserError
from foundry.gate import GATED_EXIT_CODE
from foundry.plan import Plan, PlannedStage
from foundry.recipe.load import load_recipe
from foundry.reports import number
from foundry.runner import StageFailed, new_run_dir
from foundry.store import Store, open_store, resolve_store_url
from foundry.sweep.local import SweepRun, plan_sweep, run_sweep
from foundry.sweep.report import MARKDOWN_FILE, write_report
from foundry.sweep.sequence import GridPoint, Selection, Sweep


def sweep_recipe(recipe_path: Path, store_flag: str | None, runs_dir: Path, *, force: bool, strict: bool = False, plan_only: bool = False) -> int:
    sweep, plans = plan_sweep(load_recipe(recipe_path), strict=strict)
    for warning in dict.fromkeys(warning for the_plan in plans for warning in the_plan.warnings):
        console.print(f"[yellow]warning:[/] {warning}")
    store = open_store(resolve_store_url(store_flag))
    if plan_only:
        _show_plan(sweep, store)
        return 0
    _check_publish_targets(plans, store, force)
    run_dir = new_run_dir(runs_dir, f"{sweep.recipe}-sweep")
    explored = sweep.exploration()
    console.print(f"sweep {sweep.recipe}: {len(sweep.points)} point(s) over {', '.join(sweep.paths)}, {len(explored)} distinct stage(s) to explore "
                  f"({sum(len(point.explored) for point in sweep.points)} across points), store {store.url}, logs and report in {run_dir}")
    reporter = _Reporter()
    run = run_sweep(sweep, plans, store, run_dir, force=force, report=reporter)
    reporter.stage.stop()
    document = run.document()
    _table(document)
    files = write_report(document, run_dir)
    console.print(f"report: {run_dir / MARKDOWN_FILE} ({', '.join(path.name for path in files)})")
    return _ending(run)


class _Reporter:
    def __init__(self) -> None:
        self.stage = Progress()

    def point(self, point: GridPoint[PlannedStage], total: int) -> None:
        console.print(f"[bold]point {point.index + 1}/{total}[/] {escape(point.label)}")

    def shared(self, planned: PlannedStage, owner: GridPoint[PlannedStage]) -> None:
        console.print(f"• {planned.stage} {planned.key} shared with point {owner.index + 1}")

    def selected(self, selection: Selection, winner: GridPoint[PlannedStage]) -> None:
        rest = ", ".join(planned.stage for planned in winner.finishing) or "nothing more"
        console.print(f"[bold]best:[/] point {winner.index + 1} ({escape(winner.label)}), {selection.metric} = {number(selection.values[winner.index])} ({selection.mode}); "
                      f"running its {rest}")


def _ending(run: SweepRun) -> int:
    """Print how the sweep ended; its exit code: 0, 1 (a stage crashed), 2 (bad input), 3 (gated)."""
    if run.state == "gated":
        console.print(f"[red]✗ gated:[/] {escape(run.reason or '')}; nothing published")
        return GATED_EXIT_CODE
    if isinstance(run.failure, UserError):
        raise run.failure
    if isinstance(run.failure, StageFailed):
        failure = run.failure
        console.print(f"[red]✗ {failure.result.stage}[/] {failure.result.key} failed after {failure.result.seconds:.1f}s (exit {failure.exit_code})")
        for line in failure.tail:
            console.print(f"  {line}", markup=False)
        console.print(f"  log: {failure.result.log}")
        return USER_ERROR_EXIT_CODE if failure.is_user_error else 1
    return 0


def _table(document: dict) -> None:
    select = document["select"]
    table = Table(title=f"sweep {document['recipe']}: {document['state']}")
    table.add_column("#", justify="right")
    for path in document["grid"]:
        table.add_column(path)
    table.add_column(select["metric"] if select else "metric", justify="right")
    for column in ("ran", "cached", "shared"):
        table.add_column(column, justify="right")
    table.add_column("winner")
    for point in document["points"]:
        values = [str(point["point"][path]) for path in document["grid"]]
        table.add_row(str(point["index"] + 1), *values, number(point["metric"]), str(point["ran"]), str(point["cached"]), str(point["shared"]), "★" if point["winner"] else "")
    Console(highlight=False).print(table)


def _show_plan(sweep: Sweep[PlannedStage], store: Store) -> None:
    """Each point's stages: committed, to run, shared with an earlier point, or run for the winner only."""
    owners = sweep.owners()
    table = Table(title=f"sweep {sweep.recipe} (recipe hash {sweep.recipe_hash}): {len(sweep.points)} point(s)")
    for column in ("#", "point", "stage", "key", "state"):
        table.add_column(column)
    for point in sweep.points:
        for planned in point.stages:
            if planned in point.finishing:
                state = "winner only"
            elif owners[planned.key] != point.index:
                state = f"shared with point {owners[planned.key] + 1}"
            else:
                state = "committed" if store.is_committed(sweep.recipe, planned.key) else "to run"
            table.add_row(str(point.index + 1), point.label, planned.stage, planned.key, state)
    Console(highlight=False).print(table)


def _check_publish_targets(plans: list[Plan], store: Store, force: bool) -> None:
    """Every point's publish target (one, unless the grid sweeps publish.to), checked before the sweep starts."""
    targets: dict[tuple[str, str], tuple[Plan, PlannedStage]] = {}
    for the_plan in plans:
        for planned in the_plan.stages:
            if planned.stage == "publish":
                targets.setdefault((str(planned.params.get("to")), str(planned.params.get("catalog"))), (the_plan, planned))
    for the_plan, planned in targets.values():
        check_publish_target(the_plan, store, [planned], force)
