"""An HTTP fake of the Kubernetes API server, for the official `kubernetes` client.

It speaks the real wire protocol on 127.0.0.1 (paths, query parameters, Status bodies,
chunked `?watch=1` streams of JSON lines with resourceVersions), so the code under test
goes through the same client calls it makes against a cluster. It keeps only what Foundry
uses: namespaces get; Jobs create/get/list/watch/apply/delete; ConfigMaps, Secrets,
ServiceAccounts, Roles, RoleBindings and CronJobs create/apply/get/list; Pods list/get and
logs. Tests drive Jobs to success or failure with `succeed`, `fail`, `evict` and
`exceed_deadline`, expire watches with `expire_watches` (the next watch from an old
resourceVersion gets a 410), and restrict verbs with `allowed` (anything else is a 403,
worded as the API server words it).

With a `node` (tests/images/kubelet.py) the fake has a kubelet and a Job controller: every
Job created runs its pods in containers, and their exits become the Jobs' status. For the
pods the fake also serves HTTPS (`serve_tls`), the way a pod's in-cluster client reaches
the API server.
"""

import base64
import copy
import hashlib
import json
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from foundry.store import Store, build_record

# plural -> (group, version, kind); "" is the core group.
KINDS = {
    "jobs": ("batch", "v1", "Job"), "cronjobs": ("batch", "v1", "CronJob"), "pods": ("", "v1", "Pod"),
    "configmaps": ("", "v1", "ConfigMap"), "secrets": ("", "v1", "Secret"), "serviceaccounts": ("", "v1", "ServiceAccount"),
    "roles": ("rbac.authorization.k8s.io", "v1", "Role"), "rolebindings": ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_WATCH_WAIT = 0.2
_BACKOFF = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "details": details or {}, "code": code}


def _merge(base: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
    """Apply's effect, simplified: maps merge key by key, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in applied.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else copy.deepcopy(value)
    return merged


class ApiError(Exception):
    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status["message"])
        self.status = status


class FakeApiServer:
    def __init__(self, folder: Path, namespaces: tuple[str, ...] = ("default", "foundry"), node: Any = None) -> None:
        self.node = node  # runs each Job's pods (tests/images/kubelet.py); None: tests drive Jobs by hand
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name)
        self.applied: dict[tuple[str, str, str], dict[str, Any]] = {}  # what `foundry` last applied
        self.events: list[tuple[int, str, str, str, dict[str, Any]]] = []  # rv, type, plural, namespace, object
        self.logs: dict[str, str] = {}  # pod name -> its log
        self.allowed: set[tuple[str, str]] | None = None  # (verb, resource) pairs; None allows all
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query) of every request
        self.job_creates: list[str] = []  # names of Jobs created, by POST or apply
        self.rv = 100
        self.compacted = 0
        self._kicks = 0
        self._closing = False
        self.cond = threading.Condition()
        self.gone_served = 0  # watches answered 410 Gone
        self.kubeconfig = folder / "kubeconfig"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._servers = [self._server]

    @classmethod
    @contextmanager
    def running(cls, folder: Path, namespace: str = "foundry", node: Any = None) -> Iterator["FakeApiServer"]:
        fake = cls(folder, node=node)
        threading.Thread(target=fake._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        fake.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
        }))
        try:
            if node is not None:
                node.attach(fake)
            yield fake
        finally:
            if node is not None:
                node.stop()
            with fake.cond:
                fake._closing = True
                fake.cond.notify_all()
            for server in fake._servers:
                server.shutdown()
                server.server_close()

    def serve_tls(self, folder: Path) -> tuple[int, Path]:
        """The same API on https://127.0.0.1:PORT with a self-signed certificate for that
        address, as in-cluster clients reach it; returns the port and the CA file to trust."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / "ca.crt", folder / "tls.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server.server_address[1], cert

    # --- what tests drive -------------------------------------------------------------

    def job(self, name: str, namespace: str = "foundry") -> dict[str, Any] | None:
        return self.objects.get(("jobs", namespace, name))

    def pods_of(self, job: str, namespace: str = "foundry") -> list[dict[str, Any]]:
        """The Job's pods, oldest first (objects keep their creation order)."""
        return [o for (plural, ns, _), o in list(self.objects.items()) if plural == "pods" and ns == namespace and o["metadata"]["labels"].get("job-name") == job]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Block until predicate() holds (checked after every change), or fail the test."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
                self.cond.wait(timeout=min(remaining, _WATCH_WAIT))  # also re-checks what the API does not see (the store)

    def log(self, job: str, text: str, namespace: str = "foundry") -> None:
        with self.cond:
            pod = self.pods_of(job, namespace)[-1]["metadata"]["name"]
            self.logs[pod] = self.logs.get(pod, "") + text
            self.cond.notify_all()

    def succeed(self, job: str, namespace: str = "foundry") -> None:
        done = "Reached expected number of succeeded pods"
        self._finish(job, namespace, pod_phase="Succeeded", exit_code=0, container_reason="Completed", pod_reason=None,
                     conditions=[("SuccessCriteriaMet", "CompletionsReached", done), ("Complete", "CompletionsReached", done)])

    def fail(self, job: str, exit_code: int = 1, container_reason: str = "Error", namespace: str = "foundry") -> None:
        self._finish(job, namespace, pod_phase="Failed", exit_code=exit_code, container_reason=container_reason, pod_reason=None, conditions=[_BACKOFF])

    def evict(self, job: str, namespace: str = "foundry") -> None:
        self._finish(job, namespace, pod_phase="Failed", exit_code=137, container_reason="Error", pod_reason=("Evicted", "The node was low on resource: ephemeral-storage."), conditions=[_BACKOFF])

    def exceed_deadline(self, job: str, namespace: str = "foundry") -> None:
        self._finish(job, namespace, pod_phase="Failed", exit_code=143, container_reason="Error", pod_reason=("DeadlineExceeded", "Pod was active on the node longer than the specified deadline"),
                     conditions=[("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])

    def expire_watches(self) -> None:
        """Compact history: open watches end, and a watch from any older resourceVersion gets 410 Gone."""
        with self.cond:
            self.rv += 1  # the rest of the cluster moved on: a fresh listing is newer than the compaction
            self.compacted = self.rv
            self._kicks += 1
            self.cond.notify_all()

    # --- the store of objects ---------------------------------------------------------

    def _put(self, plural: str, namespace: str, obj: dict[str, Any], event: str) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[(plural, namespace, obj["metadata"]["name"])] = obj
        self.events.append((self.rv, event, plural, namespace, copy.deepcopy(obj)))
        self.cond.notify_all()
        return obj

    def _create(self, plural: str, namespace: str, body: dict[str, Any], manager: str, operation: str) -> dict[str, Any]:
        group, version, kind = KINDS[plural]
        obj = copy.deepcopy(body)
        obj.update(apiVersion=f"{group}/{version}".lstrip("/"), kind=kind)
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=namespace, uid=hashlib.sha1(f"{plural}/{namespace}/{meta['name']}/{self.rv}".encode()).hexdigest(), creationTimestamp=_now(), generation=1,
                    managedFields=[{"manager": manager, "operation": operation, "apiVersion": obj["apiVersion"], "time": _now(), "fieldsType": "FieldsV1", "fieldsV1": {}}])
        if plural == "secrets" and "stringData" in obj:  # stored as data, base64, as the API server stores it
            obj["data"] = {**obj.get("data", {}), **{k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()}}
        if plural == "jobs":
            obj["status"] = {"active": 1, "startTime": _now()}
            self.job_creates.append(meta["name"])
        self._put(plural, namespace, obj, "ADDED")
        if plural == "jobs":
            if self.node is not None:
                self.node.start(copy.deepcopy(obj))
            else:
                self.start_pod(obj)
        return obj

    def start_pod(self, job: dict[str, Any], phase: str = "Running") -> dict[str, Any]:
        """A pod of the Job, as the Job controller makes it: the template's metadata and spec
        under a new name; Running (the tests drive it), or Pending for the node to run."""
        name = job["metadata"]["name"]
        suffix = hashlib.sha1(f"{name}{self.rv}".encode()).hexdigest()[:5]
        template = job["spec"]["template"]
        spec = copy.deepcopy(template["spec"])
        meta = template.get("metadata") or {}
        labels = {**meta.get("labels", {}), "job-name": name, "batch.kubernetes.io/job-name": name, "controller-uid": job["metadata"]["uid"]}
        running = phase == "Running"
        states = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": running, "restartCount": 0,
                   "state": {"running": {"startedAt": _now()}} if running else {"waiting": {"reason": "ContainerCreating"}}} for c in spec["containers"]]
        with self.cond:
            return self._put("pods", job["metadata"]["namespace"], {
                "apiVersion": "v1", "kind": "Pod", "spec": spec,
                "metadata": {"name": f"{name}-{suffix}", "namespace": job["metadata"]["namespace"], "labels": labels, "annotations": copy.deepcopy(meta.get("annotations", {})),
                             "uid": hashlib.sha1(f"pod/{name}/{suffix}".encode()).hexdigest(), "creationTimestamp": _now(),
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": True}]},
                "status": {"phase": phase, "startTime": _now(), "containerStatuses": states},
            }, "ADDED")

    def _finish(self, job: str, namespace: str, *, pod_phase: str, exit_code: int, container_reason: str, pod_reason: tuple[str, str] | None, conditions: list[tuple[str, str, str]]) -> None:
        with self.cond:
            self.end_pod(self.pods_of(job, namespace)[-1], pod_phase, exit_code, container_reason, pod_reason)
            self.end_job(job, namespace, pod_phase == "Succeeded", conditions)

    # --- what the node (tests/images/kubelet.py) reports -------------------------------

    def update_pod(self, pod: dict[str, Any], phase: str, state: dict[str, Any]) -> None:
        """A pod's phase and its containers' state ({"running": ...} or {"waiting": ...})."""
        with self.cond:
            if ("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]) not in self.objects:
                return  # deleted with its Job
            pod["status"]["phase"] = phase
            for status in pod["status"]["containerStatuses"]:
                status.update(ready="running" in state, state=copy.deepcopy(state))
            self._put("pods", pod["metadata"]["namespace"], pod, "MODIFIED")

    def end_pod(self, pod: dict[str, Any], phase: str, exit_code: int, container_reason: str, pod_reason: tuple[str, str] | None = None) -> None:
        with self.cond:
            if ("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]) not in self.objects:
                return
            pod["status"]["phase"] = phase
            if pod_reason:
                pod["status"]["reason"], pod["status"]["message"] = pod_reason
            for status in pod["status"]["containerStatuses"]:
                status.update(ready=False, state={"terminated": {"exitCode": exit_code, "reason": container_reason, "startedAt": pod["status"]["startTime"], "finishedAt": _now()}})
            self._put("pods", pod["metadata"]["namespace"], pod, "MODIFIED")

    def end_job(self, job: str, namespace: str, succeeded: bool, conditions: list[tuple[str, str, str]]) -> None:
        with self.cond:
            obj = self.objects.get(("jobs", namespace, job))
            if obj is None:
                return
            obj["status"].update(active=0, ready=0, **({"succeeded": 1, "completionTime": _now()} if succeeded else {"failed": obj["status"].get("failed", 0) + 1}))
            obj["status"]["conditions"] = [
                {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": _now(), "lastTransitionTime": _now()} for kind, reason, message in conditions
            ]
            self._put("jobs", namespace, obj, "MODIFIED")

    def count_failure(self, job: str, namespace: str) -> None:
        """A pod of the Job failed and the Job controller starts another."""
        with self.cond:
            obj = self.objects.get(("jobs", namespace, job))
            if obj is not None:
                obj["status"]["failed"] = obj["status"].get("failed", 0) + 1
                self._put("jobs", namespace, obj, "MODIFIED")

    def append_log(self, pod: str, text: str) -> None:
        with self.cond:
            self.logs[pod] = self.logs.get(pod, "") + text
            self.cond.notify_all()

    def _apply(self, plural: str, namespace: str, name: str, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        manager = query.get("fieldManager", "")
        if not manager:
            raise ApiError(_status(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'))
        applied = {k: v for k, v in body.items() if k != "status"}
        applied["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k in ("name", "namespace", "labels", "annotations")}
        key = (plural, namespace, name)
        current = self.objects.get(key)
        dry_run = query.get("dryRun") == "All"
        if current is None:
            return copy.deepcopy(body) if dry_run else self._remember(key, applied, self._create(plural, namespace, applied, manager, "Apply"))
        if self.applied.get(key) == applied:
            return current
        if plural == "jobs" and applied.get("spec", {}).get("template") != current["spec"]["template"]:
            group, _, kind = KINDS[plural]
            cause = {"reason": "FieldValueInvalid", "message": "field is immutable", "field": "spec.template"}
            raise ApiError(_status(422, "Invalid", f'{kind}.{group} "{name}" is invalid: spec.template: field is immutable', {"name": name, "group": group, "kind": kind, "causes": [cause]}))
        merged = _merge(current, applied)
        merged["metadata"]["generation"] = current["metadata"]["generation"] + (merged.get("spec") != current.get("spec"))
        return merged if dry_run else self._remember(key, applied, self._put(plural, namespace, merged, "MODIFIED"))

    def _remember(self, key: tuple[str, str, str], applied: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        self.applied[key] = applied
        return obj

    def _delete(self, plural: str, namespace: str, name: str, policy: str | None) -> dict[str, Any]:
        obj = self.objects.pop((plural, namespace, name))
        self.rv += 1
        self.events.append((self.rv, "DELETED", plural, namespace, obj))
        if plural == "jobs" and self.node is not None:
            self.node.deleted(name)
        if plural == "jobs" and policy in ("Background", "Foreground"):
            for pod in self.pods_of(name, namespace):
                self._delete("pods", namespace, pod["metadata"]["name"], None)
        self.cond.notify_all()
        return {**_status(200, "", ""), "details": {"name": name, "kind": plural}}


def _matches(obj: dict[str, Any], query: dict[str, str]) -> bool:
    wanted = [term.split("=", 1) for term in query.get("labelSelector", "").split(",") if term]
    labels = obj["metadata"].get("labels") or {}
    field = query.get("fieldSelector", "")
    return all(labels.get(k) == v for k, v in wanted) and (not field or field == f"metadata.name={obj['metadata']['name']}")


def _handler(fake: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = yaml.safe_load(self.rfile.read(length)) if length else None
            fake.requests.append((method, url.path, query))
            try:
                self._route(method, url.path.strip("/").split("/"), query, body or {})
            except ApiError as error:
                self._send(error.status["code"], error.status)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):  # a client that stopped watching
                self.close_connection = True

        def _route(self, method: str, parts: list[str], query: dict[str, str], body: dict[str, Any]) -> None:
            if parts == ["version"]:
                return self._send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "fake", "gitTreeState": "clean", "buildDate": "2024-08-13T07:28:49Z",
                                        "goVersion": "go1.22.5", "compiler": "gc", "platform": "linux/amd64"})
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4:
                self._authorize("get", "namespaces", parts[3], "")
                if parts[3] not in fake.namespaces:
                    raise ApiError(_status(404, "NotFound", f'namespaces "{parts[3]}" not found', {"name": parts[3], "kind": "namespaces"}))
                return self._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": parts[3]}, "status": {"phase": "Active"}})
            rest = parts[3:] if parts[0] == "api" else parts[4:]
            namespace, plural, name, sub = rest[0], rest[1], (rest[2:3] or [None])[0], (rest[3:4] or [None])[0]
            group = KINDS[plural][0]
            resource = f"{plural}.{group}" if group else plural
            verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method) or ("get" if name else "watch" if query.get("watch") in ("true", "True", "1") else "list")
            self._authorize(verb, f"{resource}/{sub}" if sub else resource, namespace, name or "")
            if namespace not in fake.namespaces:
                raise ApiError(_status(404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}))
            if verb == "watch":
                return self._watch(plural, namespace, query)
            with fake.cond:
                if verb == "list":
                    items = [o for (p, ns, _), o in sorted(fake.objects.items()) if p == plural and ns == namespace and _matches(o, query)]
                    return self._send(200, {"kind": f"{KINDS[plural][2]}List", "apiVersion": "v1", "metadata": {"resourceVersion": str(fake.rv)}, "items": items})
                if verb == "create":
                    name = body["metadata"]["name"]
                    self._validate(plural, name)
                    if (plural, namespace, name) in fake.objects:
                        raise ApiError(_status(409, "AlreadyExists", f'{resource} "{name}" already exists', {"name": name, "group": group, "kind": plural}))
                    return self._send(201, fake._create(plural, namespace, body, "python-kubernetes", "Update"))
                if verb == "patch":
                    if self.headers.get("Content-Type") != "application/apply-patch+yaml":
                        raise ApiError(_status(415, "UnsupportedMediaType", "this fake only takes server-side apply patches"))
                    self._validate(plural, name)
                    return self._send(200, fake._apply(plural, namespace, name, body, query))
                if (plural, namespace, name) not in fake.objects:
                    raise ApiError(_status(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "group": group, "kind": plural}))
                if verb == "delete":
                    return self._send(200, fake._delete(plural, namespace, name, query.get("propagationPolicy") or body.get("propagationPolicy")))
                if sub != "log":
                    return self._send(200, fake.objects[(plural, namespace, name)])
            self._log(namespace, name, query)

        def _authorize(self, verb: str, resource: str, namespace: str, name: str) -> None:
            if fake.allowed is not None and (verb, resource) not in fake.allowed:
                plural, _, group = resource.partition(".")
                where = f' in the namespace "{namespace}"' if resource != "namespaces" else ""
                raise ApiError(_status(403, "Forbidden", f'{resource} "{name}" is forbidden: User "tester" cannot {verb} resource "{plural}" in API group "{group}"{where}',
                                       {"name": name, "group": group, "kind": plural}))

        def _validate(self, plural: str, name: str) -> None:
            limit = 63 if plural == "jobs" else 253
            if len(name) <= limit and _DNS_SUBDOMAIN.match(name):
                return
            group, _, kind = KINDS[plural]
            rule = f"must be no more than {limit} characters" if len(name) > limit else "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            problem = f'Invalid value: "{name}": {rule}'
            qualified = f"{kind}.{group}" if group else kind
            raise ApiError(_status(422, "Invalid", f'{qualified} "{name}" is invalid: metadata.name: {problem}',
                                   {"name": name, "group": group, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": problem, "field": "metadata.name"}]}))

        def _watch(self, plural: str, namespace: str, query: dict[str, str]) -> None:
            since = int(query.get("resourceVersion") or fake.rv)
            deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
            self._start_stream()
            with fake.cond:
                kicks = fake._kicks
                if since < fake.compacted:
                    fake.gone_served += 1
                    gone = _status(410, "Expired", f"too old resource version: {since} ({fake.compacted})")
                    return self._end_stream([{"type": "ERROR", "object": gone}])
            while True:
                with fake.cond:
                    events = [{"type": kind, "object": obj} for rv, kind, p, ns, obj in fake.events if rv > since and p == plural and ns == namespace and _matches(obj, query)]
                    since = fake.rv
                    if not events:
                        if fake._closing or fake._kicks != kicks or time.monotonic() >= deadline:
                            return self._end_stream([])
                        fake.cond.wait(timeout=_WATCH_WAIT)
                        continue
                for event in events:
                    self._chunk(json.dumps(event).encode() + b"\n")

        def _log(self, namespace: str, pod: str, query: dict[str, str]) -> None:
            follow = query.get("follow") in ("true", "True")
            self._start_stream("text/plain")
            with fake.cond:
                text = fake.logs.get(pod, "")
                tail = int(query.get("tailLines", 0))
                sent = len(text) - len("".join(text.splitlines(keepends=True)[-tail:])) if tail else 0
            while True:
                with fake.cond:
                    text = fake.logs.get(pod, "")
                    done = not follow or fake._closing or fake.objects[("pods", namespace, pod)]["status"]["phase"] in ("Succeeded", "Failed")
                    if len(text) == sent and not done:
                        fake.cond.wait(timeout=_WATCH_WAIT)
                        continue
                if len(text) > sent:
                    self._chunk(text[sent:].encode())
                    sent = len(text)
                if done:
                    return self._end_stream([])

        def _send(self, code: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _start_stream(self, content_type: str = "application/json") -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end_stream(self, events: list[dict[str, Any]]) -> None:
            for event in events:
                self._chunk(json.dumps(event).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


# --- objects in the shape `foundry render` gives them (the chart's contract) -----------

RUN = "foundry-tiny-demo-0a1b2c3d4e"
STAGES = (("merge", "merge-1111aaaa", []), ("quantize", "quantize-2222bbbb", ["merge-1111aaaa"]), ("publish", "publish-3333cccc", ["quantize-2222bbbb"]))


def _pod_template(container: str, args: list[str], configmap: str) -> dict[str, Any]:
    return {"spec": {"restartPolicy": "Never", "containers": [{"name": container, "image": "foundry-cpu:test", "args": args, "volumeMounts": [{"name": "plan", "mountPath": "/etc/foundry/plan"}]}],
                     "volumes": [{"name": "plan", "configMap": {"name": configmap}}]}}


def rendered(store: str, run: str = RUN, recipe: str = "tiny-demo") -> list[dict[str, Any]]:
    """A three-stage run (merge → quantize → publish): its plan ConfigMap, driver Job and RBAC."""
    stages = [{
        "stage": stage, "key": key, "needs": needs,
        "spec": {"stage": stage, "recipe": recipe, "key": key, "store": store, "inputs": {"model": {"key": needs[0]}} if needs else {}, "params": {}},
        "job": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"fdy-{recipe}-{key}-abc123", "labels": {"foundry.dev/key": key}},
                "spec": {"backoffLimit": 2, "template": _pod_template("stage", ["/etc/foundry/spec.json"], run)}},
    } for stage, key, needs in STAGES]
    plan = {"recipe": recipe, "recipe_hash": "0123456789abcdef", "store": store, "stages": stages}
    driver_pod = _pod_template("driver", ["/etc/foundry/plan/plan.json"], run)
    driver_pod["spec"]["serviceAccountName"] = "foundry-driver"
    rule = {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch"]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "foundry-driver"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "foundry-driver"}, "rules": [rule]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "foundry-driver"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "foundry-driver"}, "subjects": [{"kind": "ServiceAccount", "name": "foundry-driver"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": run}, "data": {"plan.json": json.dumps(plan, indent=2)}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": run, "labels": {"foundry.dev/run": run}}, "spec": {"backoffLimit": 6, "template": driver_pod}},
    ]


def plan_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(json.loads(o["data"]["plan.json"]) for o in objects if o["kind"] == "ConfigMap")


def commit_key(store: Store, recipe: str, key: str) -> None:
    """What a stage pod does last, before it exits 0: its output committed under its key."""
    staging = store.new_staging(recipe, key)
    (staging / "out.txt").write_text(key)
    store.commit(recipe, key, staging, build_record(staging, key=key, stage=key.split("-")[0], recipe=recipe, started=0.0, extra={}))


class DriverThread:
    """A driver's run() in a thread of the test, as its pod would run it."""

    def __init__(self, driver: Any) -> None:
        self.code: int | None = None
        self.driver = driver
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.driver.run()

    def result(self, timeout: float = 10.0) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the driver did not finish"
        return self.code


def saved(store: Store, run: str = RUN) -> Any:
    """The run's status as the driver last saved it in the store."""
    from foundry import runstatus

    status = runstatus.load(store, run)
    assert status is not None
    return status
