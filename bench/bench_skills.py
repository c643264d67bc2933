"""The skills testbed: how long each `tiny:skills-*` model takes to build, and what merging them keeps.

Builds the base and both specialists from nothing into a fresh cache (the goal: each under a
minute on this CPU; the load average is printed too, since other work on the machine slows
single-threaded training), then scores the base, each specialist and both merge recipes
(recipes/tiny-skills-*.yml, through `foundry run --until evaluate`) on both skills.
"""

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.report import write

REPO = Path(__file__).resolve().parent.parent
MODELS = ("skills-base", "skills-arith", "skills-reverse")
RECIPES = ("tiny-skills-task-arithmetic", "tiny-skills-ties")
SUITES = [{"jsonl": str(REPO / "recipes" / "data" / f"{skill}.jsonl")} for skill in ("arith", "reverse")]
GOAL_S = 60.0


def main() -> None:
    from foundry.metrics import read_metrics
    from foundry.plan import plan
    from foundry.recipe.load import load_recipe
    from jobs.evaluation import evaluate_folder
    from jobs.tiny.models import build

    with tempfile.TemporaryDirectory(prefix="foundry-bench-skills-") as folder, _cache(Path(folder) / "cache"):
        work = Path(folder)
        build_rows, score_rows = [], []
        for name in MODELS:
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            built = build(name)
            seconds = time.perf_counter() - started
            build_rows.append({"model": f"tiny:{name}", "build_s": seconds, "load_before": load_before, "load_after": os.getloadavg()[0], "meets_goal": seconds < GOAL_S})
            score_rows.append(_scores(f"tiny:{name}", evaluate_folder(built, SUITES)["metrics"]))
        for recipe in RECIPES:
            path = REPO / "recipes" / f"{recipe}.yml"
            command = [sys.executable, "-m", "foundry", "run", str(path), "--until", "evaluate", "--store", str(work / "store"), "--runs-dir", str(work / "runs")]
            run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"{recipe} failed:\n{run.stderr[-2000:]}")
            key = plan(load_recipe(path)).stage("evaluate").key
            score_rows.append(_scores(recipe, read_metrics(work / "store" / recipe / key)))
    write("bench_skills_build", build_rows)
    write("bench_skills_scores", score_rows)


@contextmanager
def _cache(folder: Path) -> Iterator[None]:
    """Build from nothing: every tiny model, here and in the stages run below, goes to `folder`."""
    before = os.environ.get("FOUNDRY_CACHE")
    os.environ["FOUNDRY_CACHE"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["FOUNDRY_CACHE"]
        else:
            os.environ["FOUNDRY_CACHE"] = before


def _scores(model: str, metrics: dict[str, float]) -> dict[str, object]:
    return {"model": model, "arith.exact_match": metrics["arith.exact_match"], "reverse.exact_match": metrics["reverse.exact_match"]}


if __name__ == "__main__":
    main()
