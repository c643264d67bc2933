"""Evaluation: suites scored on a model folder or an ONNX variant, as one metrics.json document.

`evaluate_folder` is the library entry the evaluate stage, `foundry evaluate`, `foundry
compare`/`bench-variants` and sweeps share. Its document (see foundry/metrics.py):

    {"model": {"source", "backend", "variant"},
     "metrics": {"<suite>.<metric>": float, ...},
     "suites": {"<suite>": {"kind", "source", "n", "metrics", "items": [...]}}}

Every suite is read and checked before the model is loaded, so a bad row fails in a second.
"""

import time
from pathlib import Path
from typing import Any

from foundry.errors import UserError

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_NEW_TOKENS = 32


def evaluate_folder(
    folder: Path, suites: list[Any], *, variant: str | None = None, limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, trust_remote_code: bool = False, source: str | None = None,
) -> dict[str, Any]:
    """Score `suites` (builtin names, JSONL paths or s3:// URLs, or `{"jsonl": ...}`) on the
    model in `folder`: PyTorch, or with `variant` the ONNX variant of a published/quantized folder."""
    from jobs.evaluation import generation, multiple_choice
    from jobs.evaluation.backends import open_backend
    from jobs.evaluation.suites import load_suite

    if not suites:
        raise UserError("no suites to evaluate; name a builtin (arc_easy, arc_challenge, hellaswag) or a JSONL file")
    loaded = [load_suite(entry, limit=limit) for entry in suites]
    names = [suite.name for suite in loaded]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"suites {', '.join(repeated)} appear twice; metric names (<suite>.<metric>) must be unique, so rename one file")
    backend = open_backend(Path(folder), variant=variant, trust_remote_code=trust_remote_code)
    metrics: dict[str, float] = {}
    reports: dict[str, Any] = {}
    for suite in loaded:
        started = time.perf_counter()
        if suite.kind == "multiple_choice":
            values, items = multiple_choice.score(backend.scorer, suite.items, batch_size=batch_size)
        else:
            values, items = generation.score(backend.generator, suite.items, max_new_tokens=max_new_tokens, batch_size=batch_size)
        metrics.update({f"{suite.name}.{name}": value for name, value in values.items()})
        reports[suite.name] = {"kind": suite.kind, "source": suite.source, "n": len(items), "seconds": round(time.perf_counter() - started, 3), "metrics": values, "items": items}
    return {"model": {"source": source or str(folder), "backend": backend.name, "variant": backend.variant}, "metrics": metrics, "suites": reports}
