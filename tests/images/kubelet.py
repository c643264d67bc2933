"""A node for the API server fake (tests/k8s_fake.py): a kubelet and a Job controller over podman.

When a Job is created, its pod template runs as a container of the built image, mapped the
way a kubelet maps it: command and args; env (values, the downward API's fieldRefs, Secret
keys from the fake's Secrets); volumes (an emptyDir is a host folder with mode 0777, as a
kubelet makes it; ConfigMaps and downward-API items are files, read-only); the service
account's token, CA and namespace where the pod mounts them, with KUBERNETES_SERVICE_HOST
and _PORT pointing at the fake's HTTPS listener; the security context (runAsUser/Group,
fsGroup as a supplementary group, runAsNonRoot, a read-only root with no tmpfs of podman's
own, dropped capabilities, no privilege escalation); memory and CPU limits; and the Job's
activeDeadlineSeconds. Its output is the pod's log, served through the API as it comes.

The pod's exit becomes the Job's status as the Job controller would write it: Complete on 0;
on a failure the podFailurePolicy's FailJob rules first (the chart's: exit 2 fails the Job
at once), then backoffLimit, with a new pod per retry. An image the node does not have is
never pulled (no registry is reachable here): the pod waits in ErrImagePull, as on a
cluster, and a Secret that is missing leaves it in CreateContainerConfigError.

Networking: every pod shares the host's network namespace (--network=host). The API server
fake and the S3 endpoint (moto) listen on 127.0.0.1 only, and on a real cluster pods reach
them over the cluster network; here loopback is the only address they may use, and only
the host's network namespace has it.
"""

import base64
import json
import math
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

# Between a failed pod and its replacement (the Job controller backs off 10 s, doubling).
RETRY_DELAY_S = 1.0
STOP_GRACE_S = 5
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class PodCannotStart(Exception):
    """The pod waits: its container cannot be created (reason, message as a kubelet words them)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PodmanNode:
    def __init__(self, folder: Path, podman: str = "podman") -> None:
        self.folder = folder
        self.podman = podman
        self.fake: Any = None
        self.api_port = 0
        self.api_ca: Path | None = None
        self.containers: dict[str, str] = {}  # Job name -> the container of its running pod
        self.gone: set[str] = set()  # Jobs deleted: their pods are stopped, none is started again
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    # --- the fake's calls ------------------------------------------------------------

    def attach(self, fake: Any) -> None:
        self.fake = fake
        self.api_port, self.api_ca = fake.serve_tls(self.folder / "api-tls")

    def start(self, job: dict[str, Any]) -> None:
        thread = threading.Thread(target=self._run_job, args=(job,), daemon=True, name=f"job {job['metadata']['name']}")
        self.threads.append(thread)
        thread.start()

    def deleted(self, job: str) -> None:
        """The Job was deleted: its running pod is stopped (SIGTERM, then SIGKILL after the
        grace period), in the background: the API server answers the delete at once."""
        with self.lock:
            self.gone.add(job)
            container = self.containers.get(job)
        if container:
            stopping = threading.Thread(target=subprocess.run, args=([self.podman, "stop", "--time", str(STOP_GRACE_S), container],), kwargs={"capture_output": True}, daemon=True)
            self.threads.append(stopping)
            stopping.start()

    def stop(self) -> None:
        for job in list(self.containers):
            self.deleted(job)
        for thread in list(self.threads):
            thread.join(timeout=STOP_GRACE_S + 10)

    # --- what tests do to pods -------------------------------------------------------

    def kill(self, job: str) -> None:
        """SIGKILL the Job's running container, as a node crash or the OOM killer would."""
        container = self.containers[job]
        subprocess.run([self.podman, "kill", container], check=True, capture_output=True)

    def running(self, job: str) -> bool:
        return job in self.containers

    # --- the Job controller ----------------------------------------------------------

    def _run_job(self, job: dict[str, Any]) -> None:
        name, namespace, spec = job["metadata"]["name"], job["metadata"]["namespace"], job["spec"]
        deadline = time.monotonic() + spec.get("activeDeadlineSeconds", math.inf)
        failures = 0
        while name not in self.gone:
            pod = self.fake.start_pod(job, phase="Pending")
            try:
                code, out_of_time = self._run_pod(name, pod, deadline)
            except PodCannotStart as waiting:
                self.fake.update_pod(pod, "Pending", {"waiting": {"reason": waiting.reason, "message": str(waiting)}})
                return  # it waits, as on a cluster, until its Job is deleted or its deadline
            if name in self.gone:
                return
            if out_of_time:
                self.fake.end_pod(pod, "Failed", code, "Error", ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline"))
                self.fake.end_job(name, namespace, False, [("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
                return
            if code == 0:
                done = "Reached expected number of succeeded pods"
                self.fake.end_pod(pod, "Succeeded", 0, "Completed")
                self.fake.end_job(name, namespace, True, [("SuccessCriteriaMet", "CompletionsReached", done), ("Complete", "CompletionsReached", done)])
                return
            self.fake.end_pod(pod, "Failed", code, "Error")
            rule = _fail_job_rule(spec, pod, code)
            if rule is not None:
                message = f"Container {pod['spec']['containers'][0]['name']} for pod {namespace}/{pod['metadata']['name']} failed with exit code {code} matching FailJob rule at index {rule}"
                self.fake.end_job(name, namespace, False, [("Failed", "PodFailurePolicy", message)])
                return
            failures += 1
            if failures > spec.get("backoffLimit", 6):
                self.fake.end_job(name, namespace, False, [("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
                return
            self.fake.count_failure(name, namespace)
            time.sleep(RETRY_DELAY_S)

    # --- the kubelet -----------------------------------------------------------------

    def _run_pod(self, job: str, pod: dict[str, Any], deadline: float) -> tuple[int, bool]:
        """Run the pod's one container to its end: (exit code, whether the deadline stopped it)."""
        [container] = pod["spec"]["containers"]
        image = container["image"]
        if subprocess.run([self.podman, "image", "exists", image], capture_output=True).returncode != 0:
            raise PodCannotStart("ErrImagePull", f'failed to pull image "{image}": the node does not have it and no registry is reachable')
        name = pod["metadata"]["name"]
        argv = self._podman_run(pod, container)
        with self.lock:
            if job in self.gone:
                return 137, False
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.containers[job] = name
        self.fake.update_pod(pod, "Running", {"running": {"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}})
        out_of_time = threading.Event()
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._stop_for_deadline, args=(name, out_of_time))
        if deadline != math.inf:
            timer.start()
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            self.fake.append_log(name, line.decode(errors="replace"))
        code = process.wait()
        timer.cancel()
        with self.lock:
            self.containers.pop(job, None)
        return code, out_of_time.is_set()

    def _stop_for_deadline(self, container: str, out_of_time: threading.Event) -> None:
        out_of_time.set()
        subprocess.run([self.podman, "stop", "--time", str(STOP_GRACE_S), container], capture_output=True)

    def _podman_run(self, pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
        name = pod["metadata"]["name"]
        folder = self.folder / "pods" / name
        folder.mkdir(parents=True)
        spec = pod["spec"]
        argv = [self.podman, "run", "--rm", "--name", name, "--pull=never", "--network=host", "--hostname", name]
        argv += _security(spec.get("securityContext") or {}, container.get("securityContext") or {})
        argv += _resources(container.get("resources") or {})
        env = [self._env_value(pod, entry) for entry in container.get("env") or []]
        mounts = self._volumes(pod, folder / "volumes")
        if spec.get("automountServiceAccountToken", True):
            argv += ["--volume", f"{self._service_account(pod, folder / 'serviceaccount')}:{SERVICE_ACCOUNT_DIR}:ro"]
            env += [("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", str(self.api_port))]
        env_file = folder / "env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env))
        env_file.chmod(0o600)
        argv += ["--env-file", str(env_file)]
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in mounts:
                raise PodCannotStart("CreateContainerConfigError", f"volumeMount {mount['name']}: no such volume in the pod")
            source, read_only = mounts[mount["name"]]
            argv += ["--volume", f"{source}:{mount['mountPath']}" + (":ro" if read_only or mount.get("readOnly") else "")]
        if container.get("workingDir"):
            argv += ["--workdir", container["workingDir"]]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(container["command"])]
        return [*argv, container["image"], *container.get("args", [])]

    def _env_value(self, pod: dict[str, Any], entry: dict[str, Any]) -> tuple[str, str]:
        if "value" in entry:
            return entry["name"], str(entry["value"])
        source = entry.get("valueFrom") or {}
        if "fieldRef" in source:
            return entry["name"], _field(pod, source["fieldRef"]["fieldPath"])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return entry["name"], self._secret_key(pod["metadata"]["namespace"], ref["name"], ref["key"])
        raise PodCannotStart("CreateContainerConfigError", f"env {entry['name']}: this node maps value, fieldRef and secretKeyRef only")

    def _secret_key(self, namespace: str, name: str, key: str) -> str:
        secret = self.fake.objects.get(("secrets", namespace, name))
        if secret is None:
            raise PodCannotStart("CreateContainerConfigError", f'secret "{name}" not found')
        if key not in (secret.get("data") or {}):
            raise PodCannotStart("CreateContainerConfigError", f"couldn't find key {key} in Secret {namespace}/{name}")
        return base64.b64decode(secret["data"][key]).decode()

    def _volumes(self, pod: dict[str, Any], folder: Path) -> dict[str, tuple[Path, bool]]:
        """Each volume as a host folder, and whether it is read-only whatever the mount says."""
        mounts: dict[str, tuple[Path, bool]] = {}
        namespace = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes") or []:
            path = folder / volume["name"]
            path.mkdir(parents=True)
            if "emptyDir" in volume:
                path.chmod(0o777)  # what a kubelet gives an emptyDir; a tmpfs cannot be owned by the pod's user here
                mounts[volume["name"]] = (path, False)
            elif "configMap" in volume:
                configmap = self.fake.objects.get(("configmaps", namespace, volume["configMap"]["name"]))
                if configmap is None:
                    raise PodCannotStart("CreateContainerConfigError", f'configmap "{volume["configMap"]["name"]}" not found')
                _write_files(path, {key: value for key, value in (configmap.get("data") or {}).items()})
                mounts[volume["name"]] = (path, True)
            elif "downwardAPI" in volume:
                _write_files(path, {item["path"]: _field(pod, item["fieldRef"]["fieldPath"]) for item in volume["downwardAPI"]["items"]})
                mounts[volume["name"]] = (path, True)
            elif "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                secret = self.fake.objects.get(("secrets", namespace, secret_name)) or {}
                _write_files(path, {key: self._secret_key(namespace, secret_name, key) for key in secret.get("data") or {}})
                mounts[volume["name"]] = (path, True)
            else:
                raise PodCannotStart("CreateContainerConfigError", f"volume {volume['name']}: this node maps emptyDir, configMap, downwardAPI and secret volumes only")
        return mounts

    def _service_account(self, pod: dict[str, Any], folder: Path) -> Path:
        assert self.api_ca is not None
        _write_files(folder, {"token": f"fake-token-for-{pod['spec'].get('serviceAccountName', 'default')}", "namespace": pod["metadata"]["namespace"], "ca.crt": self.api_ca.read_text()})
        return folder


def _fail_job_rule(spec: dict[str, Any], pod: dict[str, Any], code: int) -> int | None:
    """The index of the podFailurePolicy rule that fails the Job for this exit, if any."""
    for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        exits = rule.get("onExitCodes")
        if not exits or exits.get("containerName", pod["spec"]["containers"][0]["name"]) != pod["spec"]["containers"][0]["name"]:
            continue
        matched = (code in exits["values"]) == (exits.get("operator", "In") == "In")
        if matched:
            return index if rule["action"] == "FailJob" else None
    return None


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta.get("uid", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"), "spec.nodeName": "podman"}
    if path in simple:
        return simple[path]
    found = _FIELD.match(path)
    if found is None:
        raise PodCannotStart("CreateContainerConfigError", f"fieldRef {path}: not a field this node knows")
    return str((meta.get(found[1]) or {}).get(found[2], ""))


def _write_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o644)


def _security(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    merged = {**pod, **container}
    argv = []
    user, group = merged.get("runAsUser"), merged.get("runAsGroup")
    if merged.get("runAsNonRoot") and user in (None, 0):
        raise PodCannotStart("CreateContainerConfigError", "container has runAsNonRoot and its runAsUser is root (or unset, which this node does not check against the image)")
    if user is not None:
        argv += ["--user", f"{user}:{group if group is not None else user}"]
    if pod.get("fsGroup") is not None:
        argv += ["--group-add", str(pod["fsGroup"])]
    if container.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]  # podman would add tmpfs mounts a pod does not have
    capabilities = container.get("capabilities") or {}
    argv += [f"--cap-drop={name}" for name in capabilities.get("drop") or []]
    argv += [f"--cap-add={name}" for name in capabilities.get("add") or []]
    if container.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    if container.get("privileged"):
        argv += ["--privileged"]
    return argv


def _resources(resources: dict[str, Any]) -> list[str]:
    limits = resources.get("limits") or {}
    argv = []
    if "memory" in limits:
        argv += ["--memory", str(_bytes(limits["memory"]))]
    if "cpu" in limits:
        argv += ["--cpus", str(_cpus(limits["cpu"]))]
    if "cpu" in (resources.get("requests") or {}):
        argv += ["--cpu-shares", str(max(2, int(_cpus(resources["requests"]["cpu"]) * 1024)))]
    return argv


def _bytes(quantity: Any) -> int:
    found = _QUANTITY.match(str(quantity))
    if found is None or found[2] not in _UNITS:
        raise PodCannotStart("CreateContainerConfigError", f"quantity {quantity!r}: not one this node reads")
    return int(float(found[1]) * _UNITS[found[2]])


def _cpus(quantity: Any) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)

