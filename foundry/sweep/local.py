"""`foundry sweep`: a sweep's points as local subprocesses, sequenced by foundry.sweep.sequence.

Each point's explored stages go through foundry.runner, exactly as `foundry run` runs a plan,
into the point's own folder of the run (`point-01/`, ...); a stage an earlier point already
ran or found committed in this sweep is not run again for a later one, even with --force.
Then the best point's quantize and publish run (`winner/`), unless its gate stops them.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from foundry.errors import UserError
from foundry.plan import Plan, PlannedStage, plan, recipe_hash
from foundry.recipe.schema import Recipe
from foundry.runner import Gated, Reporter, StageFailed, StageResult, run_plan
from foundry.store import Store
from foundry.sweep.plan import expand
from foundry.sweep.sequence import GridPoint, Selection, Sweep, document


class SweepReporter(Protocol):
    """What `foundry sweep` shows as it goes; `stage` is foundry.runner's reporter."""

    stage: Reporter

    def point(self, point: GridPoint[PlannedStage], total: int) -> None: ...

    def shared(self, planned: PlannedStage, owner: GridPoint[PlannedStage]) -> None: ...

    def selected(self, selection: Selection, winner: GridPoint[PlannedStage]) -> None: ...


@dataclass
class SweepRun:
    sweep: Sweep[PlannedStage]
    results: dict[str, StageResult] = field(default_factory=dict)  # by key, in the order they ended
    stopped: dict[str, str] = field(default_factory=dict)  # key -> failed or gated: what did not end
    metrics: list[dict[str, float] | None] = field(default_factory=list)
    selection: Selection | None = None
    state: str = "succeeded"  # succeeded, failed or gated
    reason: str | None = None
    failure: StageFailed | UserError | None = None

    def document(self) -> dict:
        outcomes = {**{key: result.outcome for key, result in self.results.items()}, **self.stopped}
        metrics = self.metrics or [None] * len(self.sweep.points)
        return document(self.sweep, metrics=metrics, outcomes=outcomes, selection=self.selection, state=self.state, reason=self.reason)


def plan_sweep(recipe: Recipe, *, strict: bool = False) -> tuple[Sweep[PlannedStage], list[Plan]]:
    """Every grid point planned as the recipe it becomes, and the sweep over them."""
    if recipe.sweep is None:
        raise UserError(f"recipe {recipe.name} has no sweep; add sweep: {{grid: {{parameters.t: [0.3, 0.5, 0.7]}}, select: {{metric: ..., mode: max}}}}, or run it with `foundry run`")
    points = expand(recipe)
    plans = [plan(point.recipe, strict=strict) for point in points]
    grid = [GridPoint(index, point.point, list(the_plan.stages)) for index, (point, the_plan) in enumerate(zip(points, plans, strict=True))]
    return Sweep(recipe.name, recipe_hash(recipe), recipe.sweep.select, grid), plans


def run_sweep(sweep: Sweep[PlannedStage], plans: list[Plan], store: Store, run_dir: Path, *, force: bool, report: SweepReporter) -> SweepRun:
    """Explore every point, select the best, finish it; a failure or a gate ends the run with
    what it reached recorded, for the report."""
    run = SweepRun(sweep)
    owners = sweep.owners()

    def stage(event: str, planned: PlannedStage, result: StageResult | None) -> None:
        if result is not None:
            run.results[planned.key] = result
        report.stage(event, planned, result)

    try:
        for point, the_plan in zip(sweep.points, plans, strict=True):
            report.point(point, len(sweep.points))
            todo = []
            for planned in point.explored:
                if owners[planned.key] == point.index:
                    todo.append(planned)
                else:
                    report.shared(planned, sweep.points[owners[planned.key]])
            run_plan(the_plan, store, run_dir / f"point-{point.index + 1:02d}", todo, force=force, report=stage)
        run.metrics = sweep.metrics(store)
        if sweep.select is None:
            return run
        run.selection = sweep.choose(run.metrics)
        winner = sweep.points[run.selection.winner]
        report.selected(run.selection, winner)
        if winner.finishing:
            run_plan(plans[winner.index], store, run_dir / "winner", winner.finishing, force=force, report=stage)
    except StageFailed as failure:
        run.stopped[failure.result.key] = "failed"
        run.state, run.reason, run.failure = "failed", f"{failure.result.stage} {failure.result.key} failed (exit {failure.exit_code})", failure
    except Gated as gated:  # only the winner's stages wait on a gate
        finishing = sweep.points[run.selection.winner].finishing if run.selection else [gated.stage]
        run.stopped.update({planned.key: "gated" for planned in finishing[finishing.index(gated.stage):]})
        run.state, run.reason = "gated", gated.line
    except UserError as error:
        run.state, run.reason, run.failure = "failed", str(error), error
    if not run.metrics:
        run.metrics = sweep.metrics(store)  # what the points that got there measured
    return run
