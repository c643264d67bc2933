"""A run as the cluster holds it: its plan ConfigMap, its driver Job, its stage Jobs.

`foundry render` puts the run's plan in a ConfigMap under the key `plan.json` (a sweep's,
every grid point's plan, under `plans.json`), and names the ConfigMap and the driver Job
alike: that name is the run's id. A run is found by its plan document: its stage Jobs are
named in it, and its driver is the Job that mounts the ConfigMap and is not one of its stages.
"""

from dataclasses import dataclass
from typing import Any

from kubernetes.client import V1ConfigMap, V1DeleteOptions, V1Job
from pydantic import BaseModel, ValidationError

from foundry.errors import UserError
from foundry.k8s.cluster import Cluster
from foundry.k8s.errors import ClusterError, explained
from foundry.k8s.jobs import job_state, observe_stage
from foundry.recipe.schema import SweepSelect
from foundry.runstatus import RunStatus, StageStatus, now
from foundry.store import Store
from foundry.sweep.sequence import GridPoint, Sweep

PLAN_KEY = "plan.json"
PLANS_KEY = "plans.json"
_NOT_FOUND = 404


class PlanStage(BaseModel):
    stage: str
    key: str
    needs: list[str] = []
    gate: dict[str, str] = {}  # judged on the evaluations among `needs` before the Job is created (foundry/gate.py)
    spec: dict[str, Any]
    job: dict[str, Any]

    @property
    def job_name(self) -> str:
        return self.job["metadata"]["name"]


class RunPlan(BaseModel):
    recipe: str
    recipe_hash: str
    store: str
    stages: list[PlanStage]

    def stage(self, name: str) -> PlanStage:
        for planned in self.stages:
            if name in (planned.stage, planned.key):
                return planned
        raise UserError(f"recipe {self.recipe} has no stage {name} in this run; its stages: {', '.join(s.stage for s in self.stages)}")

    def new_status(self, run: str, namespace: str, started: str | None = None) -> RunStatus:
        stamp = started or now()
        rows = [StageStatus(stage=s.stage, key=s.key, job=s.job_name) for s in self.stages]
        return RunStatus(run=run, recipe=self.recipe, recipe_hash=self.recipe_hash, namespace=namespace, store=self.store, started=stamp, updated=stamp, stages=rows)


class PointPlan(RunPlan):
    point: dict[str, Any]


class SweepPlan(BaseModel):
    """plans.json: `{"recipe", "recipe_hash", "store", "select", "plans": [plan.json + {"point"}]}`,
    which the driver runs with `--sweep`, sequenced by foundry.sweep.sequence."""

    recipe: str
    recipe_hash: str
    store: str
    select: SweepSelect | None = None
    plans: list[PointPlan]

    def sweep(self) -> Sweep[PlanStage]:
        points = [GridPoint(index, plan.point, list(plan.stages)) for index, plan in enumerate(self.plans)]
        return Sweep(self.recipe, self.recipe_hash, self.select, points)

    def exploration_plan(self) -> RunPlan:
        """The stages every point runs, each key once, as one run plan: the driver's first phase."""
        return RunPlan(recipe=self.recipe, recipe_hash=self.recipe_hash, store=self.store, stages=self.sweep().exploration())

    def every_stage(self) -> RunPlan:
        """Every stage any point may run, each key once (the winner's are among them): what
        `status`, `logs` and `cancel` look for in the cluster."""
        stages = {planned.key: planned for plan in self.plans for planned in plan.stages}
        return RunPlan(recipe=self.recipe, recipe_hash=self.recipe_hash, store=self.store, stages=list(stages.values()))


def read_plan(text: str, where: str) -> RunPlan:
    try:
        return RunPlan.model_validate_json(text)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        raise UserError(f"{where}: not a Foundry plan", details=problems) from error


def read_sweep_plan(text: str, where: str) -> SweepPlan:
    try:
        plan = SweepPlan.model_validate_json(text)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        raise UserError(f"{where}: not a Foundry sweep plan ({PLANS_KEY})", details=problems) from error
    if not plan.plans:
        raise UserError(f"{where}: a sweep plan with no points")
    return plan


@dataclass
class ClusterRun:
    run: str
    plan: RunPlan
    created: str
    driver: V1Job | None
    jobs: dict[str, V1Job]


def list_runs(cluster: Cluster) -> list[ClusterRun]:
    """Every run whose plan ConfigMap is in the namespace, newest first."""
    with explained(cluster, "list", "configmaps"):
        configmaps = cluster.core.list_namespaced_config_map(cluster.namespace).items
    with explained(cluster, "list", "jobs.batch"):
        jobs = cluster.batch.list_namespaced_job(cluster.namespace).items
    runs = [run for configmap in configmaps if (run := _run(configmap, jobs)) is not None]
    return sorted(runs, key=lambda run: run.created, reverse=True)


def find_run(cluster: Cluster, run: str) -> ClusterRun:
    runs = list_runs(cluster)
    for found in runs:
        if found.run == run:
            return found
    known = ", ".join(found.run for found in runs[:10]) or "none"
    raise UserError(f"no run {run} in namespace {cluster.namespace} on {cluster.server}; runs there: {known}")


def live_status(cluster: Cluster, run: ClusterRun, saved: RunStatus | None, store: Store | None) -> RunStatus:
    """The run as its Jobs show it now, on top of what the driver last saved (which alone
    knows which stages it found already committed, and what became of deleted Jobs)."""
    status = saved.model_copy(deep=True) if saved else run.plan.new_status(run.run, cluster.namespace, run.created)
    for row in status.stages:  # a sweep's saved rows are its plan's explored stages and its winner's
        job = run.jobs.get(row.job)
        if job is not None and row.state != "cached":
            observe_stage(cluster, row, job)
        elif job is None and saved is None and store is not None and store.is_committed(run.plan.recipe, row.key):
            row.state = "cached"
    if run.driver is not None:
        status.state = job_state(run.driver)
        if status.state == "failed" and saved is not None and saved.state == "gated":
            status.state = "gated"  # the driver exits 2 for a gate too; what it saved says which
        if status.state != "running":
            status.finished = status.finished or max((row.finished for row in status.stages if row.finished), default=None)
    elif saved is None:
        status.state = "unknown"
    return status


def delete_jobs(cluster: Cluster, names: list[str]) -> list[str]:
    """Delete Jobs with their pods (propagation Background); return those that existed."""
    deleted = []
    for name in names:
        try:
            with explained(cluster, "delete", "jobs.batch", name):
                cluster.batch.delete_namespaced_job(name, cluster.namespace, body=V1DeleteOptions(propagation_policy="Background"))
        except ClusterError as error:
            if error.status != _NOT_FOUND:
                raise
            continue
        deleted.append(name)
    return deleted


def _run(configmap: V1ConfigMap, jobs: list[V1Job]) -> ClusterRun | None:
    data = configmap.data or {}
    if PLAN_KEY not in data and PLANS_KEY not in data:
        return None
    try:
        where = f"ConfigMap {configmap.metadata.name}"
        plan = read_plan(data[PLAN_KEY], where) if PLAN_KEY in data else read_sweep_plan(data[PLANS_KEY], where).every_stage()
    except UserError:
        return None  # someone else's ConfigMap that happens to have a plan.json
    names = {planned.job_name for planned in plan.stages}
    mine = {job.metadata.name: job for job in jobs if job.metadata.name in names}
    driver = next((job for job in jobs if job.metadata.name not in names and configmap.metadata.name in _mounted_configmaps(job)), None)
    created = (driver or configmap).metadata.creation_timestamp
    run = driver.metadata.name if driver else configmap.metadata.name
    return ClusterRun(run, plan, created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else now(), driver, mine)


def _mounted_configmaps(job: V1Job) -> set[str]:
    pod_spec = job.spec.template.spec if job.spec and job.spec.template else None
    volumes = (pod_spec.volumes if pod_spec else None) or []
    names = {volume.config_map.name for volume in volumes if volume.config_map}
    for volume in volumes:
        for source in (volume.projected.sources or []) if volume.projected else []:
            if source.config_map:
                names.add(source.config_map.name)
    return names
