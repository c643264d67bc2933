"""Evaluation suites: a JSONL file (local or s3://) or a builtin benchmark, read into items.

Two kinds, told apart by the first row's fields; every row must be of that kind:

    multiple choice   {"query": "...", "choices": ["...", "..."], "gold": 0}
    generation        {"prompt": "...", "answer": "...", "system": "..." (optional)}

The builtins (arc_easy, arc_challenge, hellaswag) are the lm-evaluation-harness tasks of the
same names, with its prompts and preprocessing, so their numbers compare with published ones.
Their data comes from the Hugging Face hub (or the `datasets` cache); offline, use a JSONL
in the multiple-choice shape instead. A bad row is refused with its file and line before
any model is loaded.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from foundry.errors import UserError
from foundry.hashing import sha256_file
from foundry.metrics import BUILTIN_SUITES, suite_name
from jobs.finetuning.datasets import Row, fetch, read_rows
from jobs.finetuning.datasets import _type as type_name

Kind = Literal["multiple_choice", "generation"]


@dataclass(frozen=True)
class ChoiceItem:
    line: int  # the row's line in its file; the document's index for a builtin
    query: str
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class QuestionItem:
    line: int
    prompt: str
    answer: str
    system: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    kind: Kind
    source: str  # the file or the hub dataset, for metrics.json
    items: list[Any]  # ChoiceItem or QuestionItem, by kind


@dataclass(frozen=True)
class _Builtin:
    path: str
    config: str | None
    split: str  # the split lm-evaluation-harness scores: test where the task has one, else validation


_BUILTINS = {
    "arc_easy": _Builtin("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": _Builtin("allenai/ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": _Builtin("Rowan/hellaswag", None, "validation"),
}
assert tuple(_BUILTINS) == BUILTIN_SUITES


def load_suite(entry: str | dict[str, Any], *, limit: int | None = None) -> Suite:
    """A suite from a recipe's entry: a builtin's name, `{"jsonl": LOCATION}` (optionally with
    the `sha256` the plan saw), or a path / s3:// URL of a JSONL file given as a string."""
    if isinstance(entry, dict):
        if not isinstance(entry.get("jsonl"), str):
            raise UserError(f"evaluate.suites: {entry!r} is not a suite; write a builtin name ({', '.join(BUILTIN_SUITES)}) or {{jsonl: PATH}}")
        suite = read_jsonl_suite(entry["jsonl"], expected_sha256=entry.get("sha256"))
    elif entry in _BUILTINS:
        suite = builtin_suite(entry, limit=limit)
    elif entry.startswith("s3://") or Path(entry).suffix.lower() in (".jsonl", ".json", ".ndjson"):
        suite = read_jsonl_suite(entry)
    else:
        raise UserError(f"suite {entry!r}: not a builtin ({', '.join(BUILTIN_SUITES)}) nor a .jsonl file; write {{jsonl: PATH}} for your own")
    return Suite(suite.name, suite.kind, suite.source, suite.items[:limit] if limit else suite.items)


def read_jsonl_suite(location: str, *, expected_sha256: str | None = None) -> Suite:
    path = fetch(location)
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise UserError(f"{location}: changed since the recipe was planned (its sha256 differs); plan and run again")
    rows = read_rows(path, location)
    if not rows:
        raise UserError(f"{location}: the suite is empty; write one JSON object a line: {{\"query\", \"choices\", \"gold\"}} or {{\"prompt\", \"answer\"}}")
    kind = detect_kind(rows[0], location)
    parse = _choice_item if kind == "multiple_choice" else _question_item
    return Suite(suite_name({"jsonl": location}), kind, location, [parse(row, f"{location}:{row.line}") for row in rows])


def detect_kind(row: Row, name: str) -> Kind:
    keys = set(row.fields)
    if keys & {"query", "choices", "gold"}:
        return "multiple_choice"
    if keys & {"prompt", "answer"}:
        return "generation"
    found = ", ".join(sorted(keys)) or "none"
    raise UserError(f"{name}:{row.line}: not a suite row: multiple choice needs query, choices and gold; generation needs prompt and answer; this one has: {found}")


def _choice_item(row: Row, where: str) -> ChoiceItem:
    fields = row.fields
    for field in ("query", "choices", "gold"):
        if field not in fields:
            raise UserError(f"{where}: missing {field!r} (the rows of this suite are multiple choice: query, choices, gold)")
    query, choices, gold = fields["query"], fields["choices"], fields["gold"]
    if not isinstance(query, str) or not query.strip():
        raise UserError(f"{where}: 'query' must be a non-empty string, got {type_name(query) if not isinstance(query, str) else 'an empty one'}")
    if not isinstance(choices, list) or len(choices) < 2:
        raise UserError(f"{where}: 'choices' must be a list of at least two strings, got {type_name(choices) if not isinstance(choices, list) else f'{len(choices)} item(s)'}")
    for index, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise UserError(f"{where}: choices[{index}] must be a non-empty string, got {type_name(choice) if not isinstance(choice, str) else 'an empty one'}")
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise UserError(f"{where}: 'gold' must be the index of the right choice (an integer), got {type_name(gold)}")
    if not 0 <= gold < len(choices):
        raise UserError(f"{where}: 'gold' is {gold}, out of range for {len(choices)} choices (0 to {len(choices) - 1})")
    return ChoiceItem(row.line, query, list(choices), gold)


def _question_item(row: Row, where: str) -> QuestionItem:
    fields = row.fields
    for field in ("prompt", "answer"):
        if field not in fields:
            raise UserError(f"{where}: missing {field!r} (the rows of this suite are generation: prompt, answer)")
        if not isinstance(fields[field], str) or not fields[field].strip():
            value = fields[field]
            raise UserError(f"{where}: {field!r} must be a non-empty string, got {type_name(value) if not isinstance(value, str) else 'an empty one'}")
    system = fields.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{where}: 'system' must be a string, got {type_name(system)}")
    return QuestionItem(row.line, fields["prompt"], fields["answer"], system or None)


# --- builtins: lm-evaluation-harness's tasks ------------------------------------------------

def builtin_suite(name: str, *, limit: int | None = None) -> Suite:
    builtin = _BUILTINS[name]
    split = f"{builtin.split}[:{limit}]" if limit else builtin.split
    source = f"hf://datasets/{builtin.path}" + (f"/{builtin.config}" if builtin.config else "") + f" ({builtin.split})"
    try:
        from datasets import load_dataset

        documents = load_dataset(builtin.path, builtin.config, split=split)
    except Exception as error:  # datasets raises many types for "offline", "not cached", "no such repo"
        raise UserError(
            f"suite {name}: its data ({source}) could not be fetched from the Hugging Face hub ({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}); "
            f"run where the hub is reachable (or its datasets cache is filled), or use a local JSONL suite, {{jsonl: PATH}}, with rows {{\"query\", \"choices\", \"gold\"}}"
        ) from None
    convert = hellaswag_item if name == "hellaswag" else arc_item
    return Suite(name, "multiple_choice", source, [convert(document, index) for index, document in enumerate(documents)])


def arc_item(document: dict[str, Any], index: int) -> ChoiceItem:
    """lm-eval's arc_easy/arc_challenge: `Question: {{question}}\\nAnswer:`, the choices' text,
    gold the position of answerKey among the labels."""
    labels = list(document["choices"]["label"])
    return ChoiceItem(index, f"Question: {document['question']}\nAnswer:", list(document["choices"]["text"]), labels.index(document["answerKey"]))


def hellaswag_item(document: dict[str, Any], index: int) -> ChoiceItem:
    """lm-eval's hellaswag: `activity_label: ctx_a Ctx_b` and the endings, each through its
    preprocess() (WikiHow's bracketed artefacts removed)."""
    context = document["ctx_a"] + " " + document["ctx_b"].capitalize()
    return ChoiceItem(index, _hellaswag_text(document["activity_label"] + ": " + context), [_hellaswag_text(ending) for ending in document["endings"]], int(document["label"]))


def _hellaswag_text(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")
