"""`foundry submit` and `foundry schedule`: render a recipe and server-side apply the result.

Submit applies the run's ServiceAccount, Role, RoleBinding, plan ConfigMap and driver Job
(schedule: a CronJob instead of the Job), and then the laptop may close: the driver does
the rest. The driver Job is named by a digest of everything it was rendered from, so a
re-submitted recipe re-applies identical objects (nothing changes) and a changed one makes a
new run rather than editing an immutable Job. With --wait, submit follows the run's Jobs
and exits with its result.
"""

from pathlib import Path
from typing import Any

import typer
from kubernetes.client import V1Job
from rich.console import Console

from foundry.commands.status import cluster_status, connected, print_status
from foundry.errors import UserError
from foundry.k8s.apply import apply
from foundry.k8s.cluster import Cluster, default_namespace, require_namespace
from foundry.k8s.jobs import follow_jobs, job_cannot_start, job_state, observe_stage
from foundry.k8s.runs import PLAN_KEY, find_run, read_plan
from foundry.render import Rendered, render_recipe, schedule
from foundry.runstatus import StageStatus

notes = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, even in a pipe
DRY_RUN_MODES = ("client", "server")


def submit_recipe(recipe: Path, values_files: list[Path], sets: list[str], *, namespace: str | None, context: str | None, dry_run: str | None, wait: bool) -> int:
    mode = _dry_run_mode(dry_run)
    if wait and mode is not None:
        raise UserError("--wait follows a submitted run; a dry run submits nothing")
    cluster = None if mode == "client" else _cluster(context, namespace)
    target = cluster.namespace if cluster else namespace or default_namespace(context)
    rendered = _warned(render_recipe(recipe, values_files=values_files, sets=sets, namespace=target))
    if cluster is None:
        return _print_only(rendered)
    applied = apply_all(cluster, rendered.objects, dry_run=mode == "server")
    if mode == "server":
        notes.print(f"server dry run: the API server at {cluster.server} accepted all {len(applied)} objects for namespace {cluster.namespace}; nothing was changed")
        return 0
    driver = next(obj for obj in applied if obj.get("kind") == "Job")
    run = driver["metadata"]["name"]
    notes.print(f"run {run} submitted to namespace {cluster.namespace} on {cluster.server}; follow it with `foundry status {run}` or `foundry logs {run} -f`")
    finished = _finished(driver)
    if finished == "failed":
        notes.print(f"run {run} already ran and failed; this submit does not start it again. To retry: `foundry cancel {run}`, then submit again")
    elif finished == "succeeded":
        notes.print(f"run {run} already succeeded; nothing to do")
    if not wait:
        return 0
    return 0 if follow_run(cluster, run, _plan_text(rendered.objects)) == "succeeded" else 1


def schedule_recipe(recipe: Path, values_files: list[Path], sets: list[str], *, cron: str, time_zone: str | None, namespace: str | None, context: str | None, dry_run: str | None) -> int:
    """Apply the CronJob that runs a recipe on `cron`; re-scheduling updates it in place."""
    mode = _dry_run_mode(dry_run)
    cluster = None if mode == "client" else _cluster(context, namespace)
    target = cluster.namespace if cluster else namespace or default_namespace(context)
    rendered = _warned(schedule(recipe, cron=cron, time_zone=time_zone, values_files=values_files, sets=sets, namespace=target))
    if cluster is None:
        return _print_only(rendered)
    applied = apply_all(cluster, rendered.objects, dry_run=mode == "server")
    cronjob = next(obj for obj in applied if obj.get("kind") == "CronJob")
    verb = "would be scheduled (server dry run)" if mode == "server" else "scheduled"
    notes.print(f"{rendered.recipe} {verb}: CronJob {cronjob['metadata']['name']} in namespace {cluster.namespace}, {cron!r}")
    return 0


def apply_all(cluster: Cluster, objects: list[dict[str, Any]], *, dry_run: bool) -> list[dict[str, Any]]:
    """Server-side apply each object in order (RBAC, then the ConfigMap, then the Job that uses them)."""
    applied = []
    for obj in objects:
        applied.append(apply(cluster, obj, dry_run=dry_run))
        notes.print(f"{obj['kind']}/{obj['metadata']['name']} {'applied (server dry run)' if dry_run else 'applied'}")
    return applied


def follow_run(cluster: Cluster, run: str, plan_text: str | None) -> str:
    """Watch the driver and stage Jobs, print each stage's progress, and return how the run ended."""
    plan = read_plan(plan_text, f"run {run}") if plan_text else None
    rows = plan.new_status(run, cluster.namespace).stages if plan else []
    seen: dict[str, str] = {}
    ended: list[str] = []

    def handle(jobs: dict[str, V1Job]) -> bool:
        for row in rows:
            job = jobs.get(row.job)
            if job is not None and seen.get(row.job) != job.metadata.resource_version:
                seen[row.job] = job.metadata.resource_version
                before = row.state
                observe_stage(cluster, row, job)
                if row.state != before:
                    _progress(row)
        driver = jobs.get(run)
        if driver is None:
            if run in seen:  # it was there, and someone deleted it
                ended.append("cancelled")
        elif job_state(driver) != "running":
            ended.append(job_state(driver))
        elif any(row.state == "failed" for row in rows):
            ended.append("failed")  # final: the driver is about to say so too
        elif (why := job_cannot_start(cluster, driver)) is not None:
            notes.print(f"[red]✗ driver[/] {why}")
            ended.append("failed")
        if driver is not None:
            seen[run] = driver.metadata.resource_version
        return bool(ended)

    follow_jobs(cluster, [run, *(row.job for row in rows)], handle)
    found = find_run(cluster, run) if ended[0] != "cancelled" else None
    if found is not None:
        print_status(cluster_status(cluster, found, None), f"cluster {cluster.server}, namespace {cluster.namespace}")
    notes.print(f"run {run}: {ended[0]}")
    return ended[0]


def _cluster(context: str | None, namespace: str | None) -> Cluster:
    cluster = connected(context, namespace)
    require_namespace(cluster)
    return cluster


def _dry_run_mode(value: str | None) -> str | None:
    if value is not None and value not in DRY_RUN_MODES:
        raise UserError(f"--dry-run={value}: expected client (print what would be applied) or server (the API server checks it, nothing is changed)")
    return value


def _warned(rendered: Rendered) -> Rendered:
    for warning in rendered.warnings:
        notes.print(f"warning: {warning}")
    return rendered


def _print_only(rendered: Rendered) -> int:
    typer.echo(rendered.yaml(), nl=False)
    notes.print(f"client dry run: {len(rendered.objects)} objects for namespace {rendered.namespace}, printed; nothing was sent")
    return 0


def _plan_text(objects: list[dict[str, Any]]) -> str | None:
    return next((obj["data"][PLAN_KEY] for obj in objects if obj.get("kind") == "ConfigMap" and PLAN_KEY in (obj.get("data") or {})), None)


def _finished(job: dict[str, Any]) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return "succeeded" if condition["type"] == "Complete" else "failed"
    return None


def _progress(row: StageStatus) -> None:
    if row.state == "running":
        notes.print(f"▶ {row.stage} {row.key} running (pod {row.pod})")
    elif row.state == "succeeded":
        notes.print(f"✓ {row.stage} {row.key} succeeded")
    elif row.state == "failed":
        notes.print(f"[red]✗ {row.stage}[/] {row.key} failed: {row.reason}")
