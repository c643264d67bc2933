"""The skills testbed: two specialists fine-tuned from one base, merged, keep both skills.

`tiny:skills-arith` adds ("47+8=" -> "55"), `tiny:skills-reverse` reverses letters
("reverse: bcdqx" -> "xqdcb"); both start from `tiny:skills-base`, which has neither skill.
The recipes merge them with task arithmetic and TIES, and their evaluate stage scores both
skills on held-out questions (recipes/data/arith.jsonl, reverse.jsonl: exact match, greedy).
The shape asserted is the TIES paper's: the merged model keeps each skill clearly better than
the specialist of the other skill has it.

Every threshold below was set under a measurement of these exact builds (they are
deterministic; bench/bench_skills.py prints the numbers as a table).
"""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.metrics import read_metrics
from foundry.plan import plan
from foundry.recipe.load import load_recipe
from foundry.tiny_catalog import BUILD_VERSION
from jobs.evaluation import evaluate_folder
from jobs.tiny.models import build

REPO = Path(__file__).resolve().parent.parent
SUITES = [{"jsonl": str(REPO / "recipes" / "data" / "arith.jsonl")}, {"jsonl": str(REPO / "recipes" / "data" / "reverse.jsonl")}]
ARITH, REVERSE = "arith.exact_match", "reverse.exact_match"

# Measured on these builds (exact match on 100 held-out questions each; sums, reversals),
# the same under transformers 4.57 + mergekit 0.1.4 and transformers 5.25 + mergekit 0.1.5:
#   tiny:skills-base                0.00, 0.00
#   tiny:skills-arith               0.99, 0.00
#   tiny:skills-reverse             0.00, 1.00
#   tiny-skills-task-arithmetic     0.30, 0.51
#   tiny-skills-ties (density 0.7)  0.20, 0.56
# The thresholds sit well under these, since another CPU's float rounding may move a few
# answers, and still fail a merge that loses either skill.
OWN_SKILL_FLOOR = 0.9  # each specialist at its own skill
OTHER_SKILL_CEILING = 0.05  # each specialist, and the base, at a skill it was not taught
MERGE_MARGIN = {"tiny-skills-task-arithmetic": 0.15, "tiny-skills-ties": 0.1}  # how far above the other specialist the merge keeps each skill


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
    return {name: evaluate_folder(build(name), SUITES)["metrics"] for name in ("skills-base", "skills-arith", "skills-reverse")}


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """Each recipe run through its evaluate stage in a fresh store, as a user runs it."""
    work = tmp_path_factory.mktemp("skills")
    results = {}
    for recipe in MERGE_MARGIN:
        path = REPO / "recipes" / f"{recipe}.yml"
        command = [sys.executable, "-m", "foundry", "run", str(path), "--until", "evaluate", "--store", str(work / "store"), "--runs-dir", str(work / "runs")]
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)  # the recipes name their suites relative to the repository
        assert run.returncode == 0, run.stderr[-3000:]
        key = plan(load_recipe(path)).stage("evaluate").key
        results[recipe] = read_metrics(work / "store" / recipe / key)
    return results


def test_each_specialist_has_its_skill_and_neither_the_base_nor_the_other_has_it(scores: dict[str, dict[str, float]]) -> None:
    assert scores["skills-arith"][ARITH] >= OWN_SKILL_FLOOR
    assert scores["skills-reverse"][REVERSE] >= OWN_SKILL_FLOOR
    assert scores["skills-arith"][REVERSE] <= OTHER_SKILL_CEILING
    assert scores["skills-reverse"][ARITH] <= OTHER_SKILL_CEILING
    assert scores["skills-base"][ARITH] <= OTHER_SKILL_CEILING
    assert scores["skills-base"][REVERSE] <= OTHER_SKILL_CEILING


@pytest.mark.parametrize("recipe", list(MERGE_MARGIN))
def test_the_merge_keeps_both_skills_better_than_either_specialist_keeps_the_other(
    recipe: str, scores: dict[str, dict[str, float]], merged: dict[str, dict[str, float]]
) -> None:
    metrics = merged[recipe]
    assert metrics[ARITH] >= scores["skills-reverse"][ARITH] + MERGE_MARGIN[recipe], metrics
    assert metrics[REVERSE] >= scores["skills-arith"][REVERSE] + MERGE_MARGIN[recipe], metrics


def test_a_specialist_builds_to_the_same_bytes_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The specialist's fine-tune is rebuilt from the cached base (the base is trained like every
    tiny model, whose byte-identical rebuild tests/test_tiny_models.py checks)."""
    cached = build("skills-reverse")
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path))
    base = f"skills-base-v{BUILD_VERSION}"
    shutil.copytree(cached.parent / base, tmp_path / "tiny" / base)
    again = build("skills-reverse")
    assert again != cached
    for file in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert _sha(again / file) == _sha(cached / file), file


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
