"""`foundry submit` and `schedule`: the real chart, rendered, server-side applied to the API server fake.

Through the CLI in-process (its one-line errors and exit codes included) and the official
client; `--wait` is followed against the real driver running in a thread.
"""

import json
import socket
import sys
import threading
from pathlib import Path

import pytest
import yaml
from k8s_fake import RUN, FakeApiServer, commit_key, plan_of, rendered

from foundry import cli
from foundry.commands.submit import apply_all, follow_run
from foundry.k8s.apply import apply
from foundry.k8s.cluster import connect
from foundry.k8s.errors import ClusterError
from foundry.k8s.runs import RunPlan
from foundry.store import open_store
from jobs.driver import Driver

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "tiny-demo.yml")
STORE = "store.url=s3://foundry-test/runs"
KINDS = ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]


def foundry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI as `foundry ARGS...` runs it: its exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["foundry", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def versions(fake: FakeApiServer) -> dict[tuple[str, str, str], str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in fake.objects.items()}


def test_submit_server_side_applies_every_object(k8s: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE)
    assert code == 0, err
    applied = [(method, path.rsplit("/", 2)[-2], query) for method, path, query in k8s.requests if method == "PATCH"]
    assert [plural for _, plural, _ in applied] == ["serviceaccounts", "roles", "rolebindings", "configmaps", "jobs"]
    assert all(query == {"fieldManager": "foundry"} for _, _, query in applied)  # and no force
    objects = [obj for (plural, _, _), obj in k8s.objects.items() if plural != "pods"]
    assert sorted(obj["kind"] for obj in objects) == sorted(KINDS)
    assert all(obj["metadata"]["namespace"] == "foundry" and obj["metadata"]["managedFields"][0]["manager"] == "foundry" for obj in objects)
    driver = next(obj for obj in objects if obj["kind"] == "Job")
    assert f"run {driver['metadata']['name']} submitted to namespace foundry on {k8s.url}" in err


def test_a_submitted_run_reads_back_from_the_cluster(k8s: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE)[0] == 0
    [run] = k8s.job_creates
    code, out, _ = foundry(monkeypatch, capsys, "runs")
    assert code == 0 and run in out and "tiny-demo" in out and "0/3 Jobs succeeded" in out
    code, out, _ = foundry(monkeypatch, capsys, "status", run, "--store", str(tmp_path / "store"))  # the plan's s3:// store is not reachable here
    assert code == 0 and f"run {run}: running" in out and f"from the cluster {k8s.url}" in out
    assert [line.split()[1:6:4] for line in out.splitlines() if line.startswith("│ ")] == [["merge", "pending"], ["quantize", "pending"], ["publish", "pending"]]


def test_a_driver_whose_image_cannot_be_pulled_fails_the_run_naming_the_image(k8s: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE)[0] == 0
    [run] = k8s.job_creates
    [pod] = k8s.pods_of(run)
    k8s.update_pod(pod, "Pending", {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/foundry-ml/foundry-cpu:0.1.0"'}})
    stuck = f'pod {pod["metadata"]["name"]} cannot start: ImagePullBackOff for image "ghcr.io/foundry-ml/foundry-cpu:0.1.0"'
    code, out, _ = foundry(monkeypatch, capsys, "status", run, "--store", str(tmp_path / "store"))
    assert code == 0 and f"run {run}: failed" in out and stuck in out
    assert follow_run(connect(), run, None) == "failed"  # `submit --wait` ends too, instead of waiting for the deadline
    assert stuck in capsys.readouterr().err


def test_resubmitting_an_unchanged_recipe_changes_nothing(k8s: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE)[0] == 0
    before = versions(k8s)
    assert foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE)[0] == 0
    assert versions(k8s) == before
    assert len(k8s.job_creates) == 1


def test_changed_values_give_a_new_driver_job_not_an_edit(k8s: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE)[0] == 0
    assert foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE, "--set", "driver.backoffLimit=2")[0] == 0
    assert len(set(k8s.job_creates)) == 2
    assert sorted(k8s.job(name)["spec"]["backoffLimit"] for name in k8s.job_creates) == [2, 6]


def test_dry_run_client_prints_the_objects_and_sends_nothing(k8s: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE, "--dry-run=client")
    assert code == 0 and k8s.requests == []
    assert [doc["kind"] for doc in yaml.safe_load_all(out) if doc] == KINDS
    assert all(doc["metadata"]["namespace"] == "foundry" for doc in yaml.safe_load_all(out) if doc)  # the kubeconfig context's
    assert "client dry run: 5 objects for namespace foundry" in err


def test_dry_run_server_lets_the_api_server_check_and_changes_nothing(k8s: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE, "--dry-run=server")
    assert code == 0, err
    assert [query.get("dryRun") for method, _, query in k8s.requests if method == "PATCH"] == ["All"] * 5
    assert k8s.objects == {} and "nothing was changed" in err


def test_schedule_applies_a_cronjob_and_rescheduling_updates_it(k8s: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = foundry(monkeypatch, capsys, "schedule", RECIPE, "--cron", "0 2 * * *", "--set", STORE)
    assert code == 0, err
    [cronjob] = [obj for (plural, _, _), obj in k8s.objects.items() if plural == "cronjobs"]
    assert cronjob["spec"]["schedule"] == "0 2 * * *" and k8s.job_creates == []
    assert foundry(monkeypatch, capsys, "schedule", RECIPE, "--cron", "30 3 * * *", "--set", STORE)[0] == 0
    [again] = [obj for (plural, _, _), obj in k8s.objects.items() if plural == "cronjobs"]
    assert again["metadata"]["name"] == cronjob["metadata"]["name"] and again["spec"]["schedule"] == "30 3 * * *"


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_wait_follows_the_run_to_its_end(k8s: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], outcome: str) -> None:
    objects = rendered(open_store(str(tmp_path / "store")).url)
    plan = RunPlan.model_validate(plan_of(objects))
    cluster = connect()
    apply_all(cluster, objects, dry_run=False)
    ended: list[str] = []
    follower = threading.Thread(target=lambda: ended.append(follow_run(cluster, RUN, json.dumps(plan_of(objects)))), daemon=True)
    follower.start()
    driver = threading.Thread(target=Driver(RUN, plan, connect(), open_store(plan.store)).run, daemon=True)
    driver.start()
    k8s.wait_for(lambda: k8s.job(plan.stages[0].job_name) is not None)
    if outcome == "failed":
        k8s.fail(plan.stages[0].job_name, exit_code=137, container_reason="OOMKilled")
    else:
        for index in range(3):
            k8s.wait_for(lambda index=index: k8s.job(plan.stages[index].job_name) is not None)
            commit_key(open_store(plan.store), plan.recipe, plan.stages[index].key)
            k8s.succeed(plan.stages[index].job_name)
        driver.join(10)
        k8s.succeed(RUN)  # the driver's pod exits 0
    follower.join(10)
    assert ended == [outcome]
    err = capsys.readouterr().err
    assert f"run {RUN}: {outcome}" in err
    assert ("OOMKilled" in err) == (outcome == "failed")


def test_errors_are_one_line_with_exit_code_2(k8s: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*args: str) -> str:
        code, _, err = foundry(monkeypatch, capsys, "submit", RECIPE, "--set", STORE, *args)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1, err
        return errors[0]

    assert error("-n", "nope") == f"error: namespace nope does not exist on {k8s.url}; create it (`kubectl create namespace nope`) or pass --namespace"
    assert error("--context", "elsewhere") == f"error: kubeconfig {k8s.kubeconfig} has no context 'elsewhere'; its contexts: fake"
    assert error("--dry-run=yes").startswith("error: --dry-run=yes: expected client")
    k8s.allowed = {("get", "namespaces"), ("patch", "serviceaccounts"), ("patch", "roles.rbac.authorization.k8s.io"), ("patch", "rolebindings.rbac.authorization.k8s.io"), ("patch", "configmaps")}
    forbidden = "error: forbidden: cannot patch jobs.batch in namespace foundry (context fake); grant it with a Role and RoleBinding"
    assert error() == f"{forbidden} (check with `kubectl auth can-i patch jobs.batch -n foundry`)"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    (tmp_path / "gone").write_text(k8s.kubeconfig.read_text().replace(k8s.url, f"http://127.0.0.1:{port}"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone"))
    assert error().startswith(f"error: cannot reach the cluster at http://127.0.0.1:{port} (context fake): Failed to establish a new connection")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert error().startswith(f"error: no kubeconfig: $KUBECONFIG ({tmp_path / 'missing'}) does not exist; point KUBECONFIG at your cluster's config")


def test_an_invalid_object_names_the_object_and_its_field(k8s: FakeApiServer, tmp_path: Path) -> None:
    cluster = connect()
    objects = rendered(str(tmp_path))
    bad = {**objects[3], "metadata": {"name": "Plan_Of_Run"}}
    with pytest.raises(ClusterError, match=r'^invalid ConfigMap Plan_Of_Run: metadata.name: Invalid value: "Plan_Of_Run": a lowercase RFC 1123 subdomain') as raised:
        apply(cluster, bad)
    assert raised.value.status == 422
    apply(cluster, objects[4])
    edited = json.loads(json.dumps(objects[4]))
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "foundry-cpu:other"
    with pytest.raises(ClusterError, match=rf"^invalid Job {RUN}: spec.template: field is immutable"):
        apply(cluster, edited)
