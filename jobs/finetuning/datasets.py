"""Fine-tuning datasets: read JSONL, JSON or CSV, recognise the shape, turn rows into chats,
split them.

Shapes, told apart by the first row's fields:

    messages             {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
    prompt/completion    {"prompt": ..., "completion": ...} (strings, or lists of messages)
    instruction/output   {"instruction": ..., "input": ... (optional), "output": ...}

`prompt` and `instruction` rows may carry a `system` string. Every shape becomes a chat, so
the model's chat template formats training exactly as it will format questions later.
A row that lacks a field, or has one of the wrong type, is refused with its file and
line, before any model is loaded. Pure Python: `foundry data` uses it without torch.
"""

import csv
import io
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.errors import UserError

Chat = list[dict[str, str]]
ROLES = ("system", "user", "assistant", "tool")
SHAPES = ("messages", "prompt/completion", "instruction/output")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")


@dataclass(frozen=True)
class Row:
    line: int  # where the row starts in its file
    fields: dict[str, Any]


@dataclass(frozen=True)
class Dataset:
    name: str  # the file as the user named it, for messages
    shape: str
    rows: list[Row]

    def chats(self) -> list[Chat]:
        return [to_chat(row, self.shape, self.name) for row in self.rows]


def read_dataset(location: str | Path) -> Dataset:
    """Every row of a dataset file (local, or s3://), validated; a UserError for the first
    bad row, naming its file and line."""
    name = str(location)
    path = fetch(name)
    rows = read_rows(path, name)
    if not rows:
        raise UserError(f"{name}: the dataset is empty; it needs at least one row ({', '.join(SHAPES)})")
    shape = detect_shape(rows[0], name)
    dataset = Dataset(name, shape, rows)
    dataset.chats()  # validates every row now, not half-way through training
    return dataset


def fetch(location: str) -> Path:
    """A local path for the dataset: itself, or an s3:// object downloaded to a temporary file."""
    if location.startswith("s3://"):
        return _download(location)
    path = Path(os.path.expanduser(location.removeprefix("file://")))  # pathlib's raises on ~nosuchuser
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such dataset file"
        raise UserError(f"{location}: {what}; check the path")
    return path


def _download(url: str) -> Path:
    from foundry.s3 import client as s3client

    where = s3client.parse(url, "dataset")
    if not where.key:
        raise UserError(f"dataset {url}: name an object (s3://bucket/path/train.jsonl), not a bucket")
    s3 = s3client.client()
    target = Path(tempfile.mkdtemp(prefix="foundry-dataset-")) / where.key.rsplit("/", 1)[-1]
    try:
        with s3client.user_errors(s3, where.bucket, f"dataset {url}", unreachable=True):
            s3.download_file(where.bucket, where.key, str(target))
    except Exception as error:
        if s3client.is_missing(error):
            raise UserError(f"dataset {url}: no such object in the bucket; check the key") from None
        raise
    return target


def read_rows(path: Path, name: str) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{name}: unknown dataset format {suffix or '(no suffix)'!r}; use {', '.join(SUFFIXES)}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{name}: cannot be read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(f"{name}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8") from None
    if suffix == ".csv":
        return _csv_rows(text, name)
    if suffix == ".json":
        return _json_rows(text, name)
    return _jsonl_rows(text, name)


def _jsonl_rows(text: str, name: str) -> list[Row]:
    rows = []
    # Only "\n" ends a row: JSON strings may hold U+2028 and the like, which splitlines() cuts at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        rows.append(_object(_decode(line, name, number), name, number))
    return rows


def _decode(text: str, name: str, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{name}:{line + error.lineno - 1}: not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise UserError(f"{name}:{line}: JSON nested too deeply; a row is an object of strings and lists of messages") from None


def _json_rows(text: str, name: str) -> list[Row]:
    """A JSON array of objects; each row keeps the line its object starts on."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise UserError(f"{name}:{_line(text, position)}: a .json dataset is an array of rows ([{{...}}, ...]); use .jsonl for one row a line")
    position = _skip_space(text, position + 1)
    rows: list[Row] = []
    while position < len(text) and text[position] != "]":
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise UserError(f"{name}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise UserError(f"{name}:{_line(text, position)}: JSON nested too deeply; a row is an object of strings and lists of messages") from None
        rows.append(_object(value, name, _line(text, position)))
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
        elif position < len(text) and text[position] != "]":
            raise UserError(f"{name}:{_line(text, position)}: not valid JSON (expected ',' or ']')")
    if position >= len(text):
        raise UserError(f"{name}:{_line(text, position)}: not valid JSON (the array is not closed)")
    return rows


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _csv_rows(text: str, name: str) -> list[Row]:
    """CSV with a header; empty cells count as missing; a `messages` cell holds JSON."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    start = 2
    try:
        for record in reader:
            fields: dict[str, Any] = {key: value for key, value in record.items() if key is not None and value not in (None, "")}
            if "messages" in fields:
                fields["messages"] = _decode(fields["messages"], name, start)
            if fields:
                rows.append(Row(start, fields))
            start = reader.line_num + 1
    except csv.Error as error:
        raise UserError(f"{name}:{reader.line_num}: not valid CSV ({error})") from None
    return rows


def _object(value: Any, name: str, line: int) -> Row:
    if not isinstance(value, dict):
        raise UserError(f"{name}:{line}: a row is a JSON object like {{\"prompt\": ..., \"completion\": ...}}, got {type(value).__name__}")
    return Row(line, value)


def detect_shape(row: Row, name: str) -> str:
    keys = set(row.fields)
    if "messages" in keys:
        return "messages"
    if {"prompt", "completion"} <= keys:
        return "prompt/completion"
    if {"instruction", "output"} <= keys:
        return "instruction/output"
    found = _clip(", ".join(sorted(map(str, keys)))) or "none"
    raise UserError(f"{name}:{row.line}: cannot tell the dataset's shape: a row needs `messages`, or `prompt` and `completion`, or `instruction` and `output`; this one has: {found}")


def to_chat(row: Row, shape: str, name: str) -> Chat:
    where = f"{name}:{row.line}"
    fields = row.fields
    if shape == "messages":
        return _messages(fields.get("messages"), where, "messages", require_assistant=True)
    if shape == "prompt/completion":
        for field in ("prompt", "completion"):
            if field not in fields:
                raise UserError(f"{where}: missing {field!r} (the rows of this file are prompt/completion)")
        system = _optional_text(fields, "system", where)
        prompt = fields["prompt"]
        chat = _messages(prompt, where, "prompt", require_assistant=False) if isinstance(prompt, list) else [{"role": "user", "content": _text(prompt, where, "prompt")}]
        completion = fields["completion"]
        answer = _messages(completion, where, "completion", require_assistant=True) if isinstance(completion, list) else [{"role": "assistant", "content": _text(completion, where, "completion")}]
        return ([{"role": "system", "content": system}] if system else []) + chat + answer
    for field in ("instruction", "output"):
        if field not in fields:
            raise UserError(f"{where}: missing {field!r} (the rows of this file are instruction/output)")
    instruction = _text(fields["instruction"], where, "instruction")
    extra = _optional_text(fields, "input", where)
    system = _optional_text(fields, "system", where)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}, {"role": "assistant", "content": _text(fields["output"], where, "output")}]


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {field!r} must be a string, got {_type(value)}")
    if not value.strip():
        raise UserError(f"{where}: {field!r} is empty")
    return _unicode(value, where, field)


def _unicode(value: str, where: str, field: str) -> str:
    """JSON's \\ud800 escapes make strings no tokenizer or UTF-8 file can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(f"{where}: {field!r} holds a lone surrogate (\\u{ord(value[error.start]):04x}) at character {error.start}, not text") from None
    return value


def _optional_text(fields: dict[str, Any], field: str, where: str) -> str | None:
    value = fields.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: {field!r} must be a string, got {_type(value)}")
    return _unicode(value, where, field)


def _messages(value: Any, where: str, field: str, *, require_assistant: bool) -> Chat:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: {field!r} must be a non-empty list of {{\"role\": ..., \"content\": ...}}, got {_type(value)}")
    chat = []
    for index, message in enumerate(value):
        at = f"{where}: {field}[{index}]"
        if not isinstance(message, dict):
            raise UserError(f"{at} must be an object with role and content, got {_type(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"{at}.role must be one of {', '.join(ROLES)}, got {_clip(repr(role))}")
        if not isinstance(content, str):
            raise UserError(f"{at}.content must be a string, got {_type(content)}")
        chat.append({"role": role, "content": _unicode(content, at, "content")})
    if require_assistant and not any(message["role"] == "assistant" for message in chat):
        raise UserError(f"{where}: {field!r} has no assistant message, so nothing to learn from")
    return chat


def _clip(text: str) -> str:
    """Enough of a value to recognise it; a message stays one readable line."""
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _type(value: Any) -> str:
    names = {"str": "a string", "list": "a list", "dict": "an object", "int": "a number", "float": "a number", "bool": "a boolean"}
    return "null" if value is None else names.get(type(value).__name__, type(value).__name__)


@dataclass(frozen=True)
class Split:
    train: list[int]
    validation: list[int]
    test: list[int]


def split_indices(count: int, validation: float, test: float, seed: int) -> Split:
    """Row indices shuffled with `seed` and cut into train, validation and test. A share
    above zero gets at least one row when there are enough; training always keeps one."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    sizes = []
    for share in (validation, test):
        size = round(count * share)
        sizes.append(max(size, 1) if share > 0 and count >= 3 else size)
    n_validation, n_test = sizes
    if n_validation + n_test >= count:
        raise UserError(f"a split of {count} rows into validation {validation} and test {test} leaves none to train on; use more rows or smaller shares")
    return Split(sorted(order[n_validation + n_test:]), sorted(order[:n_validation]), sorted(order[n_validation:n_validation + n_test]))
