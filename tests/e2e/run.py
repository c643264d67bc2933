"""`make e2e`: the tiny demo recipe on a real cluster (kind, k3d, minikube) with an S3 store.

It runs only where there is a cluster to run on, and otherwise says why it skipped and
exits 0, so `make e2e` is safe everywhere. What it needs:

  KUBECONFIG            a kubeconfig whose current context is the cluster
  FOUNDRY_E2E_STORE     s3://BUCKET/PREFIX the stage pods can write (e.g. MinIO in the cluster)
  FOUNDRY_E2E_VALUES    optional: a chart values file, e.g. with store.endpoint,
                        store.credentials.secretName and the images loaded into the cluster
                        (pools.cpu.image.repository / tag)
  FOUNDRY_E2E_NAMESPACE optional, default foundry-e2e (created when missing)

It submits the demo (published to the store rather than a local folder) with --wait, checks
that a re-submit changes no object's resourceVersion, and reads the run back with
`foundry status` and `foundry runs`.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
FOUNDRY = [sys.executable, "-m", "foundry"]


def skip(why: str) -> None:
    print(f"e2e skipped: {why}")
    sys.exit(0)


def foundry(*args: str) -> subprocess.CompletedProcess[str]:
    print("$ foundry " + " ".join(args), flush=True)
    done = subprocess.run([*FOUNDRY, *args], cwd=REPO, text=True, capture_output=True)
    print(done.stdout + done.stderr, end="", flush=True)
    return done


def resource_versions(namespace: str) -> dict[str, str]:
    from foundry.k8s.cluster import connect

    cluster = connect(namespace=namespace)
    jobs = cluster.batch.list_namespaced_job(namespace).items
    configmaps = cluster.core.list_namespaced_config_map(namespace).items
    return {f"{type(o).__name__}/{o.metadata.name}": o.metadata.resource_version for o in [*jobs, *configmaps]}


def main() -> None:
    from foundry.errors import UserError
    from foundry.k8s.cluster import connect, kubeconfig_files, probe

    if not os.environ.get("KUBECONFIG") or not kubeconfig_files():
        skip("KUBECONFIG does not point at a kubeconfig; point it at a kind, k3d or minikube cluster to run the end-to-end test")
    try:
        probe(connect())
    except UserError as error:
        skip(str(error))
    store = os.environ.get("FOUNDRY_E2E_STORE", "")
    if not store.startswith("s3://"):
        skip("FOUNDRY_E2E_STORE is not set to s3://BUCKET/PREFIX: the stage pods need an S3 endpoint to share (MinIO in the cluster will do)")
    namespace = os.environ.get("FOUNDRY_E2E_NAMESPACE", "foundry-e2e")
    subprocess.run(["kubectl", "create", "namespace", namespace], capture_output=True)  # fine if it exists

    recipe = yaml.safe_load((REPO / "recipes" / "tiny-demo.yml").read_text())
    recipe["publish"]["to"] = f"{store.rstrip('/')}/published/models"
    values = ["-f", os.environ["FOUNDRY_E2E_VALUES"]] if os.environ.get("FOUNDRY_E2E_VALUES") else []
    with tempfile.TemporaryDirectory() as folder:
        recipe_file = Path(folder) / "tiny-demo.yml"
        recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
        submit = ["submit", str(recipe_file), "-n", namespace, "--set", f"store.url={store}", *values]
        if foundry(*submit, "--dry-run=server").returncode != 0:
            sys.exit("e2e failed: the API server refused the rendered objects")
        if foundry(*submit, "--wait").returncode != 0:
            sys.exit("e2e failed: the run did not succeed (see its status above)")
        before = resource_versions(namespace)
        if foundry(*submit).returncode != 0 or resource_versions(namespace) != before:
            sys.exit("e2e failed: re-submitting the unchanged recipe changed objects in the cluster")
    if foundry("status", "-n", namespace).returncode != 0 or foundry("runs", "-n", namespace).returncode != 0:
        sys.exit("e2e failed: the run could not be read back")
    print("e2e passed")


if __name__ == "__main__":
    main()
