"""The in-cluster driver on a sweep (`--sweep plans.json`), through the official client against
the API server fake, with plans.json as `foundry render` makes it (the real chart).

The tests play the stages' part as tests/test_driver.py does, committing evaluate keys with
the metrics the evaluate stage records in its marker (the driver judges gates on them).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from k8s_fake import DriverThread, FakeApiServer, saved

from foundry import cli, runstatus
from foundry.commands.submit import apply_all
from foundry.k8s.cluster import connect
from foundry.k8s.runs import PLANS_KEY, SweepPlan, read_sweep_plan
from foundry.render import Rendered, render_recipe
from foundry.store import Store, build_record
from jobs.driver import SweepDriver, main, sweep_document_path

REPO = Path(__file__).resolve().parent.parent
RUN = "fdy-tiny-sweep-cron-29000000"
RECIPE = """\
name: tiny-sweep
models: [{model: "tiny:llama-a"}, {model: "tiny:llama-b"}]
merge_method: slerp
base_model: "tiny:llama-a"
parameters: {t: 0.4}
dtype: float32
evaluate: {suites: [{jsonl: "s3://eval-bucket/qa.jsonl"}]}
quantize: {variants: [q8]}
publish: {to: "s3://web-bucket/models"}
sweep:
  grid: {evaluate.limit: [10, 20, 30]}
  select: {metric: qa.acc, mode: max}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "tiny-sweep.yml"
    path.write_text(RECIPE)
    return path


def render(recipe: Path, cron: str | None = None) -> Rendered:
    return render_recipe(recipe, sets=["store.url=s3://foundry-store/runs"], cron=cron, namespace="foundry")


def plans_of(rendered: Rendered) -> dict[str, Any]:
    (config_map,) = [obj for obj in rendered.objects if obj["kind"] == "ConfigMap"]
    return json.loads(config_map["data"][PLANS_KEY])


@pytest.fixture(scope="module")
def plans_json(recipe: Path) -> dict[str, Any]:
    """plans.json from the ConfigMap of the recipe's CronJob, rendered by the chart."""
    return plans_of(render(recipe, cron="0 2 * * *"))


def sweep_plan(plans_json: dict[str, Any], store: Store, **changes: Any) -> SweepPlan:
    """The rendered plans, pointed at this test's store (the chart writes the store's s3:// URL)."""
    document = {**plans_json, "store": store.url, **changes}
    return read_sweep_plan(json.dumps(document), "plans.json")


def commit(store: Store, plan: SweepPlan, key: str, result: dict[str, Any] | None = None) -> None:
    """What a stage pod does last: its output committed under its key, with its result in the marker."""
    staging = store.new_staging(plan.recipe, key)
    (staging / "out.txt").write_text(key)
    if result is not None:
        (staging / "metrics.json").write_text(json.dumps(result))
    store.commit(plan.recipe, key, staging, build_record(staging, key=key, stage=key.split("-")[0], recipe=plan.recipe, started=0.0, extra={"result": result or {}}))


def evaluated(accuracy: float) -> dict[str, Any]:
    return {"metrics": {"qa.acc": accuracy, "qa.acc_norm": accuracy / 2}}


class Stages:
    """The sweep's stages by role: the shared merge, each point's evaluation, each point's finishing stages."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan
        self.points = [{stage.stage: stage for stage in point.stages} for point in plan.plans]
        self.merge = self.points[0]["merge"]
        self.evaluations = [point["evaluate"] for point in self.points]

    def complete(self, fake: FakeApiServer, store: Store, stage: Any, result: dict[str, Any] | None = None) -> None:
        commit(store, self.plan, stage.key, result)
        fake.succeed(stage.job_name)


def report(store: Store) -> dict[str, Any]:
    document = store.get_document(sweep_document_path(RUN))
    assert document is not None
    return document


def test_the_points_run_up_to_their_evaluation_then_only_the_winner_is_quantized_and_published(k8s: FakeApiServer, store: Store, plans_json: dict[str, Any]) -> None:
    plan = sweep_plan(plans_json, store)
    stages = Stages(plan)
    assert len({point["merge"].key for point in stages.points}) == 1 and len({e.key for e in stages.evaluations}) == 3
    driver = DriverThread(SweepDriver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job(stages.merge.job_name) is not None)
    assert k8s.job_creates == [stages.merge.job_name], "one merge for the three points, and nothing before it is committed"
    stages.complete(k8s, store, stages.merge)
    k8s.wait_for(lambda: all(k8s.job(e.job_name) is not None for e in stages.evaluations))
    for evaluation, accuracy in zip(stages.evaluations, (0.5, 0.75, 0.75), strict=True):
        assert not any(k8s.job(point[name].job_name) for point in stages.points for name in ("quantize", "publish"))
        stages.complete(k8s, store, evaluation, evaluated(accuracy))
    winner = stages.points[1]  # tied with the third: the first in grid order wins
    k8s.wait_for(lambda: k8s.job(winner["quantize"].job_name) is not None)
    stages.complete(k8s, store, winner["quantize"])
    k8s.wait_for(lambda: k8s.job(winner["publish"].job_name) is not None)
    stages.complete(k8s, store, winner["publish"])
    assert driver.result() == 0
    assert k8s.job_creates[:1] + sorted(k8s.job_creates[1:4]) + k8s.job_creates[4:] == \
        [stages.merge.job_name, *sorted(e.job_name for e in stages.evaluations), winner["quantize"].job_name, winner["publish"].job_name]
    status = saved(store, RUN)
    assert status.state == "succeeded" and status.recipe_hash == plan.recipe_hash
    assert [(row.stage, row.state) for row in status.stages] == [("merge", "succeeded")] + [("evaluate", "succeeded")] * 3 + [("quantize", "succeeded"), ("publish", "succeeded")]
    document = report(store)
    assert document["state"] == "succeeded" and document["winner"]["index"] == 1 and document["winner"]["point"] == {"evaluate.limit": 20}
    assert [point["metric"] for point in document["points"]] == [0.5, 0.75, 0.75]
    assert [(point["ran"], point["shared"]) for point in document["points"]] == [(2, 0), (1, 1), (1, 1)]


def test_a_sweep_driver_killed_and_restarted_chooses_the_same_winner_without_duplicating_a_job(k8s: FakeApiServer, store: Store, plans_json: dict[str, Any], tmp_path: Path) -> None:
    plan = sweep_plan(plans_json, store)
    stages = Stages(plan)
    plan_file = tmp_path / "plans.json"
    plan_file.write_text(plan.model_dump_json())

    def started(until: Any) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "jobs.driver", "--sweep", str(plan_file), "--run", RUN], cwd=REPO, env={**os.environ, "KUBECONFIG": str(k8s.kubeconfig)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        k8s.wait_for(until, timeout=30)
        return process

    def running(*keys: str) -> bool:
        status = runstatus.load(store, RUN)
        return status is not None and {row.key for row in status.stages if row.state == "running"} >= set(keys)

    first = started(lambda: running(stages.merge.key))
    stages.complete(k8s, store, stages.merge)
    k8s.wait_for(lambda: running(*(e.key for e in stages.evaluations)), timeout=30)
    first.kill()
    first.wait()
    for evaluation, accuracy in zip(stages.evaluations, (0.25, 0.5, 0.75), strict=True):
        stages.complete(k8s, store, evaluation, evaluated(accuracy))  # while no driver runs
    winner = stages.points[2]
    second = started(lambda: running(winner["quantize"].key))
    second.kill()
    second.wait()
    third = DriverThread(SweepDriver(RUN, plan, connect(), store))  # resumes with the winner's rows saved: adopts its quantize Job
    stages.complete(k8s, store, winner["quantize"])
    k8s.wait_for(lambda: k8s.job(winner["publish"].job_name) is not None)
    stages.complete(k8s, store, winner["publish"])
    assert third.result() == 0
    assert len(k8s.job_creates) == len(set(k8s.job_creates)) == 6
    assert k8s.job_creates[-2:] == [winner["quantize"].job_name, winner["publish"].job_name]
    assert [row.state for row in saved(store, RUN).stages] == ["succeeded"] * 6 and report(store)["winner"]["index"] == 2


def test_a_selection_metric_no_evaluation_produced_fails_the_run_naming_it(k8s: FakeApiServer, store: Store, plans_json: dict[str, Any]) -> None:
    plan = sweep_plan(plans_json, store, select={"metric": "qa.exact_match", "mode": "max"})
    stages = Stages(plan)
    commit(store, plan, stages.merge.key)
    for evaluation in stages.evaluations:
        commit(store, plan, evaluation.key, evaluated(0.5))
    assert DriverThread(SweepDriver(RUN, plan, connect(), store)).result() == 2
    assert k8s.job_creates == [], "everything explored was committed, and no winner was chosen"
    status, document = saved(store, RUN), report(store)
    assert status.state == "failed" and [row.state for row in status.stages] == ["cached"] * 4
    assert document["state"] == "failed" and document["winner"] is None
    assert "no metric 'qa.exact_match'" in document["reason"] and "(metrics there: qa.acc, qa.acc_norm)" in document["reason"]


@pytest.fixture(scope="module")
def gated_plans_json(recipe: Path) -> dict[str, Any]:
    """plans.json of the same sweep with a gate every point misses (qa.acc is at most 0.75 below)."""
    path = recipe.parent / "tiny-sweep-gated.yml"
    path.write_text(RECIPE.replace('evaluate: {suites: [{jsonl: "s3://eval-bucket/qa.jsonl"}]}', 'evaluate: {suites: [{jsonl: "s3://eval-bucket/qa.jsonl"}], gate: {qa.acc: ">= 0.9"}}'))
    return plans_of(render(path))


def test_the_winners_gate_stops_its_quantize_and_publish(k8s: FakeApiServer, store: Store, plans_json: dict[str, Any], gated_plans_json: dict[str, Any]) -> None:
    plan = sweep_plan(gated_plans_json, store)
    stages = Stages(plan)
    assert [evaluation.key for evaluation in stages.evaluations] == [evaluation.key for evaluation in Stages(sweep_plan(plans_json, store)).evaluations]
    assert all(point[name].gate == {"qa.acc": ">= 0.9"} and point["evaluate"].gate == {} for point in stages.points for name in ("quantize", "publish"))
    commit(store, plan, stages.merge.key)
    for evaluation, accuracy in zip(stages.evaluations, (0.5, 0.75, 0.25), strict=True):
        commit(store, plan, evaluation.key, evaluated(accuracy))  # measurements only: the driver judges the gate on them
    assert DriverThread(SweepDriver(RUN, plan, connect(), store)).result() == 2
    assert k8s.job_creates == []
    status = saved(store, RUN)
    assert status.state == "gated" and [row.state for row in status.stages[-2:]] == ["gated", "gated"]
    assert status.stages[-2].reason == f"gate failed in {stages.evaluations[1].key}: qa.acc = 0.75, needs >= 0.9"
    assert report(store)["winner"]["outcomes"] == {stages.points[1]["quantize"].key: "gated", stages.points[1]["publish"].key: "gated"}


def test_a_sweep_plan_without_points_is_refused(tmp_path: Path, plans_json: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plans.json"
    bad.write_text(json.dumps({**plans_json, "plans": []}))
    with pytest.raises(SystemExit) as exit_:
        main(["--sweep", str(bad), "--run", "r"])
    assert exit_.value.code == 2 and f"error: {bad}: a sweep plan with no points" in capsys.readouterr().err


def test_status_and_runs_read_a_sweep_run_from_the_cluster(k8s: FakeApiServer, store: Store, recipe: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rendered = render(recipe)
    apply_all(connect(), rendered.objects, dry_run=False)
    (driver_job,) = [obj for obj in rendered.objects if obj["kind"] == "Job"]
    assert driver_job["spec"]["template"]["spec"]["containers"][0]["args"] == ["--sweep", "/etc/foundry/plan/plans.json"]
    run = driver_job["metadata"]["name"]
    plan = sweep_plan(plans_of(rendered), store)
    stages = Stages(plan)
    commit(store, plan, stages.merge.key)
    for evaluation, accuracy in zip(stages.evaluations, (0.75, 0.5, 0.25), strict=True):
        commit(store, plan, evaluation.key, evaluated(accuracy))
    driver = DriverThread(SweepDriver(run, plan, connect(), store))
    winner = stages.points[0]
    k8s.wait_for(lambda: k8s.job(winner["quantize"].job_name) is not None)
    stages.complete(k8s, store, winner["quantize"])
    k8s.wait_for(lambda: k8s.job(winner["publish"].job_name) is not None)
    stages.complete(k8s, store, winner["publish"])
    assert driver.result() == 0
    k8s.succeed(run)  # the driver's pod exits 0

    monkeypatch.setattr(sys, "argv", ["foundry", "status", run, "--store", store.url])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"run {run}: succeeded" in out and f"from the cluster {k8s.url}" in out
    rows = [[cell.strip() for cell in line.split("│")[1:4]] for line in out.splitlines() if line.startswith("│ ")]
    assert rows == [["merge", stages.merge.key, "cached"]] + [["evaluate", e.key, "cached"] for e in stages.evaluations] + \
        [["quantize", winner["quantize"].key, "succeeded"], ["publish", winner["publish"].key, "succeeded"]]
    monkeypatch.setattr(sys, "argv", ["foundry", "runs"])
    with pytest.raises(SystemExit):
        cli.main()
    assert run in capsys.readouterr().out
