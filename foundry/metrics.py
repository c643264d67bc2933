"""Evaluation metrics read back: what the gate, a sweep's `select` and `foundry compare` read.

The evaluate stage writes `metrics.json` (jobs/stages/evaluate.py) with a flat `metrics` mapping,
`"<suite>.<metric>" -> float` (`arc_easy.acc_norm`, `arith.exact_match`), and puts the
same mapping in its marker's result, so a reader needs no more than the marker. Light:
stdlib only, so the submitter can read metrics without importing torch.
"""

import json
from pathlib import Path
from typing import Any

from foundry.errors import UserError

METRICS_FILE = "metrics.json"


def read_metrics(source: str | Path) -> dict[str, float]:
    """The flat metrics of a `metrics.json` file, or of a folder holding one (an evaluate
    stage's key), or of a `_SUCCESS.json` marker whose result carries them."""
    path = Path(source)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{source}: no {METRICS_FILE} here; give an evaluate stage's folder or its {METRICS_FILE}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    return flat_metrics(document, str(path))


def flat_metrics(document: Any, where: str) -> dict[str, float]:
    """The `metrics` mapping of a metrics.json document (or of a marker's `result`), checked."""
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        document = document["result"]  # a stage marker
    metrics = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(metrics, dict):
        raise UserError(f"{where}: no `metrics` mapping; is this an evaluate stage's {METRICS_FILE}?")
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: metric {name!r} is {value!r}, not a number")
        flat[str(name)] = float(value)
    return flat


def metric_value(metrics: dict[str, float], name: str, where: str) -> float:
    """One metric, or a UserError naming the closest names there are (a typo in a gate or a
    sweep's `select.metric` is the usual cause)."""
    if name in metrics:
        return metrics[name]
    import difflib  # only on the error path: it compiles regexes at import

    close = difflib.get_close_matches(name, list(metrics), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    have = ", ".join(sorted(metrics)) or "none"
    raise UserError(f"{where}: no metric {name!r}{hint} (metrics there: {have}); names are <suite>.<metric>, like arc_easy.acc_norm")


# --- suites and the metrics each kind gives (plan and lint check gates against these) ---------

BUILTIN_SUITES = ("arc_easy", "arc_challenge", "hellaswag")
MULTIPLE_CHOICE_METRICS = ("acc", "acc_norm")
GENERATION_METRICS = ("exact_match", "success_rate", "mean_latency_s", "tokens_per_answer")


def suite_name(suite: str | dict[str, Any]) -> str:
    """A builtin suite's name, or a JSONL suite's file stem (`{jsonl: data/arith.jsonl}` is `arith`)."""
    if isinstance(suite, str):
        return suite
    location = str(suite.get("jsonl", ""))
    return Path(location.rsplit("/", 1)[-1]).stem
