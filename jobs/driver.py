"""`python -m jobs.driver --plan plan.json`: a recipe's stage Jobs, in order, inside the cluster.

The driver is why a laptop may close after `foundry submit`: it creates each stage Job only
once the keys that stage reads are committed in the store, watches it, and records the run
in the store (foundry.runstatus) after every change. It keeps nothing it needs in memory:
each pass derives what to do from the store (committed keys) and the cluster (existing
Jobs), so a driver killed at any point and started again carries on, never creating a Job
twice (a create answered 409 AlreadyExists adopts the Job that is there) and never redoing
a committed stage.

A stage Job deleted while it ran (`foundry cancel` deletes the driver's Job, then the
stages') is never created again: the run ends cancelled, even if this driver's pod outlives
its Job for its grace period.

Exit codes follow the chart's podFailurePolicy, which fails the driver Job at once on 2:
0 the run succeeded; 2 it cannot succeed by retrying the driver (a stage failed, having used
its own Job's retries; an evaluation missed its gate, so quantize and publish never start;
the run was cancelled; the plan is bad); 1 anything a retry may fix
(the cluster out of reach): the driver Job's backoff starts it again, and it carries on.
"""

import argparse
import copy
import logging
import os
import sys
from pathlib import Path

from kubernetes.client import V1Job

from foundry import gate, runstatus
from foundry.errors import USER_ERROR_EXIT_CODE, UserError
from foundry.k8s.cluster import Cluster, connect
from foundry.k8s.errors import ClusterError, explained
from foundry.k8s.jobs import WATCH_SECONDS, follow_jobs, job_state, observe_stage
from foundry.k8s.runs import PlanStage, RunPlan, SweepPlan, read_plan, read_sweep_plan
from foundry.runstatus import RunStatus, StageState, StageStatus
from foundry.store import SUCCESS_MARKER, Store, open_store
from foundry.sweep.sequence import Selection, document

LOG = logging.getLogger("foundry.driver")
RUN_ENV = "FOUNDRY_RUN"
NAMESPACE_ENV = "FOUNDRY_NAMESPACE"
_ALREADY_EXISTS = 409
_NOT_FOUND = 404
# Which run created a stage Job: a failed Job left by another run (last night's sweep, within
# the Job's ttlSecondsAfterFinished) is replaced, not adopted as this run's failure.
RUN_ANNOTATION = "foundry.dev/run"


class Driver:
    def __init__(self, run: str, plan: RunPlan, cluster: Cluster, store: Store, watch_seconds: int = WATCH_SECONDS) -> None:
        self.run_id = run
        self.plan = plan
        self.cluster = cluster
        self.store = store
        self.watch_seconds = watch_seconds
        self.status = self._resume()

    def _resume(self) -> RunStatus:
        """Carry on a run this driver's predecessor left running; start afresh otherwise."""
        saved = runstatus.load(self.store, self.run_id)
        if saved is not None and saved.state == "running":
            LOG.info("run %s: resuming (status saved %s)", self.run_id, saved.updated)
            return saved
        return self.plan.new_status(self.run_id, self.cluster.namespace)

    def run(self) -> int:
        LOG.info("run %s: %d stage(s), namespace %s, store %s", self.run_id, len(self.plan.stages), self.cluster.namespace, self.store.url)
        runstatus.save(self.store, self.status)
        follow_jobs(self.cluster, self._job_names(), self._step, self.watch_seconds)
        return 0 if self.status.state == "succeeded" else USER_ERROR_EXIT_CODE

    def _job_names(self) -> list[str]:
        """The Jobs this run may create (a sweep's winner adds its own once chosen)."""
        return [planned.job_name for planned in self.plan.stages]

    def _step(self, jobs: dict[str, V1Job]) -> bool:
        """One pass over the stages with the cluster's Jobs as they are; True once the run is over."""
        before = self.status.model_dump()
        self._advance(jobs)
        over = self._conclude()
        if over or self.status.model_dump() != before:
            runstatus.save(self.store, self.status)
        return over

    def _advance(self, jobs: dict[str, V1Job]) -> None:
        """Bring every stage's row up to date, creating the Jobs whose inputs are committed."""
        keys = {planned.key for planned in self.plan.stages} | {need for planned in self.plan.stages for need in planned.needs}
        committed = {key for key in keys if self.store.is_committed(self.plan.recipe, key)}  # one look at the store per pass
        for row, planned in zip(self.status.stages, self.plan.stages, strict=True):
            if row.state in ("succeeded", "cached", "failed", "cancelled", "gated"):
                continue
            previous = row.state
            job = jobs.get(planned.job_name)
            if job is not None and row.state == "pending" and self._left_failed_by_another_run(job):
                self._delete_stale(planned.job_name)
                del jobs[planned.job_name]
                job = None  # gone: created again below once its inputs are committed
            if planned.key in committed:
                self._committed(row, job)
            elif job is not None:
                self._observe(row, job)
            elif row.state == "running":  # its Job was there and is gone: deleted, as `foundry cancel` does
                row.state, row.reason = "cancelled", f"Job {planned.job_name} was deleted while it ran"
            elif committed.issuperset(planned.needs):
                stopped = self._blocking(planned)
                if stopped is not None:
                    row.state, row.reason = stopped
                elif (created := self._create(row, planned)) is not None:
                    jobs[planned.job_name] = created  # seen now, whatever the watch brings first
            if row.state != previous:
                self._report(row)

    def _blocking(self, planned: PlanStage) -> tuple[StageState, str] | None:
        """("gated", why) when a committed evaluation this stage waits on misses its gate;
        ("failed", why) when the gate names a metric the evaluation did not produce."""
        try:
            stopped = gate.blocking(self.store, self.plan.recipe, planned.needs, planned.gate)
        except UserError as error:
            return "failed", str(error)
        return None if stopped is None else ("gated", stopped)

    def _committed(self, row: StageStatus, job: V1Job | None) -> None:
        if row.state == "pending":
            row.state = "cached"  # committed before this run got to it
            return
        if job is not None:
            observe_stage(self.cluster, row, job)
        row.state, row.reason, row.log_tail = "succeeded", None, []
        row.finished = row.finished or runstatus.now()  # committed before its Job reported completion

    def _observe(self, row: StageStatus, job: V1Job) -> None:
        observe_stage(self.cluster, row, job)
        if row.state == "succeeded":  # the stage exits 0 only after committing: something removed it
            row.state = "failed"
            row.reason = f"the Job completed but {row.key} has no {SUCCESS_MARKER} in {self.store.url}"

    def _left_failed_by_another_run(self, job: V1Job) -> bool:
        return job_state(job) == "failed" and (job.metadata.annotations or {}).get(RUN_ANNOTATION) != self.run_id

    def _delete_stale(self, name: str) -> None:
        LOG.info("Job %s failed in an earlier run; deleting it to run the stage again", name)
        try:
            with explained(self.cluster, "delete", "jobs.batch", name):
                self.cluster.batch.delete_namespaced_job(name, self.cluster.namespace, propagation_policy="Background")
        except ClusterError as error:
            if error.status != _NOT_FOUND:  # already gone: what we wanted
                raise

    def _create(self, row: StageStatus, planned: PlanStage) -> V1Job | None:
        """The stage's Job, created or adopted; None while a stale one of the same name is
        still being deleted (the next pass creates it)."""
        body = copy.deepcopy(planned.job)
        body["metadata"]["namespace"] = self.cluster.namespace
        body["metadata"].setdefault("annotations", {})[RUN_ANNOTATION] = self.run_id
        try:
            with explained(self.cluster, "create", "jobs.batch", planned.job_name):
                job = self.cluster.batch.create_namespaced_job(self.cluster.namespace, body)
            LOG.info("%s: created Job %s", row.key, planned.job_name)
        except ClusterError as error:
            if error.status != _ALREADY_EXISTS:
                raise
            LOG.info("%s: Job %s already exists; adopting it", row.key, planned.job_name)
            with explained(self.cluster, "get", "jobs.batch", planned.job_name):
                job = self.cluster.batch.read_namespaced_job(planned.job_name, self.cluster.namespace)
            if self._left_failed_by_another_run(job):
                return None
        row.state = "running"
        row.started = row.started or runstatus.now()
        return job

    def _conclude(self) -> bool:
        states = [row.state for row in self.status.stages]
        if "failed" in states:
            self.status.state = "failed"
        elif "cancelled" in states:
            self.status.state = "cancelled"
            for row in self.status.stages:
                row.state = "cancelled" if row.state == "pending" else row.state
        elif "gated" in states and "running" not in states:
            self.status.state = "gated"  # what waits on a gated stage never runs either
            reason = next(row.reason for row in self.status.stages if row.state == "gated")
            for row in self.status.stages:
                if row.state == "pending":
                    row.state, row.reason = "gated", reason
        elif all(state in ("succeeded", "cached") for state in states):
            self.status.state = "succeeded"
        else:
            return False
        self.status.finished = runstatus.now()
        LOG.info("run %s: %s", self.run_id, self.status.state)
        return True

    def _report(self, row: StageStatus) -> None:
        if row.state == "gated":
            LOG.error("%s: not run: %s", row.key, row.reason)
            return
        if row.state == "failed":
            LOG.error("%s: failed: %s (pod %s)", row.key, row.reason, row.pod)
            for line in row.log_tail:
                LOG.error("%s:   %s", row.key, line)
            return
        pod = f" (pod {row.pod})" if row.pod else ""
        LOG.info("%s: %s%s", row.key, row.state, pod)


class SweepDriver(Driver):
    """A sweep's run (`--sweep plans.json`), sequenced by foundry.sweep.sequence: first the
    exploration, every point's stages up to its evaluation with each key once; then, when
    all of them are committed, the best point by `sweep.select`, read from the evaluate
    markers in the store, and that point's quantize and publish, which join the run's status.

    Re-entrant like the one-plan driver: the markers do not change, so a restarted driver
    chooses the same winner, and a status saved with the winner's rows tells it a choice was
    made. A selection metric that no evaluation produced fails the run, naming it. The sweep's
    report (foundry.sweep.sequence.document) is kept beside the status, `_runs/<run>/sweep.json`.
    """

    def __init__(self, run: str, plan: SweepPlan, cluster: Cluster, store: Store, watch_seconds: int = WATCH_SECONDS) -> None:
        self.sweep = plan.sweep()
        self.selection: Selection | None = None
        self.refusal: str | None = None
        super().__init__(run, plan.exploration_plan(), cluster, store, watch_seconds)
        if len(self.status.stages) > len(self.plan.stages):  # a predecessor chose the winner
            self._choose()

    def _job_names(self) -> list[str]:
        return list(dict.fromkeys(planned.job_name for point in self.sweep.points for planned in point.stages))

    def _advance(self, jobs: dict[str, V1Job]) -> None:
        super()._advance(jobs)
        explored = all(row.state in ("succeeded", "cached") for row in self.status.stages)
        if explored and self.selection is None and self.refusal is None and self.sweep.select is not None:
            self._choose()
            super()._advance(jobs)  # the winner's first stage starts now, not a watch later

    def _choose(self) -> None:
        try:
            self.selection = self.sweep.choose(self.sweep.metrics(self.store))
        except UserError as error:
            self.refusal = str(error)
            LOG.error("run %s: %s", self.run_id, error)
            return
        winner = self.sweep.points[self.selection.winner]
        LOG.info("run %s: best point %d of %d (%s): %s = %s; its %s next", self.run_id, winner.index + 1, len(self.sweep.points), winner.label,
                 self.selection.metric, self.selection.values[winner.index], ", ".join(planned.stage for planned in winner.finishing) or "nothing")
        known = {row.key for row in self.status.stages}
        for planned in winner.finishing:
            self.plan.stages.append(planned)
            if planned.key not in known:
                self.status.stages.append(StageStatus(stage=planned.stage, key=planned.key, job=planned.job_name))
        if [row.key for row in self.status.stages] != [planned.key for planned in self.plan.stages]:
            raise UserError(f"run {self.run_id}: the status saved in {self.store.url} lists other stages than this sweep plans; was the run's plan changed?")
        self._save_report()

    def _conclude(self) -> bool:
        if self.refusal is not None:
            self.status.state, self.status.finished = "failed", runstatus.now()
        elif not super()._conclude():
            return False
        self._save_report()
        return True

    def _save_report(self) -> None:
        outcomes = {row.key: {"succeeded": "ran"}.get(row.state, row.state) for row in self.status.stages}
        try:
            metrics = self.sweep.metrics(self.store)
        except UserError:  # an evaluation without metrics is the refusal this report records
            metrics = [None] * len(self.sweep.points)
        report = document(self.sweep, metrics=metrics, outcomes=outcomes, selection=self.selection, state=self.status.state, reason=self.refusal)
        self.store.put_document(sweep_document_path(self.run_id), report)


def sweep_document_path(run: str) -> str:
    return f"{runstatus.RUNS_FOLDER}/{run}/sweep.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.driver", description="Run a Foundry plan's stage Jobs in order, in the cluster.")
    parser.add_argument("plan", nargs="?", type=Path, help="the run's plan.json, as mounted from its ConfigMap (or give --plan)")
    parser.add_argument("--plan", dest="plan_option", type=Path, metavar="PLAN", help="the same, as an option")
    parser.add_argument("--sweep", action="store_true", help="the plan is a sweep's plans.json: run every point up to its evaluation, then the best point's quantize and publish")
    parser.add_argument("--run", default=os.environ.get(RUN_ENV), help=f"the run's id: its driver Job's name [env: {RUN_ENV}, which the chart sets]")
    parser.add_argument("--namespace", default=os.environ.get(NAMESPACE_ENV), help=f"where the stage Jobs go [env: {NAMESPACE_ENV}; default: the pod's own namespace]")
    parser.add_argument("--watch-seconds", type=int, default=WATCH_SECONDS, help="how long one watch of the Jobs lasts before the driver re-checks the store")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        plan_path = args.plan_option or args.plan
        if plan_path is None:
            raise UserError("no plan: give the path of its plan.json, or --plan PATH")
        if not args.run:
            raise UserError(f"no run id: give --run or set ${RUN_ENV} (the chart sets it to the driver Job's name)")
        try:
            text = plan_path.read_text()
        except OSError as error:
            raise UserError(f"plan {plan_path}: {error.strerror}") from error
        if args.sweep:
            sweep = read_sweep_plan(text, str(plan_path))
            driver: Driver = SweepDriver(args.run, sweep, connect(namespace=args.namespace), open_store(sweep.store), args.watch_seconds)
        else:
            plan = read_plan(text, str(plan_path))
            driver = Driver(args.run, plan, connect(namespace=args.namespace), open_store(plan.store), args.watch_seconds)
        code = driver.run()
    except ClusterError as error:  # the cluster, not the run: exit 1, and the driver Job's backoff retries
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except UserError as error:
        for line in error.lines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    sys.exit(code)


if __name__ == "__main__":
    main()
