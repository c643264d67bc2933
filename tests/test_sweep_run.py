"""`foundry sweep` on this machine, through the real CLI and real stages on tiny models: a
5-point sweep over `evaluate.limit` (downstream of the merge, which every point shares)
runs each stage key once, evaluates every point, publishes only the best, and re-runs
from the store alone. Every field the issue names as sweepable (`parameters.t`, a model's
`weight` and `density`, a LoRA rank) expands and plans; the sequencing's selection rules
(ties, `min`, NaN) are checked without running anything."""

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from png_check import assert_png

from foundry.metrics import read_metrics
from foundry.plan import recipe_hash
from foundry.recipe.load import load_recipe
from foundry.recipe.schema import SweepSelect
from foundry.store import build_record, open_store
from foundry.sweep.local import plan_sweep
from foundry.sweep.plan import expand
from foundry.sweep.report import write_report
from foundry.sweep.sequence import GridPoint, Sweep, best, document

REPO = Path(__file__).resolve().parent.parent
LIMITS = [1, 2, 3, 4, 5]
# Easy facts with the right answer first: the tiny models' log-likelihoods pick some of them,
# so the accuracy over the first N items differs with N.
SUITE = [
    ("The sky is", ["blue", "green"]), ("Two plus two is", ["four", "five"]), ("The cat says", ["meow", "woof"]),
    ("Fire is", ["hot", "cold"]), ("Ice is", ["cold", "hot"]), ("The sun rises in the", ["east", "west"]),
]
RECIPE = """\
name: tiny-sweep
models:
  - model: tiny:llama-a
  - model: tiny:llama-b
merge_method: slerp
base_model: tiny:llama-a
parameters: {{t: 0.4}}
dtype: float32
evaluate:
  suites: [{{jsonl: {suite}}}]
quantize: {{variants: [q8]}}
publish: {{to: {published}, shard_size_mb: 1, entry: {{id: tiny-sweep-best}}}}
sweep:
  grid: {{evaluate.limit: {limits}}}
  select: {{metric: {metric}, mode: max}}
"""


@dataclass(frozen=True)
class Swept:
    folder: Path
    recipe: Path
    first: subprocess.CompletedProcess[str]

    @property
    def store(self) -> Path:  # the layout sweep_in gives
        return self.folder / "store"

    @property
    def catalogue(self) -> Path:
        return self.folder / "published" / "models.json"

    def run_folder(self, runs: str) -> Path:
        (found,) = (self.folder / runs).iterdir()
        return found


def foundry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd, check=False)


def write_recipe(folder: Path, name: str, metric: str) -> Path:
    path = folder / name
    path.write_text(RECIPE.format(suite=folder / "facts.jsonl", published=folder / "published", limits=LIMITS, metric=metric))
    return path


def sweep_in(folder: Path, recipe: Path, runs: str) -> subprocess.CompletedProcess[str]:
    return foundry("sweep", str(recipe), "--store", str(folder / "store"), "--runs-dir", str(folder / runs), cwd=folder)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "facts.jsonl").write_text("".join(json.dumps({"query": query, "choices": choices, "gold": 0}) + "\n" for query, choices in SUITE))
    recipe = write_recipe(folder, "tiny-sweep.yml", "facts.acc")
    return Swept(folder, recipe, sweep_in(folder, recipe, "runs-1"))


def test_a_five_point_sweep_shares_stages_evaluates_each_point_and_publishes_only_the_best(swept: Swept) -> None:
    assert swept.first.returncode == 0, swept.first.stderr
    sweep, _ = plan_sweep(load_recipe(swept.recipe))
    explored = sweep.exploration()
    assert len(explored) == 6 and sum(len(point.explored) for point in sweep.points) == 10, "one merge shared by five evaluations"

    store = open_store(str(swept.store))
    values = [read_metrics(store.fetch(sweep.recipe, point.evaluation))["facts.acc"] for point in sweep.points]  # type: ignore[arg-type]
    assert len(set(values)) > 1, "the points must differ for the selection to mean anything"
    winner = values.index(max(values))  # the first of the best, in grid order

    run = swept.run_folder("runs-1")
    ran = [json.loads(path.read_text())["key"] for path in sorted(run.rglob("*.spec.json"))]  # one spec per stage process
    finishing = {planned.key for planned in sweep.points[winner].finishing}
    assert sorted(ran) == sorted({planned.key for planned in explored} | finishing), "each distinct key ran once, the winner's quantize and publish too"
    assert [key.split("-")[0] for key in ran].count("merge") == 1 and [key.split("-")[0] for key in ran].count("evaluate") == 5

    committed = {item.key for item in store.list_committed(sweep.recipe)}
    assert committed == {planned.key for planned in explored} | finishing
    publishes = {planned.key for point in sweep.points for planned in point.finishing if planned.stage == "publish"}
    assert len(publishes) == 5 and committed & publishes == {sweep.points[winner].stages[-1].key}, "the other points were never published"

    catalogue = json.loads(swept.catalogue.read_text())
    assert list(catalogue) == ["tiny-sweep-best"]
    assert catalogue["tiny-sweep-best"]["recipe_hash"] == recipe_hash(expand(load_recipe(swept.recipe))[winner].recipe), "the entry is the winner's"

    report = json.loads((run / "sweep.json").read_text())
    assert report["state"] == "succeeded" and report["stage_runs"] == 8
    assert [point["metric"] for point in report["points"]] == values
    assert [point["winner"] for point in report["points"]] == [index == winner for index in range(5)]
    assert [(point["ran"], point["cached"], point["shared"]) for point in report["points"]] == [(2, 0, 0)] + [(1, 0, 1)] * 4
    assert report["winner"]["outcomes"] == {key: "ran" for key in report["winner"]["stages"].values()}
    rows = [line for line in (run / "sweep.md").read_text().splitlines() if line.startswith(f"| {winner + 1} |")]
    assert rows and rows[0].endswith("| ★ |")
    assert_png(run / "sweep.png")
    assert "★" in swept.first.stdout and f"best: point {winner + 1} (evaluate.limit={LIMITS[winner]})" in swept.first.stderr


def test_a_second_sweep_is_answered_from_the_store(swept: Swept) -> None:
    catalogue = swept.catalogue.read_bytes()
    again = sweep_in(swept.folder, swept.recipe, "runs-2")
    assert again.returncode == 0, again.stderr
    run = swept.run_folder("runs-2")
    assert list(run.rglob("*.spec.json")) == [], "no stage ran"
    report = json.loads((run / "sweep.json").read_text())
    assert report["stage_runs"] == 0 and all(point["ran"] == 0 for point in report["points"])
    assert set(report["winner"]["outcomes"].values()) == {"cached"}
    assert swept.catalogue.read_bytes() == catalogue


def test_a_selection_metric_no_evaluation_gives_fails_naming_it(swept: Swept) -> None:
    """exact_match is a metric name a suite may give (lint lets it through), but this suite is multiple choice."""
    recipe = write_recipe(swept.folder, "tiny-sweep-typo.yml", "facts.exact_match")
    failed = sweep_in(swept.folder, recipe, "runs-3")
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: recipe tiny-sweep: sweep.select.metric, point evaluate.limit=1 (evaluate-")
    assert "no metric 'facts.exact_match'" in last and "(metrics there: facts.acc, facts.acc_norm)" in last and "Traceback" not in failed.stderr
    run = swept.run_folder("runs-3")
    assert list(run.rglob("*.spec.json")) == []
    report = json.loads((run / "sweep.json").read_text())
    assert report["state"] == "failed" and "facts.exact_match" in report["reason"] and report["winner"] is None


def test_foundry_run_points_a_sweep_at_foundry_sweep(swept: Swept) -> None:
    refused = foundry("run", str(swept.recipe), "--store", str(swept.store), cwd=swept.folder)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: recipe tiny-sweep has a sweep over evaluate.limit; run it with `foundry sweep {swept.recipe}`, " \
                                     "which runs every point and publishes only the best (`--plan` lists their stages)"


def test_a_winner_that_misses_its_gate_is_neither_quantized_nor_published(tmp_path: Path) -> None:
    """The evaluations are committed beforehand (stand-in markers with the metrics the evaluate
    stage records), so nothing runs: the selection, then the gate judged on the winner's
    metrics, through the real runner."""
    (tmp_path / "facts.jsonl").write_text(json.dumps({"query": "Q", "choices": ["a", "b"], "gold": 0}) + "\n")
    recipe = write_recipe(tmp_path, "gated.yml", "facts.acc")
    recipe.write_text(recipe.read_text().replace("evaluate:\n", "evaluate:\n  gate: {facts.acc: \">= 0.9\"}\n"))
    sweep, _ = plan_sweep(load_recipe(recipe))
    store = open_store(str(tmp_path / "store"))
    for point, accuracy in zip(sweep.points, [0.5, 0.8, 0.7, 0.6, 0.8], strict=True):
        result = {"metrics": {"facts.acc": accuracy}}
        for planned in point.explored:
            if not store.is_committed(sweep.recipe, planned.key):
                staging = store.new_staging(sweep.recipe, planned.key)
                (staging / "out.txt").write_text(planned.key)
                store.commit(sweep.recipe, planned.key, staging, build_record(staging, key=planned.key, stage=planned.stage, recipe=sweep.recipe, started=0.0,
                                                                                  extra={"result": result if planned.stage == "evaluate" else {}}))
    gated = sweep_in(tmp_path, recipe, "runs")
    assert gated.returncode == 3, gated.stderr
    assert f"✗ gated: gate failed in {sweep.points[1].evaluation}: facts.acc = 0.8, needs >= 0.9; nothing published" in gated.stderr
    report = json.loads((next((tmp_path / "runs").iterdir()) / "sweep.json").read_text())
    assert report["state"] == "gated" and report["winner"]["index"] == 1 and set(report["winner"]["outcomes"].values()) == {"gated"}
    assert not (tmp_path / "published").exists() and report["stage_runs"] == 0


SLERP = """\
name: fields
models: [{model: "tiny:llama-a"}, {model: "tiny:llama-b"}]
merge_method: slerp
base_model: "tiny:llama-a"
parameters: {t: 0.5}
dtype: float32
"""
TIES = """\
name: fields
models:
  - {model: "tiny:llama-a"}
  - {model: "tiny:llama-b", parameters: {weight: 0.5, density: 0.5}}
merge_method: ties
base_model: "tiny:llama-a"
dtype: float32
"""


@pytest.mark.parametrize(("base", "path", "values", "where"), [
    (SLERP, "parameters.t", [0.3, 0.5, 0.7], lambda stages: stages["merge"]["mergekit"]["parameters"]["t"]),
    (TIES, "models.1.parameters.weight", [0.3, 0.7, 1.0], lambda stages: stages["merge"]["mergekit"]["models"][1]["parameters"]["weight"]),
    (TIES, "models.1.parameters.density", [0.2, 0.5, 0.9], lambda stages: stages["merge"]["mergekit"]["models"][1]["parameters"]["density"]),
    (SLERP, "finetune.rank", [4, 8, 16], lambda stages: stages["finetune"]["rank"]),
])
def test_every_field_the_issue_names_expands_and_plans(base: str, path: str, values: list, where, tmp_path: Path) -> None:
    finetune = f"finetune: {{dataset: {REPO / 'recipes' / 'data' / 'colours.jsonl'}, max_steps: 2}}\n"
    recipe = tmp_path / "fields.yml"
    recipe.write_text(base + finetune + f"sweep:\n  grid: {{{path}: {json.dumps(values)}}}\n")
    sweep, plans = plan_sweep(load_recipe(recipe))
    assert [point.values for point in sweep.points] == [{path: value} for value in values]
    assert [where({planned.stage: planned.params for planned in the_plan.stages}) for the_plan in plans] == values
    merges = {the_plan.stage("merge").key for the_plan in plans}
    finetunes = {the_plan.stage("finetune").key for the_plan in plans}
    assert len(finetunes) == 3 and len(merges) == (1 if path.startswith("finetune.") else 3), "a stage upstream of the swept field is shared"
    assert len(sweep.exploration()) == len(merges) + len(finetunes)


def test_the_best_point_is_the_first_of_the_best_in_grid_order() -> None:
    assert best([0.5, 0.75, 0.75, 0.25], "max") == 1
    assert best([0.5, 0.25, 0.25, 0.75], "min") == 1
    assert best([math.nan, 0.25, math.nan], "max") == 1 and best([math.nan, math.nan], "min") == 0


@dataclass(frozen=True)
class Stage:
    stage: str
    key: str


def test_a_sweep_over_two_fields_reports_one_line_per_combination(tmp_path: Path) -> None:
    grid = [{"parameters.t": t, "evaluate.limit": limit} for limit in (2, 4) for t in (0.3, 0.5, 0.7)]
    points = [GridPoint(index, values, [Stage("merge", f"merge-{values['parameters.t']}"), Stage("evaluate", f"evaluate-{index}"), Stage("quantize", f"quantize-{index}")])
              for index, values in enumerate(grid)]
    sweep = Sweep("two", "0" * 16, SweepSelect(metric="qa.exact_match", mode="min"), points)
    metrics = [{"qa.exact_match": value} for value in (0.5, 0.25, 0.75, 0.25, 0.5, 0.5)]
    selection = sweep.choose(metrics)
    assert selection.winner == 1 and len(sweep.exploration()) == 3 + 6
    outcomes = {planned.key: "ran" for planned in sweep.exploration()} | {"quantize-1": "ran"}
    report = document(sweep, metrics=metrics, outcomes=outcomes, selection=selection, state="succeeded")
    assert [(point["ran"], point["shared"]) for point in report["points"]] == [(2, 0)] * 3 + [(1, 1)] * 3
    assert report["winner"]["stages"] == {"quantize": "quantize-1"} and report["stage_runs"] == 10
    files = write_report(report, tmp_path)
    assert [path.name for path in files] == ["sweep.json", "sweep.md", "sweep.png"]
    assert "| 2 | 0.5 | 2 | 0.25 | 2 | 0 | 0 | ★ |" in (tmp_path / "sweep.md").read_text()
    assert_png(tmp_path / "sweep.png")
