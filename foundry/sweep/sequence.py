"""How a sweep runs, whoever runs it: `foundry sweep` (local subprocesses) and the in-cluster driver.

Every grid point is planned as the recipe it becomes (foundry.sweep.plan.expand). First the
exploration: every point's stages up to and including its evaluation, each key once, so a
stage the points have in common (a merge upstream of a swept fine-tune or evaluate field)
runs once and is shared. Then `sweep.select` picks the best point by one metric, read from
the evaluate markers in the store, ties going to the earliest point in grid order. Only that
point's later stages (quantize, publish) run, and its evaluation's gate, if it has one, still
stands between it and them (foundry/gate.py). A sweep without `select` explores only: the
recipe check refuses one that would quantize or publish.

Both executors derive each step from the plans and the store alone, so a re-run finds every
key committed and a restarted driver picks the same winner from the same markers.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from foundry.errors import UserError
from foundry.metrics import flat_metrics, metric_value
from foundry.recipe.schema import SweepSelect
from foundry.stagespec import STAGE_ORDER
from foundry.store import Store

LAST_EXPLORED = STAGE_ORDER.index("evaluate")


class Staged(Protocol):
    """A planned stage as either executor holds it (foundry.plan.PlannedStage, foundry.k8s.runs.PlanStage)."""

    @property
    def stage(self) -> str: ...

    @property
    def key(self) -> str: ...


S = TypeVar("S", bound=Staged)


@dataclass(frozen=True)
class GridPoint(Generic[S]):
    index: int  # 0-based, in grid order
    values: dict[str, Any]  # dotted path -> value
    stages: list[S]

    @property
    def label(self) -> str:
        return ", ".join(f"{path}={value}" for path, value in self.values.items()) or "(no grid)"

    @property
    def explored(self) -> list[S]:
        """The stages every point runs: up to and including its evaluation."""
        return [s for s in self.stages if STAGE_ORDER.index(s.stage) <= LAST_EXPLORED]  # type: ignore[arg-type]

    @property
    def finishing(self) -> list[S]:
        """The stages only the winner runs: quantize and publish."""
        return [s for s in self.stages if STAGE_ORDER.index(s.stage) > LAST_EXPLORED]  # type: ignore[arg-type]

    @property
    def evaluation(self) -> str | None:
        return next((s.key for s in self.stages if s.stage == "evaluate"), None)


@dataclass(frozen=True)
class Selection:
    metric: str
    mode: str
    values: list[float]  # the metric at each point, in grid order
    winner: int  # the index of the best point: the first one, in grid order, of those tied best


@dataclass(frozen=True)
class Sweep(Generic[S]):
    recipe: str
    recipe_hash: str
    select: SweepSelect | None
    points: list[GridPoint[S]]

    @property
    def paths(self) -> list[str]:
        return list(self.points[0].values) if self.points else []

    def exploration(self) -> list[S]:
        """The union of the points' explored stages, each key once, in an order that runs a
        stage after the stages it reads (a point's own order, points in grid order)."""
        seen: dict[str, S] = {}
        for point in self.points:
            for planned in point.explored:
                seen.setdefault(planned.key, planned)
        return list(seen.values())

    def owners(self) -> dict[str, int]:
        """For each explored key, the first point (grid order) that has it; later points share it."""
        owner: dict[str, int] = {}
        for point in self.points:
            for planned in point.explored:
                owner.setdefault(planned.key, point.index)
        return owner

    def metrics(self, store: Store) -> list[dict[str, float] | None]:
        """Each point's flat metrics, from its evaluate marker; None for a point without an
        evaluation or whose evaluation is not committed."""
        found: list[dict[str, float] | None] = []
        for point in self.points:
            marker = store.marker(self.recipe, point.evaluation) if point.evaluation else None
            found.append(flat_metrics(marker, f"{self.recipe}/{point.evaluation}") if marker is not None else None)
        return found

    def choose(self, metrics: Sequence[Mapping[str, float] | None]) -> Selection:
        """The best point by `select`; a metric a point's evaluation did not produce is a
        UserError naming it and the metrics there are."""
        if self.select is None:
            raise UserError(f"recipe {self.recipe}: sweep has no select; add select: {{metric: <suite>.<metric>, mode: max}} to pick the best point")
        values = []
        for point, found in zip(self.points, metrics, strict=True):
            if found is None:
                raise UserError(f"recipe {self.recipe}: sweep point {point.label} has no committed evaluation to select by")
            values.append(metric_value(dict(found), self.select.metric, f"recipe {self.recipe}: sweep.select.metric, point {point.label} ({point.evaluation})"))
        return Selection(self.select.metric, self.select.mode, values, best(values, self.select.mode))


def best(values: Sequence[float], mode: str) -> int:
    """The index of the best value: the largest (`max`) or smallest (`min`); the first of
    equal ones; NaN never beats a number."""
    winner = 0
    for index, value in enumerate(values):
        current = values[winner]
        if math.isnan(value):
            continue
        if math.isnan(current) or (value > current if mode == "max" else value < current):
            winner = index
    return winner


def document(
    sweep: Sweep[Any],
    *,
    metrics: Sequence[Mapping[str, float] | None],
    outcomes: Mapping[str, str],
    selection: Selection | None,
    state: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """The sweep's report (sweep.json, and in the store beside a cluster run's status): each
    point with its values, stage keys, metrics and what it ran, and the winner.

    `outcomes` maps keys to how they ended in this run (ran, cached, failed, gated, ...); a
    point's explored key that an earlier point owns counts as shared for it."""
    owners = sweep.owners()
    points = []
    for point, found in zip(sweep.points, metrics, strict=True):
        counts = {"ran": 0, "cached": 0, "shared": 0}
        for planned in point.explored:
            if owners[planned.key] != point.index:
                counts["shared"] += 1
            elif outcomes.get(planned.key) in ("ran", "cached"):
                counts[outcomes[planned.key]] += 1
        points.append({
            "index": point.index,
            "point": point.values,
            "label": point.label,
            "stages": {planned.stage: planned.key for planned in point.explored},
            "metric": selection.values[point.index] if selection else None,
            "metrics": dict(found) if found is not None else None,
            **counts,
            "winner": selection is not None and selection.winner == point.index,
        })
    winner = None
    if selection is not None:
        chosen = sweep.points[selection.winner]
        winner = {
            "index": chosen.index,
            "point": chosen.values,
            "label": chosen.label,
            "metric": selection.values[chosen.index],
            "stages": {planned.stage: planned.key for planned in chosen.finishing},
            "outcomes": {planned.key: outcomes.get(planned.key, "not run") for planned in chosen.finishing},
        }
    explored = sweep.exploration()
    return {
        "recipe": sweep.recipe,
        "recipe_hash": sweep.recipe_hash,
        "grid": sweep.paths,
        "select": sweep.select.model_dump() if sweep.select else None,
        "state": state,
        "reason": reason,
        "points": points,
        "winner": winner,
        "distinct_explored_stages": len(explored),
        "explored_stages_across_points": sum(len(point.explored) for point in sweep.points),
        "stage_runs": sum(1 for outcome in outcomes.values() if outcome == "ran"),
    }
