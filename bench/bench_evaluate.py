"""Multiple-choice scoring: the evaluate stage against lm-evaluation-harness, same model, same suite.

The suite is a local JSONL of ITEMS synthetic questions with four choices each (queries of
5 to 60 words, choices of 1 to 8), which lm-eval reads through a task YAML of its own
(`dataset_path: json`, `doc_to_text: "{{query}}"`, `doc_to_choice: "{{choices}}"`,
`doc_to_target: "{{gold}}"`); Foundry reads it as a suite. Two models, each a folder:
`tiny:llama-a` (as the tests use it) and a randomly initialised ~22M-parameter Llama (the
finetune benchmark's), where the forward passes cost more than the bookkeeping. Both sides
use float32, batch BATCH, THREADS CPU thread(s), the same torch, transformers and
tokenizers, offline; each run is a fresh process that loads the model first and is timed
from the suite file to the metrics (end to end) and over the log-likelihood scoring alone
(lm-eval's `loglikelihood` call; Foundry's `score`, tokenization included in both). Runs
alternate, REPS times each; the medians are reported, with whether the per-item acc and
acc_norm are identical and the largest log-likelihood difference.

lm-eval is installed for this benchmark only, pinned, in its own virtual environment
(.foundry/bench/lm-eval-venv) that sees the project's packages through a .pth file, so its
torch and transformers are the project's and nothing in .venv changes. Set LM_EVAL_PYTHON
to an interpreter that can import lm_eval to use another one.
"""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import write

REPO = Path(__file__).resolve().parent.parent
LM_EVAL = "lm-eval==0.4.13"
VENV = REPO / ".foundry" / "bench" / "lm-eval-venv"
ITEMS = 400
CHOICES = 4
BATCH = 32
REPS = 3
# The same for both sides: one CPU thread each unless OMP_NUM_THREADS says otherwise (the
# fastest for small models, and steady on a shared machine).
THREADS = os.environ.get("OMP_NUM_THREADS", "1")
TASK = "foundry_bench_mc"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {suite}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def main() -> None:
    from bench.bench_finetune import WORDS, make_model
    from jobs.sources.resolve import materialize

    python = lm_eval_python()
    work = Path(tempfile.mkdtemp(prefix="foundry-bench-evaluate-"))
    try:
        suite = write_suite(work / "suite.jsonl", WORDS)
        (work / "tasks").mkdir()
        (work / "tasks" / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, suite=suite))
        models = {"tiny:llama-a": materialize("tiny:llama-a"), "llama-22M (random)": make_model(work / "llama-22m")}
        rows = [compare(label, folder, suite, work, python) for label, folder in models.items()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write("bench_evaluate", rows)


def lm_eval_python() -> str | None:
    """An interpreter that imports lm_eval: $LM_EVAL_PYTHON, else the benchmark's own venv,
    made on first use; None (with how to install it) when that cannot be done."""
    chosen = os.environ.get("LM_EVAL_PYTHON") or str(VENV / "bin" / "python")
    if Path(chosen).exists() and subprocess.run([chosen, "-c", "import lm_eval"], capture_output=True).returncode == 0:
        return chosen
    if os.environ.get("LM_EVAL_PYTHON"):
        print(f"bench_evaluate: $LM_EVAL_PYTHON ({chosen}) cannot import lm_eval; pip install '{LM_EVAL}' there", file=sys.stderr)
        return None
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    site = subprocess.run([str(VENV / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    # The project's packages (torch, transformers, datasets) are seen, not reinstalled.
    Path(site, "foundry-project.pth").write_text(subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout)
    installed = subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", LM_EVAL], capture_output=True, text=True)
    if installed.returncode != 0:
        print(f"bench_evaluate: could not install {LM_EVAL} into {VENV} ({installed.stderr.strip().splitlines()[-1:]}); "
              f"install it there (or set LM_EVAL_PYTHON) to compare with lm-evaluation-harness", file=sys.stderr)
        return None
    return str(VENV / "bin" / "python")


def write_suite(path: Path, words: list[str]) -> Path:
    rng = random.Random(0)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    with open(path, "w") as handle:
        for _ in range(ITEMS):
            query = f"Question: {text(5, 60)}?\nAnswer:"
            handle.write(json.dumps({"query": query, "choices": [text(1, 8) for _ in range(CHOICES)], "gold": rng.randrange(CHOICES)}) + "\n")
    return path


def compare(label: str, folder: Path, suite: Path, work: Path, python: str | None) -> dict[str, Any]:
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    side = f"from bench.bench_evaluate import foundry_side; foundry_side({str(folder)!r}, {str(suite)!r}, {BATCH}, {str(work / 'ours.json')!r})"
    for _ in range(REPS):
        ours.append(_run([sys.executable, "-c", side], work / "ours.json"))
        if python is not None:
            theirs.append(_run([python, str(REPO / "bench" / "lm_eval_side.py"), str(folder), str(work / "tasks"), TASK, str(BATCH), str(work / "theirs.json")], work / "theirs.json"))
    row: dict[str, Any] = {"model": label, "items": ITEMS, "requests": ITEMS * CHOICES, "batch": BATCH}
    row["foundry_s"] = statistics.median(run["seconds"] for run in ours)
    row["foundry_scoring_s"] = statistics.median(run["scoring_seconds"] for run in ours)
    row["acc_norm"] = ours[0]["metrics"]["acc_norm"]
    if theirs:
        row["lm_eval_s"] = statistics.median(run["seconds"] for run in theirs)
        row["lm_eval_scoring_s"] = statistics.median(run["scoring_seconds"] for run in theirs)
        row["speedup"] = row["lm_eval_s"] / row["foundry_s"]
        row["scoring_speedup"] = row["lm_eval_scoring_s"] / row["foundry_scoring_s"]
        pairs = list(zip(ours[0]["items"], theirs[0]["items"], strict=True))
        row["identical"] = all(a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"] for a, b in pairs) and ours[0]["metrics"] == theirs[0]["metrics"]
        row["max_ll_diff"] = f"{max(abs(x - y) for a, b in pairs for x, y in zip(a['loglikelihoods'], b['loglikelihoods'], strict=True)):.1e}"
    row["requests_per_s"] = row["requests"] / row["foundry_scoring_s"]
    return row


def _run(command: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads(out.read_text())


def foundry_side(folder: str, suite: str, batch_size: int, out: str) -> None:
    """Foundry's side, in a fresh process: the model loaded first, then the suite file to metrics."""
    from jobs.evaluation import multiple_choice
    from jobs.evaluation.backends import open_backend
    from jobs.evaluation.suites import load_suite

    backend = open_backend(Path(folder))
    started = time.perf_counter()
    items = load_suite(suite).items
    scoring = time.perf_counter()
    metrics, results = multiple_choice.score(backend.scorer, items, batch_size=batch_size)
    done = time.perf_counter()
    Path(out).write_text(json.dumps({
        "seconds": done - started, "scoring_seconds": done - scoring, "metrics": metrics,
        "items": [{"loglikelihoods": r["loglikelihoods"], "acc": r["acc"], "acc_norm": r["acc_norm"]} for r in results],
    }))


if __name__ == "__main__":
    main()
