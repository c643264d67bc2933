"""What the cluster said, as one line a user can act on.

Every API call goes through `explained(cluster, verb, resource, name)`: the caller knows
what it was doing (the API server's 403 says it too, but only in prose), so a refusal
names the verb, the resource and the namespace, an unreachable cluster names the server
URL, and a 422 names the object and its bad field. A ClusterError is a UserError (exit 2)
that keeps the HTTP status, so callers can still tell a 409 (adopt the Job) from the rest.
"""

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes.client.exceptions import ApiException

from foundry.errors import UserError

if TYPE_CHECKING:
    from foundry.k8s.cluster import Cluster


class ClusterError(UserError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@contextmanager
def explained(cluster: "Cluster", verb: str, resource: str, name: str = "") -> Iterator[None]:
    try:
        yield
    except ApiException as error:
        raise translate(error, cluster, verb, resource, name) from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise unreachable(cluster, error) from error


def unreachable(cluster: "Cluster", error: BaseException) -> ClusterError:
    cause = getattr(error, "reason", None) or error
    text = re.sub(r"^(<[^>]*>|\w+\([^)]*\)):\s*", "", str(cause))  # urllib3 prefixes the connection's repr
    return ClusterError(f"cannot reach the cluster at {cluster.server} (context {cluster.context}): {text}; check that it is running and that the kubeconfig points at it")


def translate(error: ApiException, cluster: "Cluster", verb: str, resource: str, name: str) -> ClusterError:
    body = _status_body(error)
    details = body.get("details") or {}
    message = body.get("message") or error.reason or ""
    target = f"{resource}/{name}" if name else resource
    where = "" if resource in ("namespaces", "version") else f" in namespace {cluster.namespace}"
    code = error.status or 0
    if code == 0:
        return unreachable(cluster, error)
    if code == 401:
        text = f"unauthorized: the cluster at {cluster.server} rejected the credentials of context {cluster.context}; log in again or refresh the kubeconfig"
    elif code == 403:
        text = (f"forbidden: cannot {verb} {resource}{where} (context {cluster.context}); grant it with a Role and RoleBinding "
                f"(check with `kubectl auth can-i {verb} {resource}{' -n ' + cluster.namespace if where else ''}`)")
    elif code == 404 and details.get("kind") == "namespaces":
        text = f"namespace {cluster.namespace} does not exist on {cluster.server}; create it (`kubectl create namespace {cluster.namespace}`) or pass --namespace"
    elif code == 422:
        causes = [f"{cause.get('field', '?')}: {cause.get('message', '')}" for cause in details.get("causes") or []]
        kind = details.get("kind") or resource
        text = f"invalid {kind} {details.get('name') or name}: {'; '.join(causes) or message}"
    elif code == 409:
        text = f"conflict on {target}{where}: {message}"
    else:
        text = f"{verb} {target}{where} failed: {code} {body.get('reason') or error.reason}: {message}"
    return ClusterError(text, code)


def _status_body(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body) if error.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}
