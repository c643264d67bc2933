"""The tiny demo submitted to a cluster whose node runs every pod in the built CPU image.

`foundry submit --wait` goes through the official client to the API server fake; its node
(kubelet.py) runs the driver's pod in a container of the image, the driver creates the stage
Jobs through its in-cluster client, and each stage runs in its own container as the chart
restricts it (uid 10001, read-only root, no capabilities, its spec from the downward API),
against moto's S3 server on loopback. Then what a user would do next: `foundry status`,
`foundry logs`, `foundry verify s3://...`, and transformers.js in Node generating from the
published q4.
"""

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_fake import FakeApiServer
from kubernetes.client import V1ObjectMeta, V1Secret

from foundry.k8s.apply import apply
from foundry.k8s.cluster import connect
from foundry.s3 import client as s3client

REPO = Path(__file__).resolve().parents[2]
BUCKET = "foundry-images"
SITE = f"s3://{BUCKET}/site/models"
MODEL = "tiny-demo-q4"
S3_SECRET = "foundry-s3"  # the chart's store.credentials.secretName: the pods' S3 keys
RUN_TIMEOUT_S = 900
PROBE = """
import json, os
def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
        return True
    except OSError:
        return False
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "root_writable": writable("/"), "etc_writable": writable("/etc"), "scratch_writable": writable("/scratch"), "tmp_writable": writable("/tmp"),
    "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "spec": json.load(open("/etc/foundry/spec/spec.json")), "store": os.environ.get("FOUNDRY_STORE"),
    "has_key": bool(os.environ.get("AWS_SECRET_ACCESS_KEY")), "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")}))
"""


def foundry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it; wide, so that no table cell a test reads is folded."""
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "250"}, timeout=RUN_TIMEOUT_S)


def values(image: str, endpoint: str, store: str) -> list[str]:
    repository, tag = image.rsplit(":", 1)
    sets = [f"store.url={store}", f"store.endpoint={endpoint}", "store.region=us-east-1", f"store.credentials.secretName={S3_SECRET}",
            f"pools.cpu.image.repository={repository}", f"pools.cpu.image.tag={tag}", "pools.gpu.enabled=false"]
    return [word for value in sets for word in ("--set", value)]


def run_of(submitted: subprocess.CompletedProcess[str]) -> str:
    line = next(line for line in submitted.stderr.splitlines() if " submitted to namespace " in line)
    return line.split()[1]


def published(prefix: str) -> dict[str, Any]:
    """Every file published under s3://BUCKET/PREFIX, by path: its sha256, or for the manifest
    and models.json their JSON without the times they record (`created`, `published`)."""
    s3 = s3client.client()
    files: dict[str, Any] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            data = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            path = item["Key"].removeprefix(prefix)
            files[path] = _timeless(json.loads(data)) if path.endswith(("manifest.json", "models.json")) else hashlib.sha256(data).hexdigest()
    return files


def _timeless(document: Any) -> Any:
    if isinstance(document, dict):
        return {key: _timeless(value) for key, value in document.items() if key not in ("created", "published")}
    return [_timeless(value) for value in document] if isinstance(document, list) else document


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, cluster: FakeApiServer, s3_env_module: str) -> Path:
    """A folder whose tiny demo publishes to the bucket, and the Secret with the bucket's keys."""
    folder = tmp_path_factory.mktemp("work")
    s3client.client().create_bucket(Bucket=BUCKET)
    keys = {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    connect().core.create_namespaced_secret("foundry", V1Secret(metadata=V1ObjectMeta(name=S3_SECRET), string_data=keys))
    recipe = (REPO / "recipes" / "tiny-demo.yml").read_text().replace("to: ./.foundry/published/models", f"to: {SITE}")
    assert SITE in recipe
    (folder / "tiny-demo.yml").write_text(recipe)
    return folder


@pytest.fixture(scope="module")
def demo(cluster: FakeApiServer, image: str, work: Path, s3_env_module: str) -> dict[str, Any]:
    started = time.monotonic()
    submitted = foundry("submit", "--wait", "tiny-demo.yml", *values(image, s3_env_module, f"s3://{BUCKET}/store"), cwd=work)
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    return {"run": run_of(submitted), "output": submitted.stderr, "seconds": time.monotonic() - started}


def test_submit_wait_runs_the_driver_and_every_stage_in_the_image(demo: dict[str, Any], cluster: FakeApiServer, image: str, work: Path) -> None:
    run = demo["run"]
    for stage in ("merge", "quantize", "publish"):
        assert f"✓ {stage} " in demo["output"], demo["output"]
    assert f"run {run}: succeeded" in demo["output"]
    jobs = [run, *(name for name in cluster.job_creates if name != run)]
    assert len(jobs) == 4  # the driver and its three stages, each created once
    for job in jobs:
        [pod] = cluster.pods_of(job)
        assert pod["status"]["phase"] == "Succeeded" and pod["status"]["containerStatuses"][0]["image"] == image
    status = foundry("status", run, cwd=work)
    assert status.returncode == 0, status.stderr
    assert f"run {run}: succeeded" in status.stdout
    assert [line.split()[1:6:4] for line in status.stdout.splitlines() if line.startswith("│ ")] == [["merge", "succeeded"], ["quantize", "succeeded"], ["publish", "succeeded"]]
    driver_log = foundry("logs", run, cwd=work)
    assert driver_log.returncode == 0 and f"run {run}: succeeded" in driver_log.stdout, driver_log.stderr
    stage_log = foundry("logs", run, "--stage", "quantize", cwd=work)
    assert stage_log.returncode == 0 and '"committed": "quantize-' in stage_log.stdout, stage_log.stderr
    verified = foundry("verify", f"{SITE}/{MODEL}", cwd=work)
    assert verified.returncode == 0 and "every file matches" in verified.stdout, verified.stderr + verified.stdout


def test_stage_pods_run_restricted_with_their_spec_from_the_downward_api(demo: dict[str, Any], cluster: FakeApiServer) -> None:
    """The rendered merge Job, its command swapped for a probe: what the container sees."""
    merge = next(name for name in cluster.job_creates if "-merge-" in name)
    job = json.loads(json.dumps(cluster.job(merge)))
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe-" + merge[:40]}, "spec": {key: job["spec"][key] for key in ("backoffLimit", "podFailurePolicy", "template")}}
    [container] = body["spec"]["template"]["spec"]["containers"]
    container.update(command=["python", "-c", PROBE], args=[])
    connect().batch.create_namespaced_job("foundry", body)
    cluster.wait_for(lambda: "conditions" in cluster.job(body["metadata"]["name"])["status"], timeout=120)
    [pod] = cluster.pods_of(body["metadata"]["name"])
    seen = json.loads(cluster.logs[pod["metadata"]["name"]].strip().splitlines()[-1])
    assert (seen["uid"], seen["gid"]) == (10001, 10001) and 10001 in seen["groups"]
    assert not seen["root_writable"] and not seen["etc_writable"] and seen["scratch_writable"] and seen["tmp_writable"]
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["spec"] == json.loads(job["spec"]["template"]["metadata"]["annotations"]["foundry.dev/spec"]) and seen["spec"]["stage"] == "merge"
    assert seen["store"] == f"s3://{BUCKET}/store" and seen["has_key"] and not seen["token"]


def test_the_node_honours_the_deadline_and_the_backoff_limit(demo: dict[str, Any], cluster: FakeApiServer) -> None:
    """Two Jobs on the merge Job's pod template: one sleeps past its activeDeadlineSeconds, one
    exits 1 (not 2, so no FailJob rule applies) with backoffLimit 1: two pods, then failed."""
    merge = next(name for name in cluster.job_creates if "-merge-" in name)
    template = json.loads(json.dumps(cluster.job(merge)["spec"]["template"]))
    jobs = {
        "deadline-probe": ({"activeDeadlineSeconds": 10, "backoffLimit": 2}, "import time; print('sleeping', flush=True); time.sleep(120)"),
        "backoff-probe": ({"backoffLimit": 1}, "import sys; print('failing'); sys.exit(1)"),
    }
    for name, (settings, code) in jobs.items():
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {**settings, "podFailurePolicy": cluster.job(merge)["spec"]["podFailurePolicy"], "template": json.loads(json.dumps(template))}}
        body["spec"]["template"]["spec"]["containers"][0].update(command=["python", "-c", code], args=[])
        connect().batch.create_namespaced_job("foundry", body)
    cluster.wait_for(lambda: all("conditions" in cluster.job(name)["status"] for name in jobs), timeout=120)
    [pod] = cluster.pods_of("deadline-probe")
    assert cluster.job("deadline-probe")["status"]["conditions"][0]["reason"] == "DeadlineExceeded" and pod["status"]["reason"] == "DeadlineExceeded"
    assert "sleeping" in cluster.logs[pod["metadata"]["name"]] and pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] != 0
    pods = cluster.pods_of("backoff-probe")
    assert [p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods] == [1, 1]
    assert cluster.job("backoff-probe")["status"]["conditions"][0]["reason"] == "BackoffLimitExceeded" and cluster.job("backoff-probe")["status"]["failed"] == 2


def test_node_generates_from_the_published_q4(demo: dict[str, Any], tmp_path: Path) -> None:
    """transformers.js in Node, from the bucket's files served on loopback, answers what ONNX Runtime in Python answers."""
    from jobs.tools.query import OnnxGenerator, prompt_ids

    s3 = s3client.client()
    site = tmp_path / "site"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="site/models/"):
        for item in page.get("Contents", []):
            target = site / item["Key"].removeprefix("site/")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(BUCKET, item["Key"], str(target))
    base = json.loads((site / "models" / "models.json").read_text())["tiny-demo"]["urls"]["base"]
    folder = site / base.strip("/")
    generator = OnnxGenerator(folder, "q4")
    ids = prompt_ids(generator.tokenizer, "Hello there", system=None, raw=False)
    expected = list(generator.token_ids(ids, 16))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = {"base": f"http://127.0.0.1:{server.server_address[1]}{base}", "variants": ["q4"], "messages": [{"role": "user", "content": "Hello there"}],
                   "max_new_tokens": 16, "cache_dir": str(tmp_path / "cache")}
        node = subprocess.run(["node", str(REPO / "tests" / "web" / "node_generate.mjs"), json.dumps(request)], cwd=REPO, capture_output=True, text=True, timeout=240)
    finally:
        server.shutdown()
        server.server_close()
    assert node.returncode == 0, node.stderr
    result = json.loads(node.stdout)["results"]["q4"]
    assert "error" not in result, result["error"]
    assert result["prompt_ids"] == ids and result["new_ids"] == expected and len(expected) > 0


def test_a_stage_killed_mid_run_is_retried_and_publishes_the_same_bytes(demo: dict[str, Any], cluster: FakeApiServer, image: str, work: Path, s3_env_module: str) -> None:
    before = published("site/models/")
    assert any(path.endswith("onnx/model_q4.onnx") for path in before)
    s3 = s3client.client()
    for path in before:  # the second run must publish every file again
        s3.delete_object(Bucket=BUCKET, Key="site/models/" + path)
    killed: list[str] = []

    def kill_quantize_once_it_works() -> None:
        def working() -> bool:
            jobs = [name for name in cluster.job_creates if "-quantize-" in name and name not in demo_jobs]
            pods = cluster.pods_of(jobs[0]) if jobs else []
            return bool(pods) and cluster.node.running(jobs[0]) and "writing to" in cluster.logs.get(pods[0]["metadata"]["name"], "")
        cluster.wait_for(working, timeout=RUN_TIMEOUT_S)
        job = next(name for name in cluster.job_creates if "-quantize-" in name and name not in demo_jobs)
        cluster.node.kill(job)
        killed.append(job)

    demo_jobs = set(cluster.job_creates)
    killer = threading.Thread(target=kill_quantize_once_it_works, daemon=True)
    killer.start()
    submitted = foundry("submit", "--wait", "tiny-demo.yml", *values(image, s3_env_module, f"s3://{BUCKET}/store-again"), cwd=work)
    killer.join(10)
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    [job] = killed
    first, second = cluster.pods_of(job)
    assert first["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert '"committed"' not in cluster.logs[first["metadata"]["name"]]  # killed mid-run, before it committed
    assert second["status"]["phase"] == "Succeeded" and cluster.job(job)["status"]["failed"] == 1
    assert published("site/models/") == before


def test_a_bad_input_fails_its_pod_with_exit_2_and_no_retry(cluster: FakeApiServer, image: str, work: Path, s3_env_module: str) -> None:
    """A plan whose merge names a model that does not exist, as `foundry render` would never
    plan it: the stage exits 2, the podFailurePolicy fails its Job at once, the driver too."""
    rendered = foundry("render", "tiny-demo.yml", "--namespace", "foundry", *values(image, s3_env_module, f"s3://{BUCKET}/store-bad"), cwd=work)
    assert rendered.returncode == 0, rendered.stderr
    objects = [obj for obj in yaml.safe_load_all(rendered.stdout.replace("tiny:llama-b", "tiny:nope")) if obj]
    api = connect()
    for obj in objects:
        apply(api, obj)
    run = next(obj["metadata"]["name"] for obj in objects if obj["kind"] == "Job")
    cluster.wait_for(lambda: "conditions" in cluster.job(run)["status"], timeout=RUN_TIMEOUT_S)
    merge = next(name for name in cluster.job_creates if "-merge-" in name and "store-bad" in json.dumps(cluster.job(name)))
    [pod] = cluster.pods_of(merge)
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    assert cluster.job(merge)["status"]["conditions"][0]["reason"] == "PodFailurePolicy"
    assert "tiny:nope" in cluster.logs[pod["metadata"]["name"]]
    [driver] = cluster.pods_of(run)
    assert driver["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2 and cluster.job(run)["status"]["conditions"][0]["reason"] == "PodFailurePolicy"
    status = foundry("status", run, cwd=work)
    assert f"run {run}: failed" in status.stdout and "exited with code 2: bad input" in status.stdout, status.stdout + status.stderr


def test_a_missing_image_fails_the_run_with_its_name(cluster: FakeApiServer, image: str, work: Path, s3_env_module: str) -> None:
    missing = "localhost/foundry-cpu:not-built"
    submitted = foundry("submit", "tiny-demo.yml", *values(missing, s3_env_module, f"s3://{BUCKET}/store-missing"), cwd=work)
    assert submitted.returncode == 0, submitted.stderr
    run = run_of(submitted)
    cluster.wait_for(lambda: any(pod["status"]["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "ErrImagePull" for pod in cluster.pods_of(run)), timeout=60)
    status = foundry("status", run, cwd=work)
    assert status.returncode == 0, status.stderr
    assert f"run {run}: failed" in status.stdout and f'"{missing}"' in status.stdout and "ErrImagePull" in status.stdout, status.stdout


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass
