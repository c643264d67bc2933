"""`foundry data check|split`: look at a fine-tuning dataset before a run does.

`split` writes `<name>_train.jsonl`, `<name>_validation.jsonl` and `<name>_test.jsonl`
beside the file (or into --out), the rows as they were, with the same seeded shuffle the
finetune stage uses, so a held-out test file matches what the stage held out.
"""

import json
from pathlib import Path

import typer

from foundry.errors import UserError


def check_dataset(location: str) -> None:
    from jobs.finetuning.datasets import read_dataset

    dataset = read_dataset(location)
    chats = dataset.chats()
    turns = sum(1 for chat in chats for message in chat if message["role"] == "assistant")
    typer.echo(f"ok {dataset.name}: {len(chats)} rows, shape {dataset.shape}, {turns} assistant turns to learn from")


def split_dataset(location: str, validation: float, test: float, seed: int, out: Path | None) -> None:
    from jobs.finetuning.datasets import read_dataset, split_indices

    for name, share in (("--validation", validation), ("--test", test)):
        if not 0 <= share < 1:
            raise UserError(f"{name} {share}: a share between 0 and 1")
    dataset = read_dataset(location)
    split = split_indices(len(dataset.rows), validation, test, seed)
    stem = Path(location.rstrip("/").rsplit("/", 1)[-1]).stem
    folder = out or (Path(location).parent if "://" not in location else Path.cwd())
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "validation", "test"):
        target = folder / f"{stem}_{part}.jsonl"
        rows = [dataset.rows[index].fields for index in getattr(split, part)]
        target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        typer.echo(f"{target}: {len(rows)} rows")
