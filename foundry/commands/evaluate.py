"""`foundry evaluate TARGET --suite ...`: score a model on suites, outside any recipe.

TARGET is what `foundry query` takes: a model folder, `RECIPE/KEY` in the store (a merge or
finetune key: PyTorch; a quantize key: ONNX), a published variant folder (`--variant`), or
`tiny:NAME` / a hub id. The scores are printed as a table; `--out FILE` writes the whole
metrics.json document (per-item results included), which `foundry compare` reads. Like
`query`, this command imports torch, so only here and only when it runs.
"""

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from foundry.commands.query import resolve_model


def evaluate_target(
    target: str, suites: list[str], *, variant: str | None, limit: int | None, batch_size: int, max_new_tokens: int,
    out: Path | None, store_flag: str | None, trust_remote_code: bool,
) -> None:
    from jobs.evaluation import evaluate_folder

    folder = resolve_model(target, store_flag, trust_remote_code)
    document = evaluate_folder(
        folder, list(suites), variant=variant, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
        trust_remote_code=trust_remote_code, source=target,
    )
    _print(document)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)


def _print(document: dict[str, Any]) -> None:
    model = document["model"]
    title = f"{model['source']} ({model['backend']}{', ' + model['variant'] if model['variant'] else ''})"
    table = Table(title=title, title_justify="left")
    for column, justify in (("metric", "left"), ("value", "right"), ("items", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, report in document["suites"].items():
        for metric, value in report["metrics"].items():
            table.add_row(f"{name}.{metric}", f"{value:.4f}", str(report["n"]), f"{report['seconds']:.1f}")
    Console(highlight=False).print(table)
