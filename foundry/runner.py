"""`foundry run`: a plan's stages as local subprocesses, through the container's entry.

Each stage runs as `python -m jobs SPEC.json`, exactly what a stage pod runs, with its
output going to a log file in the run folder. A committed key is skipped unless forced;
a failing stage stops the run with its last error lines and the log's path, and an
evaluation whose metrics miss the recipe's gate stops it before the stages planned after it
(quantize, publish), whether that evaluation ran now or was committed before (under an
older threshold, even: the gate is judged each time, never stored).
"""

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from foundry import gate
from foundry.errors import USER_ERROR_EXIT_CODE, UserError
from foundry.plan import Plan, PlannedStage
from foundry.stagespec import STAGE_ORDER
from foundry.store import Store

Outcome = Literal["cached", "ran", "failed"]
_TAIL_LINES = 12


@dataclass
class StageResult:
    stage: str
    key: str
    outcome: Outcome
    seconds: float
    size_bytes: int
    log: str | None = None


class StageFailed(Exception):
    def __init__(self, result: StageResult, exit_code: int, tail: list[str]) -> None:
        super().__init__(f"stage {result.key} failed with exit code {exit_code}")
        self.result = result
        self.exit_code = exit_code
        self.tail = tail

    @property
    def is_user_error(self) -> bool:
        return self.exit_code == USER_ERROR_EXIT_CODE


class Gated(Exception):
    """An evaluation's gate failed: `stage` and every stage after it were not run."""

    def __init__(self, stage: PlannedStage, line: str, results: list[StageResult]) -> None:
        super().__init__(line)
        self.stage = stage
        self.line = line
        self.results = results


Reporter = Callable[[str, PlannedStage, StageResult | None], None]


def select_stages(plan: Plan, only: str | None, until: str | None) -> list[PlannedStage]:
    for name in (only, until):
        if name is not None and name not in STAGE_ORDER:
            raise UserError(f"--only/--until: unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
    if only is not None:
        return [plan.stage(only)]
    if until is not None:
        plan.stage(until)
        last = STAGE_ORDER.index(until)  # type: ignore[arg-type]
        return [s for s in plan.stages if STAGE_ORDER.index(s.stage) <= last]
    return list(plan.stages)


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A folder of this run's own under `runs_dir`: `<name>-<YYYYmmdd-HHMMSS>-<random>`.

    Created here, exclusively: two runs started in the same second (of one recipe or of
    recipes with the same name) never share a folder, so never overwrite each other's specs.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:
        run_dir = runs_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir


def run_plan(plan: Plan, store: Store, run_dir: Path, stages: list[PlannedStage], *, force: bool, report: Reporter) -> list[StageResult]:
    run_dir.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    for planned in stages:
        stopped = gate.blocking(store, plan.recipe, planned.after, planned.gate)
        if stopped is not None:
            (run_dir / "summary.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
            raise Gated(planned, stopped, results)
        marker = None if force else store.marker(plan.recipe, planned.key)
        if marker is not None:
            result = StageResult(planned.stage, planned.key, "cached", 0.0, int(marker.get("size_bytes", 0)))
        else:
            _require_inputs(plan, store, planned)
            report("start", planned, None)
            result = _run_one(plan, store, run_dir, planned)
        results.append(result)
        report("end", planned, result)
    (run_dir / "summary.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


def _require_inputs(plan: Plan, store: Store, planned: PlannedStage) -> None:
    for name, source in planned.inputs.items():
        if source.key and not store.is_committed(plan.recipe, source.key):
            raise UserError(f"stage {planned.key}: its input {name} ({source.key}) is not committed in {store.url}; run the earlier stages first (drop --only)")


def _run_one(plan: Plan, store: Store, run_dir: Path, planned: PlannedStage) -> StageResult:
    spec_path = planned.spec(plan.recipe, store.url).write(run_dir / f"{planned.stage}.spec.json")
    log_path = run_dir / f"{planned.stage}.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.run([sys.executable, "-m", "jobs", str(spec_path)], stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = round(time.monotonic() - started, 2)
    if process.returncode != 0:
        result = StageResult(planned.stage, planned.key, "failed", seconds, 0, str(log_path))
        raise StageFailed(result, process.returncode, _error_tail(log_path))
    marker = store.marker(plan.recipe, planned.key) or {}
    return StageResult(planned.stage, planned.key, "ran", seconds, int(marker.get("size_bytes", 0)), str(log_path))


def _error_tail(log_path: Path) -> list[str]:
    """The stage's own error lines when it printed some, else the log's last lines."""
    lines = log_path.read_text(errors="replace").splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors or lines[-_TAIL_LINES:]
