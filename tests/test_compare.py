"""`foundry compare`: inputs of every kind resolved to their metrics, the winner per metric
(higher or lower is better, ties, unknown directions), deltas against the first input, and
the JSON, Markdown and PNG it writes. The evaluate keys are committed through the store's
own API, and the run records written with the runner's and the driver's own types."""

import hashlib
import json
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from foundry import runstatus
from foundry.compare import compare, direction
from foundry.errors import UserError
from foundry.runner import StageResult
from foundry.stagespec import StageSpec
from foundry.store import LocalStore, build_record
from tests.png_check import assert_png

REPO = Path(__file__).resolve().parent.parent
RECIPE = "tiny-cmp"
RUN_FOLDER = f"{RECIPE}-20250101-120000"
RUN_ID = "foundry-tiny-cmp-0a1b2"

BASE = {"arc_easy.acc": 0.40, "arc_easy.acc_norm": 0.50, "arith.exact_match": 0.20, "arith.mean_latency_s": 0.30, "arith.tokens_per_answer": 5.0}
MERGED = {"arc_easy.acc": 0.55, "arc_easy.acc_norm": 0.50, "arith.exact_match": 0.35, "arith.mean_latency_s": 0.25, "arith.tokens_per_answer": 6.0}
TUNED = {"arc_easy.acc": 0.45, "arc_easy.acc_norm": 0.48, "arith.exact_match": 0.35, "arith.mean_latency_s": 0.20}
CLUSTER = {"arc_easy.acc": 0.30, "arc_easy.acc_norm": 0.30, "arith.exact_match": 0.10, "arith.mean_latency_s": 0.90}


def metrics_document(metrics: dict[str, float]) -> dict[str, Any]:
    """A metrics.json as the evaluate stage writes it (the contract's shape)."""
    return {"model": {"source": "tiny:llama-a", "backend": "torch", "variant": None}, "metrics": metrics,
            "suites": {"arc_easy": {"kind": "multiple_choice", "source": "test", "n": 20, "metrics": {}, "items": []}}}


def commit_key(store: LocalStore, metrics: dict[str, float], *, stage: str = "evaluate") -> str:
    key = f"{stage}-" + hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()[:12]
    staging = store.new_staging(RECIPE, key)
    if stage == "evaluate":
        (staging / "metrics.json").write_text(json.dumps(metrics_document(metrics)))
    else:
        (staging / "model.safetensors").write_bytes(b"weights")
    record = build_record(staging, key=key, stage=stage, recipe=RECIPE, started=time.time(), extra={"result": {"metrics": metrics} if stage == "evaluate" else {}})
    store.commit(RECIPE, key, staging, record)
    return key


def write_run_folder(runs: Path, name: str, store: LocalStore, stages: list[tuple[str, str]]) -> Path:
    """What `foundry run` leaves: a stage spec per stage it ran, and summary.json."""
    folder = runs / name
    folder.mkdir(parents=True)
    for stage, key in stages:
        StageSpec(stage=stage, recipe=RECIPE, key=key, store=store.url).write(folder / f"{stage}.spec.json")  # type: ignore[arg-type]
    (folder / "summary.json").write_text(json.dumps([asdict(StageResult(stage, key, "ran", 1.0, 10, str(folder / f"{stage}.log"))) for stage, key in stages]))
    return folder


def save_cluster_run(store: LocalStore, run: str, stages: list[tuple[str, str]]) -> None:
    """What the in-cluster driver leaves in the store."""
    now = runstatus.now()
    runstatus.save(store, runstatus.RunStatus(
        run=run, recipe=RECIPE, recipe_hash="0123abcd", namespace="default", store=store.url, state="succeeded", started=now, updated=now,
        stages=[runstatus.StageStatus(stage=stage, key=key, job=f"{run}-{stage}", state="succeeded") for stage, key in stages],
    ))


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A metrics file, an evaluate key folder, a local run folder and a cluster run, each with its own metrics."""
    store = LocalStore(tmp_path / "store")
    base = tmp_path / "base.json"
    base.write_text(json.dumps(metrics_document(BASE)))
    merged_key = commit_key(store, MERGED)
    merge_key = commit_key(store, {"weights": 1.0}, stage="merge")
    tuned_key = commit_key(store, TUNED)
    cluster_key = commit_key(store, CLUSTER)
    runs = tmp_path / ".foundry" / "runs"
    run_folder = write_run_folder(runs, RUN_FOLDER, store, [("merge", merge_key), ("evaluate", tuned_key)])
    save_cluster_run(store, RUN_ID, [("merge", merge_key), ("evaluate", cluster_key)])
    return {"tmp": tmp_path, "store": store, "base": base, "merged_key": merged_key, "merge_key": merge_key, "cluster_key": cluster_key,
            "key_folder": tmp_path / "store" / RECIPE / merged_key, "runs": runs, "run_folder": run_folder}


def foundry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter, which then reports any heavy module it imported."""
    code = textwrap.dedent(f"""\
        import sys
        sys.argv = ["foundry", *{list(args)!r}]
        from foundry.cli import main
        try:
            main()
        finally:
            print("heavy:", sorted(name for name in ("torch", "transformers", "onnxruntime", "mergekit") if name in sys.modules), file=sys.stderr)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def real_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An evaluate key the evaluate stage itself committed (tiny:llama-a, a 3-item JSONL suite)."""
    from foundry.stagespec import StageInput
    from jobs.entry import run_stage

    root = tmp_path_factory.mktemp("real")
    suite = root / "facts.jsonl"
    suite.write_text("".join(json.dumps(row) + "\n" for row in (
        {"query": "The capital of France is", "choices": ["Paris", "London", "the sea"], "gold": 0},
        {"query": "1, 1, 2, 3, 5,", "choices": ["8", "7"], "gold": 0},
        {"query": "The quick brown fox jumps over the lazy", "choices": ["dog", "cat"], "gold": 0},
    )))
    store = LocalStore(root / "store")
    spec = StageSpec(stage="evaluate", recipe=RECIPE, key="evaluate-0123456789ab", store=store.url, inputs={"model": StageInput(model="tiny:llama-a")},
                     params={"suites": [{"jsonl": str(suite)}], "limit": None})
    run_stage(spec)
    return root / "store", spec.key


# --- winners and deltas ----------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "expected"), [
    ("arc_easy.acc", "higher"), ("hellaswag.acc_norm", "higher"), ("arith.exact_match", "higher"), ("arith.success_rate", "higher"),
    ("speed.tokens_per_second", "higher"), ("arith.mean_latency_s", "lower"), ("load_seconds", "lower"), ("size_bytes", "lower"),
    ("val_loss", "lower"), ("arith.tokens_per_answer", None), ("arc_easy.n", None),
])
def test_direction_from_the_metric_name(metric: str, expected: str | None) -> None:
    assert direction(metric) == expected


def test_winner_per_metric_with_lower_is_better_ties_and_deltas(world: dict[str, Any]) -> None:
    comparison = compare([str(world["base"]), str(world["key_folder"]), str(world["run_folder"])], runs_dir=world["runs"])
    labels = comparison.labels
    assert labels == ["base", f"{RECIPE}/{world['merged_key']}", RUN_FOLDER]
    rows = {row.name: row for row in comparison.rows}
    assert list(rows) == sorted(BASE)
    assert [labels[i] for i in rows["arc_easy.acc"].winners] == [labels[1]] and rows["arc_easy.acc"].outcome == "winner"
    assert [labels[i] for i in rows["arith.mean_latency_s"].winners] == [RUN_FOLDER]            # lower is better
    assert rows["arc_easy.acc_norm"].outcome == "tie" and rows["arc_easy.acc_norm"].winners == [0, 1]
    assert rows["arith.exact_match"].outcome == "tie" and rows["arith.exact_match"].winners == [1, 2]
    unknown = rows["arith.tokens_per_answer"]
    assert unknown.direction is None and unknown.winners == [] and unknown.outcome == "no known direction"
    assert unknown.values == [5.0, 6.0, None] and unknown.deltas == [0.0, 1.0, None]
    assert rows["arc_easy.acc"].deltas == [0.0, 0.15, 0.05]
    assert rows["arith.mean_latency_s"].deltas == [0.0, -0.05, -0.1]
    assert comparison.wins() == {"base": 0, labels[1]: 1, RUN_FOLDER: 1}


def test_a_key_the_evaluate_stage_committed_reads_the_same_from_its_folder_and_its_marker(real_key: tuple[Path, str]) -> None:
    store, key = real_key
    comparison = compare([str(store / RECIPE / key), f"{RECIPE}/{key}", str(store / RECIPE / key / "metrics.json")], store_flag=str(store))
    assert [item.kind for item in comparison.inputs] == ["key folder", "store key", "metrics file"]
    assert comparison.labels == [f"{RECIPE}/{key}", f"{RECIPE}/{key} (2)", f"{RECIPE}/{key} (3)"]
    assert [row.name for row in comparison.rows] == ["facts.acc", "facts.acc_norm"]
    for row in comparison.rows:
        assert row.values[0] is not None and 0.0 <= row.values[0] <= 1.0
        assert row.values == [row.values[0]] * 3 and row.outcome == "tie" and row.deltas == [0.0, 0.0, 0.0]


def test_a_metric_only_one_input_has_gets_no_winner(tmp_path: Path) -> None:
    for name, metrics in {"a": {"x.acc": 0.5, "x.seconds": 1.0}, "b": {"x.acc": 0.7}}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"metrics": metrics}))
    rows = {row.name: row for row in compare([str(tmp_path / "a.json"), str(tmp_path / "b.json")]).rows}
    assert rows["x.acc"].winners == [1]
    assert rows["x.seconds"].winners == [] and rows["x.seconds"].outcome == "fewer than two values"


def test_metric_filter_and_repeated_inputs(world: dict[str, Any]) -> None:
    base = str(world["base"])
    comparison = compare([base, base, str(world["key_folder"])], metrics=["arith.*", "arc_easy.acc"])
    assert comparison.labels == ["base", "base (2)", f"{RECIPE}/{world['merged_key']}"]
    assert [row.name for row in comparison.rows] == ["arith.exact_match", "arith.mean_latency_s", "arith.tokens_per_answer", "arc_easy.acc"]
    with pytest.raises(UserError, match=r"--metric arc_easy.accnorm: no metric 'arc_easy.accnorm'; did you mean arc_easy.acc_norm"):
        compare([base, base], metrics=["arc_easy.accnorm"])


# --- the command -------------------------------------------------------------------------------

def test_cli_compares_every_kind_of_input_and_writes_json_markdown_and_png(world: dict[str, Any]) -> None:
    out = world["tmp"] / "report"
    result = foundry("compare", str(world["base"]), str(world["key_folder"]), RUN_FOLDER, f"{RECIPE}/{world['cluster_key']}", RUN_ID,
                     "--store", str(world["tmp"] / "store"), "--out", str(out), cwd=world["tmp"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "heavy: []"
    report = json.loads((out / "compare.json").read_text())
    labels = ["base", f"{RECIPE}/{world['merged_key']}", RUN_FOLDER, f"{RECIPE}/{world['cluster_key']}", RUN_ID]
    assert [item["label"] for item in report["inputs"]] == labels and report["baseline"] == "base"
    assert [item["kind"] for item in report["inputs"]] == ["metrics file", "key folder", "run folder", "store key", "run"]
    assert report["inputs"][4]["source"] == f"{RECIPE}/{world['cluster_key']}"
    metrics = {row["name"]: row for row in report["metrics"]}
    assert metrics["arc_easy.acc"]["winners"] == [labels[1]] and metrics["arc_easy.acc"]["values"][RUN_ID] == CLUSTER["arc_easy.acc"]
    assert metrics["arith.mean_latency_s"]["winners"] == [RUN_FOLDER] and metrics["arith.mean_latency_s"]["deltas"][RUN_ID] == pytest.approx(0.6)
    assert metrics["arc_easy.acc_norm"]["outcome"] == "tie" and metrics["arc_easy.acc_norm"]["winners"] == labels[:2]
    assert metrics["arith.tokens_per_answer"]["outcome"] == "no known direction" and metrics["arith.tokens_per_answer"]["direction"] is None
    markdown = (out / "compare.md").read_text()
    assert f"| arc_easy.acc ↑ | 0.4 | 0.55 (+0.15) | 0.45 (+0.05) | 0.3 (-0.1) | 0.3 (-0.1) | {labels[1]} |" in markdown
    assert "| arc_easy.acc_norm ↑ |" in markdown and f"tie: base, {labels[1]} |" in markdown
    assert "No winner is named for arith.tokens_per_answer" in markdown
    assert "arith.mean_latency_s ↓" in result.stdout
    assert_png(out / "compare.png")
    assert not list(out.glob(".*")), "no temporary left behind"


def test_help_does_not_import_matplotlib() -> None:
    code = "import sys\nsys.argv = ['foundry', '--help']\nfrom foundry.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\nprint('matplotlib' in sys.modules, file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "compare" in result.stdout and "bench-variants" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "False"


# --- bad inputs: one line that names the input -------------------------------------------------

def test_bad_inputs_are_named(world: dict[str, Any]) -> None:
    tmp, store, base = world["tmp"], world["store"], str(world["base"])

    def refused(*inputs: str) -> str:
        with pytest.raises(UserError) as caught:
            compare([base, *inputs], store_flag=str(tmp / "store"), runs_dir=world["runs"])
        assert len(caught.value.lines()) == 1
        return str(caught.value)

    assert refused(str(tmp / "missing.json")).startswith(f"{tmp / 'missing.json'}: no such file")
    (tmp / "broken.json").write_text('{"metrics": {"arc_easy.acc": 0.5,')
    assert refused(str(tmp / "broken.json")).startswith(f"{tmp / 'broken.json'}: not valid JSON")
    (tmp / "words.json").write_text(json.dumps({"metrics": {"arc_easy.acc": "high"}}))
    assert refused(str(tmp / "words.json")) == f"{tmp / 'words.json'}: metric 'arc_easy.acc' is 'high', not a number"
    no_evaluate = write_run_folder(world["runs"], f"{RECIPE}-20250102-080000", store, [("merge", world["merge_key"])])
    assert refused(str(no_evaluate)) == f"{no_evaluate}: this run has no evaluate stage, so no metrics; add `evaluate:` to its recipe and run it again"
    save_cluster_run(store, "foundry-no-eval", [("merge", world["merge_key"])])
    assert refused("foundry-no-eval").startswith(f"foundry-no-eval: run of recipe {RECIPE} has no evaluate stage")
    assert refused(f"{RECIPE}/{world['merge_key']}").startswith(f"{RECIPE}/{world['merge_key']}: a merge key, not an evaluate key")
    assert refused(f"{RECIPE}/evaluate-000000000000").startswith(f"{RECIPE}/evaluate-000000000000: no such file or folder, no committed key")
    crashed = tmp / "store" / RECIPE / "evaluate-0123456789ab"
    crashed.mkdir()
    (crashed / "metrics.json").write_text(json.dumps(metrics_document(BASE)))
    assert refused(str(crashed)).startswith(f"{crashed}: an evaluate key without _SUCCESS.json")
    with pytest.raises(UserError, match="compare needs at least two inputs"):
        compare([base])


def test_cli_bad_input_is_one_line_and_exit_2(world: dict[str, Any]) -> None:
    result = foundry("compare", str(world["base"]), "nowhere.json", cwd=world["tmp"])
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "error: nowhere.json: no such file; give the path of an evaluate stage's metrics.json"
    assert not (world["tmp"] / "compare.json").exists()


# --- the charts sweeps use too -------------------------------------------------------------------

def test_line_chart_of_a_metric_against_a_swept_parameter(tmp_path: Path) -> None:
    from foundry.plots import line_chart

    points = [(0.5, 0.61), (0.3, 0.52), (0.7, 0.58), (0.4, None)]      # unsorted, one point without a value
    first = line_chart("parameters.t", "arc_easy.acc_norm", points, tmp_path / "sweep.png", best=0.5)
    again = line_chart("parameters.t", "arc_easy.acc_norm", points, tmp_path / "again.png", best=0.5)
    assert_png(first)
    assert first.read_bytes() == again.read_bytes()                      # no timestamp in the file
    series = {"density 0.5": [("a", 0.4), ("b", 0.6)], "density 0.9": [("a", 0.5), ("b", 0.45)]}
    assert_png(line_chart("model", "arith.exact_match", series, tmp_path / "series.png", title="TIES"))
    with pytest.raises(ValueError):
        line_chart("x", "y", [], tmp_path / "empty.png")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["again.png", "series.png", "sweep.png"]
