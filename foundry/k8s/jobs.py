"""Stage Jobs read back: their state, their pods, why one failed, and a list-then-watch loop.

The driver, `submit --wait` and `status` all read Jobs through here, so each says the
same thing about the same Job: `OOMKilled`, `Evicted`, `DeadlineExceeded`, the exit code
(2 means bad input), and the failed pod's last log lines.
"""

from collections.abc import Callable, Collection, Iterator
from contextlib import closing
from datetime import datetime
from typing import Literal

from kubernetes import watch
from kubernetes.client import V1Job, V1JobCondition, V1Pod

from foundry.errors import USER_ERROR_EXIT_CODE
from foundry.k8s.cluster import Cluster
from foundry.k8s.errors import ClusterError, explained
from foundry.runstatus import StageStatus

TAIL_LINES = 20
# A container waiting for one of these never starts by itself: its image cannot be pulled, or
# its configuration names what is not there (a Secret, a key). Its Job would wait until its
# activeDeadlineSeconds, so the run fails now instead, naming the image.
CANNOT_START = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError")
WATCH_SECONDS = 60
GONE = 410
BROKEN = 0  # a ClusterError without an HTTP status: the connection failed


def job_state(job: V1Job) -> Literal["running", "succeeded", "failed"]:
    """Terminal only once the Job controller says so (Complete/Failed), not at its first hint."""
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.status == "True" and condition.type == "Complete":
            return "succeeded"
        if condition.status == "True" and condition.type == "Failed":
            return "failed"
    return "running"


def pods_of(cluster: Cluster, job: str) -> list[V1Pod]:
    """The Job's pods, oldest first (the Job controller labels each with `job-name`)."""
    with explained(cluster, "list", "pods"):
        pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector=f"job-name={job}").items
    return sorted(pods, key=lambda pod: (pod.metadata.creation_timestamp or datetime.min, pod.metadata.name))


def observe_stage(cluster: Cluster, row: StageStatus, job: V1Job) -> None:
    """Bring a stage's row up to date with its Job: state, pod, times, and a failure's reason."""
    state = job_state(job)
    pods = pods_of(cluster, job.metadata.name)
    failed = [pod for pod in pods if pod.status and pod.status.phase == "Failed"]
    pod = (failed or pods or [None])[-1] if state == "failed" else (pods or [None])[-1]
    row.state = state
    row.pod = pod.metadata.name if pod else row.pod
    if state == "running" and pod is not None and (why := cannot_start(pod)) is not None:
        row.state, row.reason = "failed", why
        return
    row.started = _iso(job.status.start_time) or row.started
    if state == "succeeded":
        row.finished = _iso(job.status.completion_time)
    if state == "failed":
        condition = _condition(job, "Failed")
        row.finished = _iso(condition.last_transition_time) if condition else None
        row.reason = describe_failure(job, pod)
        row.log_tail = log_tail(cluster, pod.metadata.name) if pod else []


def cannot_start(pod: V1Pod) -> str | None:
    """Why the pod's container cannot start, with its image, or None while it may yet."""
    for container in (pod.status.container_statuses if pod.status else None) or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in CANNOT_START:
            return f"pod {pod.metadata.name} cannot start: {waiting.reason} for image \"{container.image}\": {waiting.message or 'no message'}"
    return None


def job_cannot_start(cluster: Cluster, job: V1Job) -> str | None:
    """cannot_start for a running Job's newest pod."""
    pods = pods_of(cluster, job.metadata.name) if job_state(job) == "running" else []
    return cannot_start(pods[-1]) if pods else None


def describe_failure(job: V1Job, pod: V1Pod | None) -> str:
    """Why a Job failed, most specific first: the pod's reason, its containers' exits, the Job's."""
    parts: list[str] = []
    if pod is not None and pod.status is not None:
        if pod.status.reason:
            parts.append(f"pod {pod.status.reason}: {pod.status.message or ''}".rstrip(": "))
        for container in pod.status.container_statuses or []:
            ended = (container.state and container.state.terminated) or (container.last_state and container.last_state.terminated)
            if not ended or ended.exit_code == 0:
                continue
            if ended.reason == "OOMKilled":
                parts.append(f"container {container.name} OOMKilled (exit {ended.exit_code}): it ran out of memory; raise the stage's memory in the recipe's resources")
            elif ended.exit_code == USER_ERROR_EXIT_CODE:
                parts.append(f"container {container.name} exited with code 2: bad input, not retried")
            else:
                parts.append(f"container {container.name} exited with code {ended.exit_code}")
    condition = _condition(job, "Failed")
    if condition is not None:
        parts.append(f"Job {condition.reason}: {condition.message}" if condition.message else f"Job {condition.reason}")
    return "; ".join(parts) or "failed"


def log_tail(cluster: Cluster, pod: str, lines: int = TAIL_LINES) -> list[str]:
    """A pod's last log lines; a pod whose log is gone or forbidden says so instead of failing."""
    try:
        with explained(cluster, "get", "pods/log", pod):
            text = cluster.core.read_namespaced_pod_log(pod, cluster.namespace, tail_lines=lines)
    except ClusterError as error:
        return [f"(no log: {error})"]
    return text.splitlines()


def stream_log(cluster: Cluster, pod: str, follow: bool) -> Iterator[str]:
    """A pod's whole log, line by line; with `follow`, until the pod ends."""
    with explained(cluster, "get", "pods/log", pod):
        if not follow:
            yield from cluster.core.read_namespaced_pod_log(pod, cluster.namespace).splitlines()
            return
        yield from watch.Watch().stream(cluster.core.read_namespaced_pod_log, pod, cluster.namespace)


def follow_jobs(cluster: Cluster, names: Collection[str], handle: Callable[[dict[str, V1Job]], bool], watch_seconds: int = WATCH_SECONDS) -> None:
    """Call `handle` with the named Jobs that exist, after a listing and after every change,
    until it returns True.

    List, then watch from the listing's resourceVersion; when a watch ends (its timeout,
    or the server closing it) call `handle` again and watch on from the last version seen.
    When that version has expired (410 Gone) or the stream broke off, list again: only a
    listing that fails gives up. `handle` always gets the whole picture, never a diff, which
    is what makes its callers re-entrant; it runs outside the API error handling, so its own
    errors (the store's, say) keep their meaning.
    """
    wanted = set(names)
    while True:
        with explained(cluster, "list", "jobs.batch"):
            listing = cluster.batch.list_namespaced_job(cluster.namespace)
        jobs = {job.metadata.name: job for job in listing.items if job.metadata.name in wanted}
        version = listing.metadata.resource_version
        try:
            while not handle(jobs):
                stream = watch.Watch().stream(cluster.batch.list_namespaced_job, cluster.namespace, resource_version=version, timeout_seconds=watch_seconds)
                with closing(stream) as events:  # closing it ends the HTTP stream at once
                    while True:
                        with explained(cluster, "watch", "jobs.batch"):
                            event = next(events, None)
                        if event is None:
                            break
                        job = event["object"]
                        version = job.metadata.resource_version
                        if job.metadata.name not in wanted:
                            continue
                        if event["type"] == "DELETED":
                            jobs.pop(job.metadata.name, None)
                        else:
                            jobs[job.metadata.name] = job
                        if handle(jobs):
                            return
            return
        except ClusterError as error:
            if error.status not in (GONE, BROKEN):
                raise


def _condition(job: V1Job, kind: str) -> V1JobCondition | None:
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def _iso(stamp: datetime | None) -> str | None:
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ") if stamp else None
