"""Quality gates: conditions judged on flat metrics, and a missed gate stopping quantize and
publish under `foundry run` (real stages, a tiny model) and under the cluster driver; the
evaluation only measures, so a new threshold is judged on its cached metrics."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_fake import RUN, FakeApiServer

from foundry import gate, runstatus
from foundry.errors import UserError
from foundry.gate import GATED_EXIT_CODE
from foundry.k8s.cluster import connect
from foundry.k8s.runs import RunPlan
from foundry.metrics import metric_value, read_metrics
from foundry.store import Store, build_record, open_store
from jobs.driver import Driver

SUITE = [
    {"query": "Question: What colour is the sky?\nAnswer:", "choices": ["blue", "green", "red"], "gold": 0},
    {"query": "The cat sat on the", "choices": ["mat", "moon", "idea"], "gold": 0},
    {"query": "1 + 1 =", "choices": ["2", "3", "eleven"], "gold": 0},
    {"query": "Paris is the capital of ", "choices": ["France", "Spain"], "gold": 0},
]
RECIPE = """
name: {name}
models: [{{model: tiny:llama-a}}]
evaluate:
  suites: [{{jsonl: mc.jsonl}}]
  gate: {{mc.acc_norm: "{condition}"}}
quantize: {{variants: [q8]}}
publish: {{to: ./published}}
"""


def test_conditions_are_judged_with_every_operator() -> None:
    metrics = {"arc_easy.acc_norm": 0.5, "arith.exact_match": 0.25}
    for condition, passed in ((">= 0.5", True), ("> 0.5", False), ("<= 0.5", True), ("< 0.5", False), ("== 0.5", True), (">=0.51", False), ("> -1", True)):
        verdict = gate.judge(metrics, {"arc_easy.acc_norm": condition}, "r")
        assert verdict["passed"] is passed, condition
    verdict = gate.judge(metrics, {"arc_easy.acc_norm": ">= 0.45", "arith.exact_match": ">=0.3"}, "r")
    assert verdict == {"passed": False, "checks": [
        {"metric": "arc_easy.acc_norm", "value": 0.5, "condition": ">= 0.45", "passed": True},
        {"metric": "arith.exact_match", "value": 0.25, "condition": ">= 0.3", "passed": False},
    ]}
    assert gate.failure_line(verdict) == "arith.exact_match = 0.25, needs >= 0.3"
    with pytest.raises(UserError, match="'about 0.4' is not a condition"):
        gate.judge(metrics, {"arc_easy.acc_norm": "about 0.4"}, "r")
    with pytest.raises(UserError, match="no metric 'arc_easy.accnorm'; did you mean arc_easy.acc_norm"):
        gate.judge(metrics, {"arc_easy.accnorm": ">= 0.4"}, "r")


def test_metrics_are_read_from_a_file_a_folder_or_a_marker(tmp_path: Path) -> None:
    document = {"model": {}, "metrics": {"mc.acc": 0.5, "mc.acc_norm": 1}, "suites": {}}
    (tmp_path / "metrics.json").write_text(json.dumps(document))
    (tmp_path / "_SUCCESS.json").write_text(json.dumps({"key": "evaluate-1", "result": {"metrics": document["metrics"]}}))
    for source in (tmp_path, tmp_path / "metrics.json", tmp_path / "_SUCCESS.json"):
        assert read_metrics(source) == {"mc.acc": 0.5, "mc.acc_norm": 1.0}
    assert metric_value(read_metrics(tmp_path), "mc.acc", "x") == 0.5
    with pytest.raises(UserError, match="no metric 'mc.ac_norm'; did you mean mc.acc_norm"):
        metric_value(read_metrics(tmp_path), "mc.ac_norm", "x")
    with pytest.raises(UserError, match="no metrics.json here"):
        read_metrics(tmp_path / "elsewhere")
    (tmp_path / "bad.json").write_text(json.dumps({"metrics": {"mc.acc": "high"}}))
    with pytest.raises(UserError, match="metric 'mc.acc' is 'high', not a number"):
        read_metrics(tmp_path / "bad.json")


def foundry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """One folder (store, published folder, suite) where a recipe missed its gate, then a
    recipe evaluating the same model on the same suite passed it."""
    work = tmp_path_factory.mktemp("gate")
    (work / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in SUITE))
    (work / "fail.yml").write_text(RECIPE.format(name="gated", condition=">= 0.9"))
    (work / "pass.yml").write_text(RECIPE.format(name="passed", condition=">= 0.5"))
    return work, foundry("run", "fail.yml", cwd=work), foundry("run", "pass.yml", cwd=work)


def test_a_missed_gate_stops_before_quantize_and_publishes_nothing(runs) -> None:
    work, failed, _ = runs
    assert failed.returncode == GATED_EXIT_CODE, failed.stderr
    store = work / ".foundry" / "store" / "gated"
    [evaluate] = [path for path in store.iterdir() if path.name.startswith("evaluate-")]
    value = read_metrics(evaluate)["mc.acc_norm"]
    assert value < 0.9
    assert f"✗ gated: gate failed in {evaluate.name}: mc.acc_norm = {value:.4g}, needs >= 0.9" in failed.stderr
    assert "not run: quantize, publish" in failed.stderr
    assert not any(path.name.startswith(("quantize-", "publish-")) for path in store.iterdir())
    catalog = work / "published" / "models.json"
    assert not catalog.exists() or "gated" not in json.loads(catalog.read_text())
    assert not (work / "published" / "gated").exists()
    marker = json.loads((evaluate / "_SUCCESS.json").read_text())["result"]
    assert set(marker) == {"metrics", "suites"} and marker["metrics"] == read_metrics(evaluate)  # measurements only, no verdict


def test_a_passed_gate_publishes_with_the_metrics_in_the_catalogue(runs) -> None:
    work, _, passed = runs
    assert passed.returncode == 0, passed.stderr
    for stage in ("evaluate", "quantize", "publish"):
        assert f"✓ {stage} " in passed.stderr
    store = work / ".foundry" / "store" / "passed"
    [evaluate] = [path for path in store.iterdir() if path.name.startswith("evaluate-")]
    document = json.loads((evaluate / "metrics.json").read_text())
    assert "gate" not in document and document["metrics"]["mc.acc_norm"] >= 0.5
    assert document["suites"]["mc"]["n"] == len(SUITE) and len(document["suites"]["mc"]["items"]) == len(SUITE)
    entry = json.loads((work / "published" / "models.json").read_text())["passed"]
    assert entry["metrics"] == document["metrics"]
    assert json.loads((work / "published" / "passed" / "manifest.json").read_text())["metrics"] == document["metrics"]
    assert "gated" not in json.loads((work / "published" / "models.json").read_text())


def test_a_loosened_gate_is_judged_on_the_cached_evaluation(runs, tmp_path: Path) -> None:
    """The gate is no part of the evaluation's key: after a miss, a lower threshold re-runs
    nothing but the judgement, then quantizes and publishes. In a copy of the failed run's
    folder, the suite named by its first path, so the recipe differs in the gate alone."""
    work = tmp_path / "work"
    shutil.copytree(runs[0], work)
    [evaluate] = (work / ".foundry" / "store" / "gated").glob("evaluate-*")
    measured = (evaluate / "_SUCCESS.json").read_text()
    (work / "fail.yml").write_text(RECIPE.format(name="gated", condition=">= 0.5").replace("mc.jsonl", str(runs[0] / "mc.jsonl")))
    rerun = foundry("run", "fail.yml", cwd=work)
    assert rerun.returncode == 0, rerun.stderr
    assert f"• evaluate {evaluate.name} cached" in rerun.stderr and "▶ evaluate" not in rerun.stderr
    assert "✓ quantize " in rerun.stderr and "✓ publish " in rerun.stderr
    assert (evaluate / "_SUCCESS.json").read_text() == measured
    assert json.loads((work / "published" / "models.json").read_text())["gated"]["metrics"] == read_metrics(evaluate)


def test_plan_shows_the_gate_and_publish_refuses_a_gated_evaluation(runs, tmp_path: Path) -> None:
    work, _, _ = runs
    shown = foundry("plan", "fail.yml", cwd=work)
    assert shown.returncode == 0 and "gated: gate failed in evaluate-" in shown.stdout
    from jobs.stages.publish import _evaluation_metrics

    evaluate = next((work / ".foundry" / "store" / "gated").glob("evaluate-*"))
    with pytest.raises(UserError, match="publish: the evaluation missed its gate \\(mc.acc_norm = .*, needs >= 0.9\\)"):
        _evaluation_metrics(evaluate, {"mc.acc_norm": ">= 0.9"})
    assert _evaluation_metrics(evaluate, {"mc.acc_norm": ">= 0"}) == _evaluation_metrics(evaluate, {}) == read_metrics(evaluate)
    with pytest.raises(UserError, match="publish: gate: no metric 'mc.acc_nrm'; did you mean mc.acc_norm"):
        _evaluation_metrics(evaluate, {"mc.acc_nrm": ">= 0.1"})
    with pytest.raises(UserError, match="publish.gate: a gate needs an `evaluation` input"):
        _evaluation_metrics(None, {"mc.acc_norm": ">= 0.1"})


def commit_evaluation(store: Store, key: str, metrics: dict[str, float]) -> None:
    """What the evaluate stage leaves: its measurements, in metrics.json and its marker's result."""
    staging = store.new_staging("r", key)
    (staging / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    store.commit("r", key, staging, build_record(staging, key=key, stage="evaluate", recipe="r", started=0.0, extra={"result": {"metrics": metrics, "suites": {}}}))


def test_blocking_judges_the_committed_metrics_against_the_rules_it_is_given(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    commit_evaluation(store, "evaluate-1111aaaa", {"mc.acc_norm": 0.25})
    keys = ["merge-0000ffff", "evaluate-1111aaaa"]
    assert gate.blocking(store, "r", keys, {"mc.acc_norm": ">= 0.5"}) == "gate failed in evaluate-1111aaaa: mc.acc_norm = 0.25, needs >= 0.5"
    assert gate.blocking(store, "r", keys, {"mc.acc_norm": ">= 0.2"}) is None
    assert gate.blocking(store, "r", keys, {}) is None
    assert gate.blocking(store, "r", ["evaluate-2222bbbb"], {"mc.acc_norm": ">= 0.5"}) is None  # not measured yet: nothing to judge
    with pytest.raises(UserError, match="recipe r, evaluation evaluate-1111aaaa: gate: no metric 'mc.acc'; did you mean mc.acc_norm"):
        gate.blocking(store, "r", keys, {"mc.acc": ">= 0.5"})


def test_the_driver_marks_stages_after_a_missed_gate_gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(str(tmp_path / "store"))
    keys = {"evaluate": "evaluate-1111aaaa", "quantize": "quantize-2222bbbb", "publish": "publish-3333cccc"}
    needs = {"evaluate": [], "quantize": [keys["evaluate"]], "publish": [keys["quantize"], keys["evaluate"]]}
    rules = {"evaluate": {}, "quantize": {"mc.acc_norm": ">= 0.5"}, "publish": {"mc.acc_norm": ">= 0.5"}}
    plan = RunPlan.model_validate({"recipe": "r", "recipe_hash": "0" * 16, "store": store.url, "stages": [
        {"stage": stage, "key": key, "needs": needs[stage], "gate": rules[stage], "spec": {}, "job": {"metadata": {"name": f"fdy-r-{key}"}, "spec": {"template": {"spec": {"containers": []}}}}}
        for stage, key in keys.items()
    ]})
    commit_evaluation(store, keys["evaluate"], {"mc.acc_norm": 0.25})
    with FakeApiServer.running(tmp_path) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig))
        code = Driver(RUN, plan, connect(), store, watch_seconds=1).run()
        assert fake.job("fdy-r-quantize-2222bbbb") is None and fake.job("fdy-r-publish-3333cccc") is None
    assert code == 2
    status = runstatus.load(store, RUN)
    assert status is not None and status.state == "gated"
    line = f"gate failed in {keys['evaluate']}: mc.acc_norm = 0.25, needs >= 0.5"
    assert [(row.stage, row.state, row.reason) for row in status.stages] == [
        ("evaluate", "cached", None), ("quantize", "gated", line), ("publish", "gated", line),
    ]
