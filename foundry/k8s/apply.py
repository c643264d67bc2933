"""Server-side apply of rendered objects, as `kubectl apply --server-side` does it.

One PATCH per object with `Content-Type: application/apply-patch+yaml` and
`fieldManager=foundry` (the official client's typed patch methods cannot select that
content type, so this goes through `ApiClient.call_api`, the same call its dynamic client
makes). The API server merges, records which fields Foundry owns, and leaves an object
untouched when nothing changed, so submitting the same recipe twice changes nothing.
`force` stays off: a field someone else owns is a conflict to report, never to take.
"""

from typing import Any

from foundry.errors import UserError
from foundry.k8s.cluster import Cluster
from foundry.k8s.errors import explained

FIELD_MANAGER = "foundry"
APPLY_PATCH = "application/apply-patch+yaml"
# The namespaced kinds `foundry render` makes, by kind: their plural.
PLURALS = {"ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings", "Job": "jobs", "CronJob": "cronjobs"}


def resource_of(obj: dict[str, Any]) -> str:
    """`jobs.batch`, `configmaps`: the resource as RBAC and kubectl name it."""
    kind = obj.get("kind", "")
    if kind not in PLURALS:
        raise UserError(f"cannot apply a {kind or 'kind-less object'}: foundry submit applies {', '.join(PLURALS)}")
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return f"{PLURALS[kind]}.{group}" if group else PLURALS[kind]


def apply(cluster: Cluster, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """Apply one object in the cluster's namespace; return what the server holds (or would)."""
    resource = resource_of(obj)
    name = obj["metadata"]["name"]
    rendered_for = obj["metadata"].get("namespace")
    if rendered_for not in (None, cluster.namespace):
        raise UserError(f"{obj['kind']}/{name} was rendered for namespace {rendered_for}, not {cluster.namespace}; render and submit with the same --namespace")
    api_version = obj["apiVersion"]
    prefix = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    body = {**obj, "metadata": {**obj["metadata"], "namespace": cluster.namespace}}
    query = [("fieldManager", FIELD_MANAGER)] + ([("dryRun", "All")] if dry_run else [])
    with explained(cluster, "patch", resource, name):
        return cluster.api.call_api(
            f"{prefix}/namespaces/{{namespace}}/{PLURALS[obj['kind']]}/{{name}}", "PATCH",
            path_params={"namespace": cluster.namespace, "name": name},
            query_params=query,
            header_params={"Content-Type": APPLY_PATCH, "Accept": "application/json"},
            body=body,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
