"""The in-cluster driver, through the official client against the API server fake.

Each test plays the stages' part: it commits a stage's key in a local store and marks its
Job succeeded (or fails it), and checks what the driver did in the cluster and wrote to the
store. The restart test kills real driver processes with SIGKILL mid-run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_fake import RUN, DriverThread, FakeApiServer, commit_key, plan_of, rendered, saved

from foundry import runstatus
from foundry.k8s.cluster import connect
from foundry.k8s.errors import ClusterError
from foundry.k8s.runs import RunPlan
from foundry.store import Store
from jobs.driver import Driver, main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def plan(store: Store) -> RunPlan:
    return RunPlan.model_validate(plan_of(rendered(store.url)))


def complete(fake: FakeApiServer, store: Store, plan: RunPlan, index: int) -> None:
    """What a stage pod does: commit its key, then exit 0."""
    commit_key(store, plan.recipe, plan.stages[index].key)
    fake.succeed(plan.stages[index].job_name)


def test_runs_each_stage_job_once_its_inputs_are_committed(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    merge, quantize, publish = (s.job_name for s in plan.stages)
    driver = DriverThread(Driver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job(merge) is not None)
    assert k8s.job(quantize) is None and saved(store).state == "running"
    complete(k8s, store, plan, 0)
    k8s.wait_for(lambda: k8s.job(quantize) is not None)
    assert k8s.job(publish) is None
    complete(k8s, store, plan, 1)
    k8s.wait_for(lambda: k8s.job(publish) is not None)
    complete(k8s, store, plan, 2)
    assert driver.result() == 0
    assert k8s.job_creates == [merge, quantize, publish]
    status = saved(store)
    assert status.state == "succeeded" and status.finished
    assert [(row.stage, row.state) for row in status.stages] == [("merge", "succeeded"), ("quantize", "succeeded"), ("publish", "succeeded")]
    assert all(row.pod and row.pod.startswith(row.job) and row.seconds is not None for row in status.stages)


def test_a_committed_stage_is_cached_and_gets_no_job(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    commit_key(store, plan.recipe, plan.stages[0].key)
    driver = DriverThread(Driver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job(plan.stages[1].job_name) is not None)
    complete(k8s, store, plan, 1)
    k8s.wait_for(lambda: k8s.job(plan.stages[2].job_name) is not None)
    complete(k8s, store, plan, 2)
    assert driver.result() == 0
    assert plan.stages[0].job_name not in k8s.job_creates
    assert [row.state for row in saved(store).stages] == ["cached", "succeeded", "succeeded"]


def test_a_driver_killed_and_restarted_mid_run_finishes_without_duplicating_a_job(k8s: FakeApiServer, store: Store, plan: RunPlan, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    merge, quantize, publish = (s.job_name for s in plan.stages)

    def started(job: str, stage: int) -> subprocess.Popen:
        """A driver process, once it has created `job` and saved that in the store."""
        process = subprocess.Popen([sys.executable, "-m", "jobs.driver", "--plan", str(plan_file), "--run", RUN], cwd=REPO, env={**os.environ, "KUBECONFIG": str(k8s.kubeconfig)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        k8s.wait_for(lambda: k8s.job(job) is not None and (status := runstatus.load(store, RUN)) is not None and status.stages[stage].state == "running", timeout=30)
        return process

    first = started(merge, 0)
    first.kill()
    first.wait()
    complete(k8s, store, plan, 0)  # the merge finishes while no driver is running
    second = started(quantize, 1)
    second.kill()
    second.wait()
    third = DriverThread(Driver(RUN, plan, connect(), store))  # finds quantize's Job running: adopts it
    complete(k8s, store, plan, 1)
    k8s.wait_for(lambda: k8s.job(publish) is not None)
    complete(k8s, store, plan, 2)
    assert third.result() == 0
    assert k8s.job_creates == [merge, quantize, publish]
    assert [row.state for row in saved(store).stages] == ["succeeded", "succeeded", "succeeded"]


def test_a_create_that_finds_the_job_there_adopts_it(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    driver = Driver(RUN, plan, connect(), store)
    row = driver.status.stages[0]
    driver._create(row, plan.stages[0])
    driver._create(row, plan.stages[0])  # as a restarted driver racing its predecessor: 409, adopted
    assert k8s.job_creates == [plan.stages[0].job_name] and row.state == "running"


def test_an_expired_watch_is_listed_again(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    commit_key(store, plan.recipe, plan.stages[0].key)
    commit_key(store, plan.recipe, plan.stages[1].key)
    publish = plan.stages[2].job_name
    driver = DriverThread(Driver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job(publish) is not None and any(k == "ADDED" and obj["metadata"]["name"] == publish for _, k, _, _, obj in k8s.events))
    k8s.wait_for(lambda: any(query.get("watch") for _, _, query in k8s.requests))
    k8s.expire_watches()
    k8s.wait_for(lambda: k8s.gone_served >= 1)
    complete(k8s, store, plan, 2)
    assert driver.result() == 0
    assert k8s.job_creates == [publish]


@pytest.mark.parametrize(("end", "expected"), [
    (lambda fake, job: fake.fail(job, exit_code=137, container_reason="OOMKilled"), "container stage OOMKilled (exit 137)"),
    (lambda fake, job: fake.fail(job, exit_code=2), "container stage exited with code 2: bad input"),
    (lambda fake, job: fake.evict(job), "pod Evicted: The node was low on resource: ephemeral-storage."),
    (lambda fake, job: fake.exceed_deadline(job), "Job DeadlineExceeded: Job was active longer than specified deadline"),
])
def test_a_failed_stage_is_reported_with_its_reason_and_log_tail(k8s: FakeApiServer, store: Store, plan: RunPlan, end, expected: str) -> None:
    merge = plan.stages[0].job_name
    driver = DriverThread(Driver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job(merge) is not None)
    k8s.log(merge, "".join(f"loading shard {i}\n" for i in range(30)) + "error: input model tiny:nope is not a known tiny model\n")
    end(k8s, merge)
    assert driver.result() == 2
    status = saved(store)
    row = status.stages[0]
    assert status.state == "failed" and row.state == "failed"
    assert expected in (row.reason or "")
    assert len(row.log_tail) == 20 and row.log_tail[-1] == "error: input model tiny:nope is not a known tiny model"
    assert [r.state for r in status.stages[1:]] == ["pending", "pending"] and k8s.job_creates == [merge]


def test_a_job_that_completed_without_committing_fails_the_run(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    merge = plan.stages[0].job_name
    driver = DriverThread(Driver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job(merge) is not None)
    k8s.succeed(merge)
    assert driver.result() == 2
    assert "has no _SUCCESS.json" in (saved(store).stages[0].reason or "")


def test_a_driver_the_role_does_not_let_create_jobs_names_what_is_missing(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    k8s.allowed = {("list", "jobs.batch"), ("watch", "jobs.batch"), ("get", "jobs.batch"), ("list", "pods"), ("get", "pods/log")}
    with pytest.raises(ClusterError, match=r"^forbidden: cannot create jobs.batch in namespace foundry \(context fake\); grant it with a Role"):
        Driver(RUN, plan, connect(), store).run()


def test_a_bad_plan_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"recipe": "x", "stages": [{"stage": "merge"}]}))
    with pytest.raises(SystemExit) as exit_:
        main([str(bad), "--run", "r"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: not a Foundry plan" in err and "recipe_hash: Field required" in err


def test_a_job_that_failed_in_an_earlier_run_is_replaced_not_adopted(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    merge = plan.stages[0].job_name
    earlier = Driver("foundry-tiny-demo-last-night", plan, connect(), store)
    earlier._create(earlier.status.stages[0], plan.stages[0])
    k8s.fail(merge)  # and it stays there, failed, for the Job's ttlSecondsAfterFinished
    driver = DriverThread(Driver(RUN, plan, connect(), store))
    k8s.wait_for(lambda: k8s.job_creates.count(merge) == 2)
    assert k8s.job(merge)["metadata"]["annotations"]["foundry.dev/run"] == RUN
    for index in range(3):
        k8s.wait_for(lambda index=index: k8s.job(plan.stages[index].job_name) is not None and "active" in (k8s.job(plan.stages[index].job_name).get("status") or {}))
        complete(k8s, store, plan, index)
    assert driver.result() == 0
    assert [row.state for row in saved(store).stages] == ["succeeded", "succeeded", "succeeded"]


def test_a_restarted_driver_keeps_its_own_runs_failure(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    merge = plan.stages[0].job_name
    first = Driver(RUN, plan, connect(), store)
    first._create(first.status.stages[0], plan.stages[0])
    k8s.fail(merge)
    assert DriverThread(Driver(RUN, plan, connect(), store)).result() == 2  # the same run, started again: its failure stands
    assert k8s.job_creates == [merge] and saved(store).stages[0].state == "failed"


def test_a_stage_whose_image_cannot_be_pulled_fails_the_run_naming_the_image(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    merge = plan.stages[0].job_name
    driver = DriverThread(Driver(RUN, plan, connect(), store, watch_seconds=1))  # a pod's state is no Job event: the next pass sees it
    k8s.wait_for(lambda: k8s.job(merge) is not None)
    [pod] = k8s.pods_of(merge)
    k8s.update_pod(pod, "Pending", {"waiting": {"reason": "ErrImagePull", "message": 'failed to pull image "foundry-cpu:test": not found'}})
    assert driver.result(timeout=20) == 2
    row = saved(store).stages[0]
    assert row.state == "failed" and f'pod {pod["metadata"]["name"]} cannot start: ErrImagePull for image "foundry-cpu:test"' in (row.reason or "")
    assert k8s.job(merge) is None  # deleted, so that its pod does not wait for the Job's deadline
