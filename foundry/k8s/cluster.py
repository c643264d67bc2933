"""Connecting to a cluster: a kubeconfig (or a pod's service account), a context, a namespace.

Each Cluster carries its own Configuration and ApiClient, never the client library's global
default, so a driver and a submitter in one process (the tests) never share settings.
Connection errors are not retried: a laptop user wants the one-line reason now, and the
in-cluster driver is restarted by its Job and picks up where it was.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from foundry.errors import UserError
from foundry.k8s.errors import ClusterError, explained

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
IN_CLUSTER = "in-cluster"
PROBE_TIMEOUT_S = 10


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str
    server: str
    context: str

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def kubeconfig_files() -> list[Path]:
    """The kubeconfig files that exist: $KUBECONFIG's list, else ~/.kube/config (as kubectl reads them)."""
    listed = os.environ.get("KUBECONFIG")
    candidates = [Path(p).expanduser() for p in listed.split(os.pathsep) if p] if listed else [Path("~/.kube/config").expanduser()]
    return [path for path in candidates if path.is_file()]


def connect(context: str | None = None, namespace: str | None = None) -> Cluster:
    """A client for the kubeconfig's context (or the pod's service account, in a cluster)."""
    configuration = client.Configuration()
    files = kubeconfig_files()
    if files:
        joined = os.pathsep.join(str(path) for path in files)
        chosen = _context(joined, context)
        try:
            config.load_kube_config(config_file=joined, context=chosen["name"], client_configuration=configuration, persist_config=False)
        except (ConfigException, OSError, ValueError) as error:
            raise UserError(f"kubeconfig {joined}: context {chosen['name']}: {error}") from error
        name, context_namespace = chosen["name"], chosen.get("context", {}).get("namespace")
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
            name, context_namespace = IN_CLUSTER, SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except (ConfigException, OSError) as error:
            raise UserError(f"in-cluster configuration: {error}; the pod needs its service account token (automountServiceAccountToken: true)") from error
    else:
        where = f"$KUBECONFIG ({os.environ['KUBECONFIG']})" if os.environ.get("KUBECONFIG") else "~/.kube/config"
        raise UserError(f"no kubeconfig: {where} does not exist; point KUBECONFIG at your cluster's config (e.g. `kind export kubeconfig`, `k3d kubeconfig write`, `minikube update-context`)")
    configuration.retries = 0
    return Cluster(client.ApiClient(configuration), namespace or context_namespace or "default", configuration.host, name)


def default_namespace(context: str | None) -> str:
    """The namespace a submit would use, read without connecting (for --dry-run=client)."""
    files = kubeconfig_files()
    if not files:
        return "default"
    return _context(os.pathsep.join(str(path) for path in files), context).get("context", {}).get("namespace") or "default"


def probe(cluster: Cluster) -> None:
    """Fail now, with the server's address, when the cluster cannot be reached or refuses us."""
    with explained(cluster, "get", "version"):
        client.VersionApi(cluster.api).get_code(_request_timeout=PROBE_TIMEOUT_S)


def require_namespace(cluster: Cluster) -> None:
    """A missing namespace is named before anything is applied; a user who may not read
    namespaces gets the same message from the first apply instead."""
    try:
        with explained(cluster, "get", "namespaces", cluster.namespace):
            cluster.core.read_namespace(cluster.namespace)
    except ClusterError as error:
        if error.status != 403:
            raise


def _context(files: str, wanted: str | None) -> dict:
    try:
        contexts, active = config.list_kube_config_contexts(files)
    except (ConfigException, OSError, ValueError) as error:
        raise UserError(f"kubeconfig {files}: {error}") from error
    names = [entry["name"] for entry in contexts]
    name = wanted or (active or {}).get("name")
    if name is None:
        raise UserError(f"kubeconfig {files} has no current context; pass --context (one of: {', '.join(names) or 'none'})")
    if name not in names:
        raise UserError(f"kubeconfig {files} has no context {name!r}; its contexts: {', '.join(names) or 'none'}")
    return next(entry for entry in contexts if entry["name"] == name)
