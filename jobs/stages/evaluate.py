"""The evaluate stage: score the merged or fine-tuned model on the recipe's suites.

Parameters (`spec.params`, from foundry/plan.py):
    suites             builtin names (arc_easy, arc_challenge, hellaswag) or {"jsonl": LOCATION, "sha256": ...}
    limit              items per suite (the first N), or null for all
    batch_size         windows per forward pass for multiple-choice suites
    max_new_tokens     the longest answer a generation suite waits for
    trust_remote_code  bool

Input `model`: a Hugging Face causal LM folder. Output: `metrics.json` (jobs/evaluation).
The marker's result repeats the flat metrics, which is what the runner and the driver judge
the recipe's gate on before quantize and publish (foundry/gate.py). The stage only measures:
the gate is not among its parameters, so tightening a threshold judges the committed
measurements again instead of measuring again.
"""

import json
from pathlib import Path
from typing import Any

from foundry.errors import UserError
from foundry.metrics import METRICS_FILE
from foundry.stagespec import StageSpec
from jobs.evaluation import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, evaluate_folder


def run(spec: StageSpec, inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    params = spec.params
    if "model" not in inputs:
        raise UserError(f"stage {spec.key}: evaluate needs a `model` input")
    suites = params.get("suites")
    if not isinstance(suites, list) or not suites:
        raise UserError(f"evaluate.suites: expected a non-empty list of suites, got {suites!r}")
    source = spec.inputs["model"].key or spec.inputs["model"].model
    document = evaluate_folder(
        Path(inputs["model"]), suites, limit=_positive(params, "limit", None),
        batch_size=_positive(params, "batch_size", DEFAULT_BATCH_SIZE), max_new_tokens=_positive(params, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
        trust_remote_code=params.get("trust_remote_code") is True, source=source,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(document, indent=2) + "\n")
    suites_run = {name: {"kind": report["kind"], "n": report["n"], "seconds": report["seconds"]} for name, report in document["suites"].items()}
    return {"metrics": document["metrics"], "suites": suites_run}


def _positive(params: dict[str, Any], name: str, default: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"evaluate.{name}: expected a positive integer, got {value!r}")
    return value
