"""`foundry render`: what submit would apply, byte for byte the same on every run, one file per
recipe for GitOps, one line and exit code 2 for values the chart refuses; sweeps expanded
into their points; the same bytes from the helm binary as from the embedded SDK."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from foundry import helm as foundry_helm
from foundry.errors import UserError
from foundry.k8s.runs import PLAN_KEY, read_plan
from foundry.recipe.load import load_recipe
from foundry.render import chart_path, render_recipe
from foundry.sweep.plan import expand

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny-demo.yml"
STORE = "store.url=s3://foundry-store/runs"

# A stand-in `helm` binary: parses exactly the arguments Foundry passes to the real one and
# answers in the real one's formats (`# Source:` documents, `Error:` lines, exit code 1).
FAKE_HELM = textwrap.dedent('''\
    #!{python}
    import json, sys
    import helm_python
    args = sys.argv[1:]
    values = json.load(open(args[args.index("--values") + 1]))
    namespace = args[args.index("--namespace") + 1]
    try:
        if args[0] == "template":
            chart = helm_python.Chart.load(args[2])
            for path, text in sorted(chart.render(values, name=args[1], namespace=namespace).items()):
                for document in text.split("\\n---\\n"):
                    if document.strip() and not path.endswith(".txt"):
                        print(f"---\\n# Source: {{path}}\\n{{document.strip()}}")
        elif args[0] == "lint" and "--strict" in args:
            report = helm_python.lint(args[1], values, strict=True, namespace=namespace)
            print(f"==> Linting {{args[1]}}")
            for m in report["messages"]:
                print(f"[{{['UNKNOWN', 'INFO', 'WARNING', 'ERROR'][m['severity']]}}] {{m['path']}}: {{m['error'].strip()}}")
            failed = any(m["severity"] >= 2 for m in report["messages"])
            print(f"\\n1 chart(s) linted, {{int(failed)}} chart(s) failed")
            sys.exit(1 if failed else 0)
    except helm_python.HelmError as error:
        print(f"Error: {{error}}", file=sys.stderr)
        sys.exit(1)
''')


def foundry(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def test_render_prints_what_submit_applies_and_the_same_bytes_twice() -> None:
    first, second = (foundry("render", str(TINY), "--set", STORE, "-n", "ml") for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    objects = list(yaml.safe_load_all(first.stdout))
    assert [obj["kind"] for obj in objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    assert {obj["metadata"]["namespace"] for obj in objects} == {"ml"}
    assert first.stdout.startswith("---\n# Source: foundry/templates/serviceaccount.yaml\n")
    assert "plan.json: |-\n" in first.stdout  # the plan reads as lines in a review diff
    assert "publish.to ./.foundry/published/models is a local path" in first.stderr


def test_render_a_folder_writes_one_stable_file_per_recipe(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    assert foundry("render", "recipes/", "--set", STORE, "-o", str(out)).returncode == 0
    files = sorted(path.name for path in out.iterdir())
    names = sorted(f"{load_recipe(path).name}.yaml" for path in (REPO / "recipes").glob("*.yml"))
    assert files == names
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert foundry("render", "recipes/", "--set", STORE, "-o", str(out)).returncode == 0
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    single = foundry("render", str(TINY), "--set", STORE)
    assert before["tiny-demo.yaml"].decode() == single.stdout


def test_values_files_then_sets_in_order(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text("store: {url: s3://first-bucket/x}\npools: {cpu: {resources: {memory: 4Gi}}}\n")
    second = tmp_path / "second.yaml"
    second.write_text("pools: {cpu: {resources: {cpu: '3'}}}\n")
    result = foundry("render", str(TINY), "-f", str(first), "-f", str(second), "--set", "pools.cpu.resources.memory=6Gi")
    assert result.returncode == 0, result.stderr
    assert "s3://first-bucket/x" in result.stdout
    assert '"memory": "6Gi"' in result.stdout and '"cpu": "3"' in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "pools.cpu.resources.memory=lots"], "error: values: pools.cpu.resources.memory: 'lots' is not valid; expected a size, like 512Mi or 50Gi"),
    (["--set", "pools.cpu.gpus=2"], "error: values: pools.cpu: additional properties 'gpus' not allowed"),
    (["--set", "store.url=http://bucket"], "error: values: store.url: 'http://bucket' is not valid; expected s3://BUCKET/PREFIX, where every stage reads and commits"),
    (["--set", "securityContext.runAsUser=0"], "error: values: securityContext.runAsUser: minimum: got 0, want 1"),
    ([], "error: store.url is required: the s3://BUCKET/PREFIX every stage reads from and commits to (--set store.url=s3://...)"),
    (["--set", STORE, "--time-zone", "UTC"], "error: --time-zone applies to a schedule; give --cron too"),
    (["--set", STORE, "--cron", "every night"], "error: values: schedule.cron: 'every night' is not valid; expected five-field cron or a macro like @daily; empty: a one-off run"),
    (["--set", STORE, "-f", "no-such-values.yaml"], "error: no-such-values.yaml: no such values file"),
])
def test_bad_values_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = foundry("render", str(TINY), *args, "-o", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == message
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in result.stderr and not out.exists()


def test_a_bad_recipe_in_a_folder_writes_nothing(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "good.yml").write_text(TINY.read_text())
    (recipes / "bad.yml").write_text("models: [{model: 'tiny:llama-a'}]\nmerge_method: nope\n")
    result = foundry("render", str(recipes), "--set", STORE, "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "merge_method" in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_recipes_of_one_name_cannot_share_a_file(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for stem in ("a", "b"):
        (recipes / f"{stem}.yml").write_text(TINY.read_text())
    result = foundry("render", str(recipes), "--set", STORE, "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: recipes named tiny-demo more than once; each needs its own name to get its own file"


def test_render_never_imports_torch() -> None:
    code = textwrap.dedent(f"""\
        import sys
        sys.argv = ["foundry", "render", {str(TINY)!r}, "--set", {STORE!r}]
        from foundry.cli import main
        try:
            main()
        except SystemExit:
            pass
        print(sorted(name for name in ("torch", "transformers", "mergekit", "onnxruntime") if name in sys.modules), file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_the_helm_binary_renders_and_lints_as_the_sdk_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helm = tmp_path / "helm"
    helm.write_text(FAKE_HELM.format(python=sys.executable))
    helm.chmod(0o755)
    with_binary = foundry("render", str(TINY), "--set", STORE, env={"FOUNDRY_HELM": str(helm)})
    with_sdk = foundry("render", str(TINY), "--set", STORE, env={"FOUNDRY_HELM": "sdk"})
    assert with_binary.returncode == 0, with_binary.stderr
    assert with_binary.stdout == with_sdk.stdout
    refused = foundry("render", str(TINY), "--set", STORE, "--set", "pools.cpu.gpus=2", env={"FOUNDRY_HELM": str(helm)})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == "error: values: pools.cpu: additional properties 'gpus' not allowed"
    monkeypatch.setenv("FOUNDRY_HELM", str(helm))
    engine = foundry_helm.engine()
    assert engine.lint(chart_path(), {"store": {"url": "s3://foundry-store/runs"}}, namespace="ml") == []
    assert engine.lint(chart_path(), {"store": {"url": "s3://foundry-store/runs"}, "pools": {"cpu": {"gpus": 2}}}, namespace="ml")[0].startswith("[ERROR] ")
    missing = foundry("render", str(TINY), "--set", STORE, env={"FOUNDRY_HELM": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "no such helm executable" in missing.stderr


def test_the_gate_travels_in_plan_json_with_the_stages_that_wait_on_the_evaluation(tmp_path: Path) -> None:
    """The driver reads the rules from plan.json; changing them moves publish's key (and Job) only."""
    stages = {}
    for threshold in ("0.45", "0.6"):
        path = tmp_path / f"gate-{threshold}.yml"
        path.write_text(TINY.read_text() + f"evaluate: {{suites: [{{jsonl: s3://eval-bucket/qa.jsonl}}], gate: {{qa.acc: '>= {threshold}'}}}}\n")
        (config_map,) = [obj for obj in render_recipe(path, sets=[STORE]).objects if obj["kind"] == "ConfigMap"]
        plan = read_plan(config_map["data"][PLAN_KEY], "plan.json")
        stages[threshold] = {planned.stage: planned for planned in plan.stages}
        rules = {"qa.acc": f">= {threshold}"}
        assert [(planned.stage, planned.gate) for planned in plan.stages] == [("merge", {}), ("evaluate", {}), ("quantize", rules), ("publish", rules)]
        assert stages[threshold]["publish"].spec["params"]["gate"] == rules and "gate" not in stages[threshold]["evaluate"].spec["params"]
    low, high = stages["0.45"], stages["0.6"]
    assert [low[name].job_name for name in ("merge", "evaluate", "quantize")] == [high[name].job_name for name in ("merge", "evaluate", "quantize")]
    assert low["publish"].key != high["publish"].key


def _recipe(tmp_path: Path, sweep: str) -> Path:
    """tiny-demo with a sweep; it publishes, so the sweep selects its best point by an evaluation (of a suite never read here)."""
    path = tmp_path / "swept.yml"
    path.write_text(TINY.read_text() + "evaluate: {suites: [{jsonl: s3://eval-bucket/qa.jsonl}]}\n" + sweep + "  select: {metric: qa.exact_match}\n")
    return path


def test_a_sweep_expands_to_the_grids_product_in_order(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path, "sweep:\n  grid: {parameters.t: [0.3, 0.6], models.1.parameters.t: [0.1, 0.2]}\n"))
    points = expand(recipe)
    assert [point.point for point in points] == [
        {"parameters.t": 0.3, "models.1.parameters.t": 0.1}, {"parameters.t": 0.3, "models.1.parameters.t": 0.2},
        {"parameters.t": 0.6, "models.1.parameters.t": 0.1}, {"parameters.t": 0.6, "models.1.parameters.t": 0.2},
    ]
    assert points[3].recipe.parameters == {"t": 0.6} and points[3].recipe.models[1] == {"model": "tiny:llama-b", "parameters": {"t": 0.2}}
    assert all(point.recipe.sweep is None and point.recipe.name == "tiny-demo" for point in points)
    assert expand(load_recipe(TINY))[0].point == {}


@pytest.mark.parametrize(("grid", "message"), [
    ("{parameters.t: [0.5, 1.5]}", "recipe tiny-demo: sweep point parameters.t=1.5: parameters.t: t must be in [0, 1], got 1.5"),
    ("{models.5.parameters.t: [0.5]}", "recipe tiny-demo: sweep.grid.models.5.parameters.t: models.5 is not an index of a list of 2"),
    ("{parameters.t.x: [1]}", "recipe tiny-demo: sweep.grid.parameters.t.x: parameters.t is a float, not a mapping or a list"),
    ("{dtype: [float8]}", "recipe tiny-demo: sweep point dtype='float8': dtype: Input should be 'float32', 'float16' or 'bfloat16'"),
])
def test_a_sweep_point_that_makes_no_sense_is_refused(grid: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        expand(load_recipe(_recipe(tmp_path, f"sweep:\n  grid: {grid}\n")))
    assert caught.value.lines() == [message]


def test_a_sweep_too_big_for_one_config_map_is_refused(tmp_path: Path) -> None:
    values = ", ".join(f"{index / 200:.3f}" for index in range(200))
    result = foundry("render", str(_recipe(tmp_path, f"sweep:\n  grid: {{parameters.t: [{values}]}}\n")), "--set", STORE)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: recipe tiny-demo: its plans take ")
    assert result.stderr.strip().endswith("KiB in their ConfigMap, over the 1024 KiB Kubernetes allows; split the sweep grid into smaller recipes")
