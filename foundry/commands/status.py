"""`foundry status`, `logs`, `cancel` and `runs`: cluster runs read back.

`status` and `runs` read the cluster when it can be reached (live Jobs and pods, on top of
what the driver saved in the store when that can be read from here) and the store alone
when it cannot, and say which they used: a laptop away from the cluster still gets an
answer. `logs` and `cancel` need the cluster.
"""

import typer
from rich.console import Console
from rich.table import Table

from foundry import runstatus
from foundry.errors import UserError
from foundry.k8s.cluster import Cluster, connect, probe
from foundry.k8s.jobs import job_state, pods_of, stream_log
from foundry.k8s.runs import ClusterRun, delete_jobs, find_run, list_runs, live_status
from foundry.runstatus import RunStatus
from foundry.store import Store, open_store, resolve_store_url

console = Console(highlight=False)
notes = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, even in a pipe
_COLOURS = {"succeeded": "green", "cached": "cyan", "running": "yellow", "failed": "red", "cancelled": "magenta", "gated": "red"}


def show_status(run: str | None, store_flag: str | None, namespace: str | None, context: str | None) -> int:
    status, source = status_view(run, store_flag, namespace, context)
    print_status(status, source)
    return 0


def status_view(run: str | None, store_flag: str | None, namespace: str | None, context: str | None) -> tuple[RunStatus, str]:
    """A run's status (the newest run's without RUN) and where it was read from."""
    cluster, why = reach(context, namespace)
    if cluster is not None:
        runs = list_runs(cluster)
        found = next((r for r in runs if run in (None, r.run)), None)
        if found is not None:
            return cluster_status(cluster, found, store_flag), f"cluster {cluster.server}, namespace {cluster.namespace}"
        why = f"{'no run ' + run if run else 'no runs'} in namespace {cluster.namespace}"
    store = open_store(resolve_store_url(store_flag))
    status = runstatus.load(store, run) if run else next(iter(runstatus.recent(store)), None)
    if status is None:
        raise UserError(f"{'no run ' + run if run else 'no runs'} in store {store.url} either ({why})")
    return status, f"store {store.url} ({why})"


def cluster_status(cluster: Cluster, found: ClusterRun, store_flag: str | None) -> RunStatus:
    store, saved = saved_status(store_flag or found.plan.store, found.run)
    return live_status(cluster, found, saved, store)


def print_status(status: RunStatus, source: str) -> None:
    table = Table(title=f"run {status.run}: {_state(status.state)}", title_justify="left")
    for column, justify in (("stage", "left"), ("key", "left"), ("state", "left"), ("time", "right"), ("pod", "left"), ("reason", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in status.stages:
        table.add_row(row.stage, row.key, _state(row.state), _duration(row.seconds), row.pod or "-", row.reason or "")
    console.print(table)
    console.print(f"recipe {status.recipe} ({status.recipe_hash}), namespace {status.namespace}, started {status.started}, {_duration(status.seconds)}, store {status.store}", soft_wrap=True)
    console.print(f"from the {source}", soft_wrap=True)
    if status.reason:
        console.print(status.reason, style="red", markup=False, soft_wrap=True)
    for row in status.stages:
        if row.state == "failed" and row.log_tail:
            console.print(f"\n[red]{row.stage}[/] {row.pod or row.job}: last {len(row.log_tail)} log lines")
            for line in row.log_tail:
                console.print(f"  {line}", markup=False, soft_wrap=True)


def show_logs(run: str, stage: str | None, follow: bool, namespace: str | None, context: str | None) -> int:
    cluster = connected(context, namespace)
    found = find_run(cluster, run)
    if stage:
        job = found.plan.stage(stage).job_name
    elif found.driver is not None:
        job = found.driver.metadata.name
    else:
        raise UserError(f"run {run} has no driver Job any more; name a stage with --stage ({', '.join(s.stage for s in found.plan.stages)})")
    pods = pods_of(cluster, job)
    if not pods:
        raise UserError(f"Job {job} of run {run} has no pod (not created yet, or gone); `foundry status {run}` shows the saved log lines of a failed stage")
    for line in stream_log(cluster, pods[-1].metadata.name, follow):
        typer.echo(line)
    return 0


def cancel_run(run: str, store_flag: str | None, namespace: str | None, context: str | None) -> int:
    """Delete the run's Jobs, the driver first so it creates no more, and mark it cancelled."""
    cluster = connected(context, namespace)
    found = find_run(cluster, run)
    drivers = [found.driver.metadata.name] if found.driver is not None else []
    deleted = delete_jobs(cluster, drivers + [planned.job_name for planned in found.plan.stages])
    notes.print(f"run {run}: deleted Job(s) {', '.join(deleted) or '(none left)'} in namespace {cluster.namespace}")
    store, saved = saved_status(store_flag or found.plan.store, run)
    if store is None:
        notes.print(f"the store {store_flag or found.plan.store} cannot be read from here: the run's status there says what its driver last wrote")
        return 0
    status = saved or found.plan.new_status(run, cluster.namespace, found.created)
    status.state = "cancelled"
    status.finished = runstatus.now()
    for row in status.stages:
        if row.state in ("pending", "running"):
            row.state = "cancelled"
    runstatus.save(store, status)
    notes.print(f"run {run}: marked cancelled in {store.url}")
    return 0


def show_runs(store_flag: str | None, namespace: str | None, context: str | None, limit: int) -> int:
    cluster, why = reach(context, namespace)
    table = Table()
    for column in ("run", "recipe", "state", "started", "time", "stages"):
        table.add_column(column)
    if cluster is not None:
        source = f"cluster {cluster.server}, namespace {cluster.namespace}"
        for found in list_runs(cluster)[:limit]:
            state = job_state(found.driver) if found.driver is not None else "unknown"
            done = sum(1 for job in found.jobs.values() if job_state(job) == "succeeded")
            table.add_row(found.run, found.plan.recipe, _state(state), found.created, _duration(_driver_seconds(found)), f"{done}/{len(found.plan.stages)} Jobs succeeded")
    else:
        store = open_store(resolve_store_url(store_flag))
        source = f"store {store.url} ({why})"
        for status in runstatus.recent(store)[:limit]:
            done = sum(1 for row in status.stages if row.state in ("succeeded", "cached"))
            table.add_row(status.run, status.recipe, _state(status.state), status.started, _duration(status.seconds), f"{done}/{len(status.stages)} done")
    console.print(table)
    console.print(f"from the {source}", soft_wrap=True)
    return 0


def reach(context: str | None, namespace: str | None) -> tuple[Cluster | None, str]:
    """The cluster, or None and why not (no kubeconfig, unreachable, refused)."""
    try:
        return connected(context, namespace), ""
    except UserError as error:
        return None, str(error)


def connected(context: str | None, namespace: str | None) -> Cluster:
    cluster = connect(context, namespace)
    probe(cluster)
    return cluster


def saved_status(url: str, run: str) -> tuple[Store | None, RunStatus | None]:
    """The run's store and the status its driver saved there, when they can be read from
    here (an s3:// store needs credentials and an endpoint this machine can reach)."""
    try:
        store = open_store(url)
        return store, runstatus.load(store, run)
    except UserError:
        return None, None


def _driver_seconds(found: ClusterRun) -> float | None:
    status = found.driver.status if found.driver is not None else None
    if status is None or status.start_time is None:
        return None
    end = status.completion_time or next((c.last_transition_time for c in status.conditions or [] if c.type == "Failed" and c.status == "True"), None)
    return (end - status.start_time).total_seconds() if end else None


def _state(state: str) -> str:
    colour = _COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.0f}s"
