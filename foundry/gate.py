"""Quality gates: `evaluate.gate` in a recipe stops the chain before quantize and publish.

A gate maps flat metric names to conditions (`{"arc_easy.acc_norm": ">= 0.45"}`). It is a
decision about the measurements, not a measurement: the evaluate stage only measures, and
the rules travel with the stages that wait on the evaluation (foundry/plan.py: quantize's and
publish's `gate`, never in a key but publish's). The local runner (foundry/runner.py) and the
cluster driver (jobs/driver.py) judge the committed evaluation's metrics through `blocking`
before they start such a stage, so a model that misses never reaches quantize or publish,
whichever of them runs it, and a changed threshold is judged again without measuring again.
Light: the submitter's imports only.
"""

import operator
from collections.abc import Callable, Iterable
from typing import Any

from foundry.errors import UserError
from foundry.metrics import flat_metrics, metric_value
from foundry.recipe.schema import GATE_CONDITION
from foundry.store import Store

# `foundry run` exits with this when a gate stopped it: not a crash (1), not bad input (2).
GATED_EXIT_CODE = 3
EVALUATE_PREFIX = "evaluate-"

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}


def parse_condition(condition: str, where: str) -> tuple[str, float]:
    """The operator and threshold of `">= 0.45"`, with the recipe schema's own rule."""
    match = GATE_CONDITION.match(str(condition).strip())
    if match is None:
        raise UserError(f"{where}: {condition!r} is not a condition; write it like \">= 0.45\"")
    return match[1], float(match[2])


def judge(metrics: dict[str, float], gate: dict[str, str], where: str) -> dict[str, Any]:
    """The verdict on an evaluation's metrics: every check with its value, and whether all held.
    A metric the evaluation did not produce is a UserError naming the close ones."""
    checks = []
    for name, condition in gate.items():
        symbol, threshold = parse_condition(condition, f"{where}: gate {name}")
        value = metric_value(metrics, name, f"{where}: gate")
        checks.append({"metric": name, "value": value, "condition": f"{symbol} {condition.strip()[len(symbol):].strip()}", "passed": _OPERATORS[symbol](value, threshold)})
    return {"passed": all(check["passed"] for check in checks), "checks": checks}


def failure_line(verdict: dict[str, Any]) -> str:
    """What missed, e.g. `arc_easy.acc_norm = 0.3125, needs >= 0.45`."""
    missed = [check for check in verdict.get("checks", []) if not check.get("passed")]
    return "; ".join(f"{check['metric']} = {_number(check['value'])}, needs {check['condition']}" for check in missed)


def blocking(store: Store, recipe: str, keys: Iterable[str], rules: dict[str, str]) -> str | None:
    """Why a stage planned after the evaluations `keys` must not run: the first committed one
    whose metrics miss `rules`, as one line naming the metric, its value and the threshold;
    None when every committed evaluation passes (or there are no rules). A metric an
    evaluation did not produce is a UserError naming it."""
    if not rules:
        return None
    for key in keys:
        if not key.startswith(EVALUATE_PREFIX):
            continue
        marker = store.marker(recipe, key)
        if marker is None:
            continue
        verdict = judge(flat_metrics(marker, f"{store.url}/{recipe}/{key}"), rules, f"recipe {recipe}, evaluation {key}")
        if not verdict["passed"]:
            return f"gate failed in {key}: {failure_line(verdict)}"
    return None


def _number(value: Any) -> str:
    return "missing" if value is None else f"{float(value):.4g}"
