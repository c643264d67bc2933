"""`foundry status`, `logs`, `cancel` and `runs` against the API server fake, and from the store alone."""

import sys
import threading
from pathlib import Path

import pytest
from k8s_fake import RUN, FakeApiServer, commit_key, plan_of, rendered

from foundry import cli, runstatus
from foundry.commands.submit import apply_all
from foundry.k8s.cluster import connect
from foundry.k8s.runs import RunPlan
from foundry.store import Store
from jobs.driver import Driver


@pytest.fixture
def plan(k8s: FakeApiServer, store: Store) -> RunPlan:
    """A submitted run: its objects applied, nothing started yet."""
    objects = rendered(store.url)
    apply_all(connect(), objects, dry_run=False)
    return RunPlan.model_validate(plan_of(objects))


def foundry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["foundry", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def run_until_quantize_is_oomkilled(k8s: FakeApiServer, store: Store, plan: RunPlan) -> None:
    driver = threading.Thread(target=Driver(RUN, plan, connect(), store).run, daemon=True)
    driver.start()
    merge, quantize = plan.stages[0].job_name, plan.stages[1].job_name
    k8s.wait_for(lambda: k8s.job(merge) is not None)
    commit_key(store, plan.recipe, plan.stages[0].key)
    k8s.succeed(merge)
    k8s.wait_for(lambda: k8s.job(quantize) is not None)
    k8s.log(quantize, "exporting to ONNX\nKilled\n")
    k8s.fail(quantize, exit_code=137, container_reason="OOMKilled")
    driver.join(10)
    k8s.fail(RUN, exit_code=2)  # the driver's pod: exit 2, the run failed


def test_status_reads_the_run_from_the_cluster(k8s: FakeApiServer, store: Store, plan: RunPlan, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run_until_quantize_is_oomkilled(k8s, store, plan)
    code, out, _ = foundry(monkeypatch, capsys, "status", RUN)
    assert code == 0
    assert f"run {RUN}: failed" in out and f"from the cluster {k8s.url}, namespace foundry" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ") and line.split()[1] in ("merge", "quantize", "publish")}
    assert "succeeded" in rows["merge"] and k8s.pods_of(plan.stages[0].job_name)[0]["metadata"]["name"] in rows["merge"]
    assert "failed" in rows["quantize"] and "container stage OOMKilled (exit 137)" in rows["quantize"]
    assert "pending" in rows["publish"]
    assert "  exporting to ONNX\n  Killed" in out  # the failed pod's last log lines
    assert foundry(monkeypatch, capsys, "status")[1] == out  # the newest run, without naming it


def test_status_from_the_store_alone_when_the_cluster_is_out_of_reach(k8s: FakeApiServer, store: Store, plan: RunPlan, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run_until_quantize_is_oomkilled(k8s, store, plan)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    code, out, _ = foundry(monkeypatch, capsys, "status", RUN, "--store", store.url)
    assert code == 0
    assert f"from the store {store.url} (no kubeconfig: $KUBECONFIG ({tmp_path / 'no-such-kubeconfig'}) does not exist" in out
    assert f"run {RUN}: failed" in out and "container stage OOMKilled (exit 137)" in out and "  Killed" in out
    code, _, err = foundry(monkeypatch, capsys, "status", "no-such-run", "--store", store.url)
    assert code == 2 and err.startswith(f"error: no run no-such-run in store {store.url} either (no kubeconfig")


def test_logs_of_a_stage_of_the_driver_and_followed(k8s: FakeApiServer, plan: RunPlan, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    merge = plan.stages[0].job_name
    connect().batch.create_namespaced_job("foundry", plan.stages[0].job)  # as the driver would
    k8s.log(merge, "merging 2 models\n")
    k8s.log(RUN, "run started\n")
    assert foundry(monkeypatch, capsys, "logs", RUN, "--stage", "merge")[1] == "merging 2 models\n"
    assert foundry(monkeypatch, capsys, "logs", RUN)[1] == "run started\n"

    def stage_goes_on() -> None:
        k8s.wait_for(lambda: any(query.get("follow") == "True" for _, _, query in k8s.requests))
        k8s.log(merge, "merged\n")
        k8s.succeed(merge)

    threading.Thread(target=stage_goes_on, daemon=True).start()
    assert foundry(monkeypatch, capsys, "logs", RUN, "--stage", "merge", "-f")[1] == "merging 2 models\nmerged\n"
    code, _, err = foundry(monkeypatch, capsys, "logs", RUN, "--stage", "publish")
    assert code == 2 and f"error: Job {plan.stages[2].job_name} of run {RUN} has no pod" in err


def test_cancel_deletes_the_jobs_and_the_driver_creates_no_more(k8s: FakeApiServer, store: Store, plan: RunPlan, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ended: list[int] = []
    driver = threading.Thread(target=lambda: ended.append(Driver(RUN, plan, connect(), store).run()), daemon=True)
    driver.start()
    merge = plan.stages[0].job_name
    k8s.wait_for(lambda: k8s.job(merge) is not None)
    code, _, err = foundry(monkeypatch, capsys, "cancel", RUN)
    assert code == 0 and f"run {RUN}: deleted Job(s) {RUN}, {merge} in namespace foundry" in err
    driver.join(10)  # this driver outlived its Job, as a pod does for its grace period
    assert ended == [2] and k8s.job_creates == [RUN, merge]
    assert k8s.job(RUN) is None and k8s.job(merge) is None and k8s.pods_of(merge) == []
    saved = runstatus.load(store, RUN)
    assert saved is not None and saved.state == "cancelled" and [row.state for row in saved.stages] == ["cancelled"] * 3


def test_runs_lists_the_newest_first_from_the_cluster_or_the_store(k8s: FakeApiServer, store: Store, plan: RunPlan, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    other = "fdy-other-9f8e7d6c5b"
    apply_all(connect(), rendered(store.url, run=other, recipe="other"), dry_run=False)
    k8s.objects[("jobs", "foundry", RUN)]["metadata"]["creationTimestamp"] = "2030-01-01T00:00:00Z"
    k8s.objects[("jobs", "foundry", other)]["metadata"]["creationTimestamp"] = "2030-01-02T00:00:00Z"
    code, out, _ = foundry(monkeypatch, capsys, "runs")
    assert code == 0 and f"from the cluster {k8s.url}, namespace foundry" in out
    assert out.index(other) < out.index(RUN) and "0/3 Jobs succeeded" in out
    for run, recipe, started in ((RUN, "tiny-demo", "2030-01-01T00:00:00Z"), (other, "other", "2030-01-02T00:00:00Z")):
        status = RunPlan.model_validate(plan_of(rendered(store.url, run=run, recipe=recipe))).new_status(run, "foundry", started)
        runstatus.save(store, status)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    code, out, _ = foundry(monkeypatch, capsys, "runs", "--store", store.url)
    assert code == 0 and f"from the store {store.url} (no kubeconfig" in out
    assert out.index(other) < out.index(RUN) and "0/3 done" in out
