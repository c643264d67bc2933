"""The Helm chart, through the real Helm engine: it renders for every recipe and a matrix of
values, lints clean, and every object it makes (the stage Jobs inside the plan included)
validates strictly against the Kubernetes schemas of 1.30 to 1.34, runs under the restricted
pod security profile and carries its labels."""

import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from foundry import helm
from foundry.errors import UserError
from foundry.recipe.load import load_recipe
from foundry.render import Rendered, chart_path, generated_values, render_recipe
from foundry.stagespec import StageSpec

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yml"))
KUBERNETES = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")
STORE = "s3://foundry-store/runs"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
POD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")

SWEEP = """\
name: tiny-sweep
models: [{model: "tiny:llama-a"}, {model: "tiny:llama-b"}]
merge_method: slerp
base_model: "tiny:llama-a"
parameters: {t: 0.4}
dtype: float32
evaluate: {suites: [{jsonl: "s3://eval-bucket/qa.jsonl"}]}
quantize: {variants: [q8]}
publish: {to: "s3://web-bucket/models", entry: {id: tiny-sweep-q8}}
sweep:
  grid: {parameters.t: [0.3, 0.5, 0.7]}
  select: {metric: qa.exact_match, mode: max}
resources:
  quantize: {gpu: 1, memory: 24Gi}
  merge: {cpu: 0.5, ephemeral_storage: 10Gi}
"""

# name -> (--set values, cron): the values a cluster owner is likeliest to change.
MATRIX: dict[str, tuple[list[str], str | None]] = {
    "defaults": ([], None),
    "no-gpu-pool": (["pools.gpu.enabled=false", "stages.quantize=gpu"], None),
    "gpu-quantize": (["stages.quantize=gpu", "pools.gpu.queueName=gpu-queue"], None),
    "custom-tolerations": ([
        "pools.cpu.tolerations[0].key=dedicated", "pools.cpu.tolerations[0].operator=Equal",
        "pools.cpu.tolerations[0].value=ml", "pools.cpu.tolerations[0].effect=NoSchedule",
        "pools.cpu.nodeSelector.node\\.kubernetes\\.io/pool=batch", "driver.tolerations[0].operator=Exists",
    ], None),
    "existing-service-account": (["serviceAccount.create=false", "serviceAccount.name=ml-runner"], None),
    "no-rbac": (["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ml-runner"], None),
    "secrets-and-pinning": ([
        "store.credentials.secretName=s3-credentials", "store.endpoint=http://minio.storage:9000", "store.region=eu-west-1",
        "huggingface.tokenSecret.name=hf", "imagePullSecrets[0].name=registry",
        "pools.cpu.image.digest=sha256:" + "a" * 64, "stageJob.serviceAccountName=stage-runner",
        "podAnnotations.example\\.com/team=ml", "pools.cpu.priorityClassName=batch-low", "pools.cpu.shmSize=1Gi",
    ], None),
    "cron": ([], "0 2 * * *"),
}


def render(recipe: Path, sets: Sequence[str] = (), cron: str | None = None, **options: Any) -> Rendered:
    return render_recipe(recipe, sets=[f"store.url={STORE}", *sets], cron=cron, namespace="ml", **options)


@cache
def rendered_case(case: str) -> Rendered:
    sets, cron = MATRIX[case]
    return render(REPO / "recipes" / "tiny-demo.yml", sets, cron)


@pytest.fixture(scope="module")
def sweep_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "tiny-sweep.yml"
    path.write_text(SWEEP)
    return path


def plan_documents(rendered: Rendered) -> list[dict[str, Any]]:
    """plan.json, or each plan of plans.json, from the run's ConfigMap."""
    (config_map,) = [obj for obj in rendered.objects if obj["kind"] == "ConfigMap"]
    ((name, text),) = config_map["data"].items()
    document = json.loads(text)
    return document["plans"] if name == "plans.json" else [document]


def stage_jobs(rendered: Rendered) -> list[dict[str, Any]]:
    return [stage["job"] for plan in plan_documents(rendered) for stage in plan["stages"]]


def every_object(rendered: Rendered) -> list[dict[str, Any]]:
    return [*rendered.objects, *stage_jobs(rendered)]


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]]
    return []


def validate_all(objects: list[dict[str, Any]]) -> None:
    distinct = {json.dumps(obj, sort_keys=True): obj for obj in objects}
    for version in KUBERNETES:
        for obj in distinct.values():
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} on Kubernetes {version}: {list(error.absolute_path)}: {error.message}")


def test_the_schemas_for_every_version_are_there() -> None:
    minimal = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    assert [kubernetes_validate.validate(minimal, version, strict=True) for version in KUBERNETES] == ["1.30", "1.31", "1.32", "1.33", "1.34"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_renders_and_validates_on_kubernetes_1_30_to_1_34(recipe: Path) -> None:
    rendered = render(recipe)
    assert [obj["kind"] for obj in rendered.objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    assert len(stage_jobs(rendered)) == sum(len(plan["stages"]) for plan in plan_documents(rendered)) >= 1
    validate_all(every_object(rendered))


@pytest.mark.parametrize("case", list(MATRIX))
def test_values_matrix_renders_and_validates(case: str) -> None:
    validate_all(every_object(rendered_case(case)))


def test_a_sweep_schedule_renders_and_validates(sweep_recipe: Path) -> None:
    rendered = render(sweep_recipe, cron="0 2 * * *")
    assert [obj["kind"] for obj in rendered.objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]
    validate_all(every_object(rendered))


def test_helm_lint_is_clean_bare_and_with_a_plan() -> None:
    engine, chart = helm.engine(), chart_path()
    assert engine.lint(chart, {}, namespace="ml") == []
    for case, (sets, cron) in MATRIX.items():
        values = helm.values_from_files([], [f"store.url={STORE}", *sets, *([f"schedule.cron={cron}"] if cron else [])])
        values["generated"] = generated_values(load_recipe(REPO / "recipes" / "tiny-demo.yml"))
        assert engine.lint(chart, values, namespace="ml") == [], case


@pytest.mark.parametrize("case", list(MATRIX))
def test_every_pod_runs_restricted_and_labelled(case: str) -> None:
    rendered = rendered_case(case)
    templates = [template for obj in every_object(rendered) for template in pod_templates(obj)]
    components = {template["metadata"]["labels"]["app.kubernetes.io/component"] for template in templates}
    assert components == {"driver", "stage"}
    for template in templates:
        labels = template["metadata"]["labels"]
        assert all(labels[name] for name in POD_LABELS)
        assert labels["app.kubernetes.io/part-of"] == "foundry" and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels
        pod = template["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0 and pod["securityContext"]["fsGroup"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            mounted = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "/tmp" in mounted
            volumes = {volume["name"]: volume for volume in pod["volumes"]}
            for name in mounted.values():
                if "emptyDir" in volumes[name]:
                    assert volumes[name]["emptyDir"]["sizeLimit"]
        stage = labels["app.kubernetes.io/component"] == "stage"
        assert pod["automountServiceAccountToken"] is (not stage)


def test_stage_pods_cache_and_scratch_on_writable_volumes() -> None:
    for job in stage_jobs(rendered_case("defaults")):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        for variable in ("HF_HOME", "FOUNDRY_CACHE", "FOUNDRY_SCRATCH", "TMPDIR", "HOME", "XDG_CACHE_HOME"):
            assert any(env[variable].startswith(mount) for mount in mounts - {"/etc/foundry/spec"}), variable
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["ephemeral-storage"] == requests["ephemeral-storage"]
        assert "nvidia.com/gpu" not in limits


def test_stage_jobs_fail_fast_on_bad_input_and_ignore_disruptions() -> None:
    for job in [obj for obj in every_object(rendered_case("defaults")) if obj["kind"] == "Job"]:
        spec = job["spec"]
        assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        rules = spec["podFailurePolicy"]["rules"]
        container = spec["template"]["spec"]["containers"][0]["name"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        assert {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": "In", "values": [2]}} in rules


def test_the_plan_contract() -> None:
    rendered = rendered_case("defaults")
    (plan,) = plan_documents(rendered)
    assert set(plan) == {"recipe", "recipe_hash", "store", "stages"}
    assert plan["recipe"] == "tiny-demo" and plan["store"] == STORE
    assert [stage["stage"] for stage in plan["stages"]] == ["merge", "quantize", "publish"]
    seen: list[str] = []
    for stage in plan["stages"]:
        assert set(stage) == {"stage", "key", "needs", "gate", "spec", "job"}
        assert stage["gate"] == {}  # tiny-demo does not evaluate
        spec = StageSpec.model_validate(stage["spec"])
        assert (spec.key, spec.stage, spec.store, spec.recipe) == (stage["key"], stage["stage"], STORE, "tiny-demo")
        assert set(stage["needs"]) <= set(seen) and stage["needs"] == [source.key for source in spec.inputs.values() if source.key]
        seen.append(stage["key"])
        template = stage["job"]["spec"]["template"]
        assert json.loads(template["metadata"]["annotations"]["foundry.dev/spec"]) == stage["spec"]
        (container,) = template["spec"]["containers"]
        assert container["command"] + container["args"] == ["foundry-stage", "/etc/foundry/spec/spec.json"]
        (spec_volume,) = [volume for volume in template["spec"]["volumes"] if volume["name"] == "spec"]
        assert spec_volume["downwardAPI"]["items"] == [{"path": "spec.json", "fieldRef": {"fieldPath": "metadata.annotations['foundry.dev/spec']"}}]
        labels = stage["job"]["metadata"]["labels"]
        assert (labels["foundry.dev/key"], labels["foundry.dev/stage"], labels["foundry.dev/recipe"]) == (stage["key"], stage["stage"], "tiny-demo")
    driver = rendered.objects[-1]
    (container,) = driver["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["/etc/foundry/plan/plan.json"]
    assert driver["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == rendered.objects[3]["metadata"]["name"] == driver["metadata"]["name"]


def test_job_names_are_dns_labels_within_63_characters_and_stable(tmp_path: Path) -> None:
    long = tmp_path / "long.yml"
    long.write_text((REPO / "recipes" / "tiny-demo.yml").read_text().replace("name: tiny-demo", "name: " + "A_very.Long-recipe_name" * 4))
    for recipe in (REPO / "recipes" / "tiny-demo.yml", long):
        first, second = render(recipe), render(recipe)
        names = [obj["metadata"]["name"] for obj in every_object(first)]
        assert names == [obj["metadata"]["name"] for obj in every_object(second)]
        for name in names:
            assert len(name) <= 63 and DNS_LABEL.match(name), name
        for plan in plan_documents(first):
            for stage in plan["stages"]:
                assert stage["key"] in stage["job"]["metadata"]["name"] and stage["job"]["metadata"]["name"].startswith("fdy-")
        assert all(len(value) <= 63 for obj in every_object(first) for value in obj["metadata"]["labels"].values())


def test_changed_values_give_new_job_names_for_the_same_keys() -> None:
    before = {stage["key"]: stage["job"]["metadata"]["name"] for stage in plan_documents(rendered_case("defaults"))[0]["stages"]}
    after = render(REPO / "recipes" / "tiny-demo.yml", ["pools.cpu.resources.memory=16Gi"])
    renamed = {stage["key"]: stage["job"]["metadata"]["name"] for stage in plan_documents(after)[0]["stages"]}
    assert set(renamed) == set(before) and all(renamed[key] != before[key] for key in before)
    assert after.objects[-1]["metadata"]["name"] != rendered_case("defaults").objects[-1]["metadata"]["name"]


def test_stages_are_placed_by_pool() -> None:
    gpu = {job["metadata"]["labels"]["foundry.dev/stage"]: job for job in stage_jobs(rendered_case("gpu-quantize"))}
    quantize = gpu["quantize"]["spec"]["template"]["spec"]
    assert quantize["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert quantize["containers"][0]["image"].endswith("foundry-gpu:0.1.0")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in quantize["tolerations"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in quantize["volumes"]
    assert gpu["quantize"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "tolerations" not in gpu["merge"]["spec"]["template"]["spec"]
    for job in stage_jobs(rendered_case("no-gpu-pool")):
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in container["resources"]["limits"] and "foundry-cpu" in container["image"]
    tolerated = stage_jobs(rendered_case("custom-tolerations"))[0]["spec"]["template"]["spec"]
    assert tolerated["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert tolerated["nodeSelector"] == {"node.kubernetes.io/pool": "batch"}


def test_a_recipes_resources_override_the_pool(sweep_recipe: Path) -> None:
    for plan in plan_documents(render(sweep_recipe)):
        jobs = {stage["stage"]: stage["job"]["spec"]["template"]["spec"] for stage in plan["stages"]}
        merge = jobs["merge"]["containers"][0]["resources"]
        assert merge["requests"] == {"cpu": "0.5", "memory": "8Gi", "ephemeral-storage": "10Gi"}
        assert {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}} in jobs["merge"]["volumes"]
        quantize = jobs["quantize"]["containers"][0]["resources"]
        assert quantize["limits"] == {"memory": "24Gi", "ephemeral-storage": "200Gi", "nvidia.com/gpu": "1"}


def test_a_gpu_request_without_a_gpu_pool_is_refused(sweep_recipe: Path) -> None:
    with pytest.raises(UserError) as caught:
        render(sweep_recipe, ["pools.gpu.enabled=false"])
    assert caught.value.lines() == ["recipe tiny-sweep: resources.quantize.gpu is 1 but pools.gpu.enabled is false; enable the gpu pool or remove the GPU request"]


def test_the_driver_role_is_minimal_and_bound_to_the_chosen_account() -> None:
    role = next(obj for obj in rendered_case("defaults").objects if obj["kind"] == "Role")
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]
    existing = rendered_case("existing-service-account")
    assert "ServiceAccount" not in [obj["kind"] for obj in existing.objects]
    binding = next(obj for obj in existing.objects if obj["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ml-runner", "namespace": "ml"}]
    assert existing.objects[-1]["spec"]["template"]["spec"]["serviceAccountName"] == "ml-runner"
    assert [obj["kind"] for obj in rendered_case("no-rbac").objects] == ["ConfigMap", "Job"]
    with pytest.raises(UserError, match="set serviceAccount.name"):
        render(REPO / "recipes" / "tiny-demo.yml", ["serviceAccount.create=false"])


def test_the_cron_job_runs_the_sweep_once_at_a_time(sweep_recipe: Path) -> None:
    rendered = render(sweep_recipe, ["schedule.startingDeadlineSeconds=600"], cron="0 2 * * *", time_zone="Europe/Paris")
    cron = rendered.objects[-1]
    assert cron["metadata"]["name"] == "fdy-tiny-sweep-cron" and len(cron["metadata"]["name"]) <= 52
    spec = cron["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"], spec["startingDeadlineSeconds"]) == ("0 2 * * *", "Europe/Paris", "Forbid", 600)
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    assert "helm.sh/chart" not in spec["jobTemplate"]["metadata"]["labels"]
    (container,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--sweep", "/etc/foundry/plan/plans.json"]
    config_map = rendered.objects[3]
    sweep = json.loads(config_map["data"]["plans.json"])
    assert set(sweep) == {"recipe", "recipe_hash", "store", "select", "plans"}
    assert [plan["point"] for plan in sweep["plans"]] == [{"parameters.t": 0.3}, {"parameters.t": 0.5}, {"parameters.t": 0.7}]
    merges = [plan["stages"][0]["spec"]["params"]["mergekit"]["parameters"]["t"] for plan in sweep["plans"]]
    assert merges == [0.3, 0.5, 0.7]


def test_credentials_only_by_secret_reference() -> None:
    rendered = rendered_case("secrets-and-pinning")
    containers = [container for obj in every_object(rendered) for template in pod_templates(obj) for container in template["spec"]["containers"]]
    for container in containers:
        env = {item["name"]: item for item in container["env"]}
        assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"}}}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
        stage = container["name"] == "stage"
        assert ("HF_TOKEN" in env) is stage
        if stage:
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    for obj in every_object(rendered):
        for template in pod_templates(obj):
            assert template["spec"]["imagePullSecrets"] == [{"name": "registry"}]
            assert template["metadata"]["annotations"]["example.com/team"] == "ml"
    stage = stage_jobs(rendered)[0]["spec"]["template"]["spec"]
    assert stage["containers"][0]["image"] == "ghcr.io/foundry-ml/foundry-cpu@sha256:" + "a" * 64
    assert stage["serviceAccountName"] == "stage-runner"
    assert stage["priorityClassName"] == "batch-low"
    for field in ("accessKeyId", "secretAccessKey", "token"):
        with pytest.raises(UserError, match="additional properties"):
            render(REPO / "recipes" / "tiny-demo.yml", [f"store.credentials.{field}=AKIAEXAMPLE"])


def test_the_images_agree_with_the_chart_and_the_pins() -> None:
    values = yaml.safe_load((chart_path() / "values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    stage_env = {item["name"]: item.get("value") for item in stage_jobs(rendered_case("defaults"))[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    torch_version = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())[1]
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (REPO / "images" / name).read_text()
        runtime = text.rsplit("\nFROM ", 1)[1]  # the last stage is the image; the others build it
        assert f"USER {uid}:{uid}" in runtime and f"--uid {uid}" in runtime, name
        assert runtime.rstrip().endswith('ENTRYPOINT ["foundry-stage"]') and "image-inputs" not in runtime, name  # no build CA or wheel in the image
        assert f"ARG TORCH_VERSION={torch_version}\n" in text and "p['dependencies'] + p['optional-dependencies']['jobs']" in text, name  # the pins, from pyproject
        for variable in ("HF_HOME", "FOUNDRY_CACHE", "FOUNDRY_SCRATCH", "HOME", "TMPDIR", "XDG_CACHE_HOME"):
            assert f"{variable}={stage_env[variable]}" in runtime, (name, variable)
        assert not re.search(r"^FROM \S+:latest", text, re.MULTILINE) and re.search(r"^ARG \w+_IMAGE=\S+:\d[\w.-]*$", text, re.MULTILINE), name
