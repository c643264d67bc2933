"""Datasets: the three shapes in JSONL, JSON and CSV, errors with file and line, the seeded
split, labels on completions only, and packing that keeps examples apart."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.errors import UserError
from jobs.finetuning.datasets import read_dataset, split_indices

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_three_shapes_become_chats(tmp_path: Path) -> None:
    messages = read_dataset(write(tmp_path / "m.jsonl", [{"messages": CHAT}]))
    assert (messages.shape, messages.chats()) == ("messages", [CHAT])
    prompt = read_dataset(write(tmp_path / "p.jsonl", [{"prompt": "Hi", "completion": "Hello.", "system": "Be brief."}]))
    assert prompt.shape == "prompt/completion" and prompt.chats() == [[{"role": "system", "content": "Be brief."}, *CHAT]]
    instruction = read_dataset(write(tmp_path / "i.jsonl", [{"instruction": "Translate", "input": "chat", "output": "cat"}, {"instruction": "Hi", "output": "Hello."}]))
    assert instruction.shape == "instruction/output"
    assert instruction.chats() == [[{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}], CHAT]


def test_json_and_csv_files(tmp_path: Path) -> None:
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"prompt": "Hi", "completion": "Hello."}] * 2, indent=2))
    assert read_dataset(array).chats() == [CHAT, CHAT]
    table = tmp_path / "t.csv"
    table.write_text('instruction,input,output\nHi,,Hello.\n"Say\nhi",,Hello.\n')
    assert read_dataset(table).chats() == [CHAT, [{"role": "user", "content": "Say\nhi"}, {"role": "assistant", "content": "Hello."}]]
    chats = tmp_path / "c.csv"
    chats.write_text("messages\n" + '"' + json.dumps(CHAT).replace('"', '""') + '"\n')
    assert read_dataset(chats).chats() == [CHAT]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n', "missing.jsonl:3: missing 'completion' (the rows of this file are prompt/completion)"),
        ("typed.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": 3}\n', "typed.jsonl:2: 'output' must be a string, got a number"),
        (
            "roles.jsonl", '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n',
            "roles.jsonl:1: messages[1].role must be one of system, user, assistant, tool, got 'bot'",
        ),
        ("silent.jsonl", '{"messages": [{"role": "user", "content": "a"}]}\n', "silent.jsonl:1: 'messages' has no assistant message, so nothing to learn from"),
        ("broken.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n', "broken.jsonl:2: not valid JSON"),
        ("shape.jsonl", '{"question": "a", "answer": "b"}\n', "shape.jsonl:1: cannot tell the dataset's shape"),
        ("empty.jsonl", "\n\n", "empty.jsonl: the dataset is empty"),
        ("array.json", '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a",\n   "completion": null}\n]\n', "array.json:3: 'completion' must be a string, got null"),
        ("table.csv", "prompt,completion\na,b\n\"two\nlines\",b\nc,\n", "table.csv:5: missing 'completion'"),
        ("deep.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": ' + "[" * 100_000 + "\n", "deep.jsonl:2: JSON nested too deeply"),
        ("deep.json", '[\n  {"prompt": "a", "completion": "b"},\n  ' + "[" * 100_000 + "\n]", "deep.json:3: JSON nested too deeply"),
        ("deep.csv", "messages\n" + "[" * 100_000 + "\n", "deep.csv:2: JSON nested too deeply"),
        ("surrogate.jsonl", '{"prompt": "a\\ud800", "completion": "b"}\n', "surrogate.jsonl:1: 'prompt' holds a lone surrogate (\\ud800) at character 1, not text"),
        (
            "long-role.jsonl", '{"messages": [{"role": "' + "x" * 300_000 + '", "content": "a"}]}\n',
            "long-role.jsonl:1: messages[0].role must be one of system, user, assistant, tool, got '" + "x" * 59 + "... (300002 characters)",
        ),
        ("truncated.json", '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a", "compl', "truncated.json:3: not valid JSON"),
        ("list-row.jsonl", '{"prompt": "a", "completion": "b"}\n[1, 2]\n', "list-row.jsonl:2: a row is a JSON object"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as error:
        read_dataset(path)
    assert str(error.value).startswith(str(tmp_path / message.split(":", 1)[0]) + message[len(message.split(":", 1)[0]):])


def test_bytes_that_are_not_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(UserError, match=r"latin.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        read_dataset(path)


def test_a_row_ends_at_a_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "separators.jsonl"
    path.write_text(json.dumps({"prompt": "one\u2028two\x85three", "completion": "b"}, ensure_ascii=False) + "\n")
    assert read_dataset(path).chats()[0][0]["content"] == "one\u2028two\x85three"


def test_a_path_that_is_not_a_dataset_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    (tmp_path / "folder.jsonl").mkdir()
    for name, message in (("zero.jsonl", "not a regular file"), ("folder.jsonl", "not a regular file"), ("~nosuchuser/x.jsonl", "no such dataset file")):
        with pytest.raises(UserError, match=message):
            read_dataset(name if name.startswith("~") else tmp_path / name)


def test_split_is_seeded_disjoint_and_complete() -> None:
    first = split_indices(100, 0.1, 0.2, seed=7)
    assert first == split_indices(100, 0.1, 0.2, seed=7) != split_indices(100, 0.1, 0.2, seed=8)
    assert (len(first.train), len(first.validation), len(first.test)) == (70, 10, 20)
    assert sorted(first.train + first.validation + first.test) == list(range(100))
    assert len(split_indices(5, 0.1, 0.1, seed=0).validation) == 1  # a share above zero keeps one row


def test_data_split_command_writes_the_stage_split(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{index}", "completion": f"a{index}"} for index in range(30)]
    source = write(tmp_path / "qa.jsonl", rows)
    result = subprocess.run([sys.executable, "-m", "foundry", "data", "split", str(source), "--validation", "0.2", "--seed", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = split_indices(30, 0.2, 0.1, seed=3)
    for part in ("train", "validation", "test"):
        written = [json.loads(line) for line in (tmp_path / f"qa_{part}.jsonl").read_text().splitlines()]
        assert written == [rows[index] for index in getattr(expected, part)]
    bad = subprocess.run([sys.executable, "-m", "foundry", "data", "check", str(write(tmp_path / "bad.jsonl", [{"prompt": 1, "completion": "x"}]))], capture_output=True, text=True)
    assert bad.returncode == 2 and f"{tmp_path}/bad.jsonl:1: 'prompt' must be a string, got a number" in bad.stderr


def test_an_s3_dataset_is_read_through_the_store_client(bucket: str, tmp_path: Path) -> None:
    import boto3

    boto3.session.Session().client("s3").put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"prompt": "Hi", "completion": "Hello."}\n')
    assert read_dataset(f"s3://{bucket}/data/train.jsonl").chats() == [CHAT]
    with pytest.raises(UserError, match="no such object"):
        read_dataset(f"s3://{bucket}/data/missing.jsonl")


def test_labels_cover_the_assistant_turns_only() -> None:
    from transformers import AutoTokenizer

    from jobs.finetuning.batches import IGNORE, EncodeStats, encode
    from jobs.tiny.models import build

    tokenizer = AutoTokenizer.from_pretrained(build("qwen2-a"))
    chat = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}, {"role": "assistant", "content": "four"}]
    example = encode(tokenizer, chat, 512, EncodeStats())
    assert example is not None
    learned = tokenizer.decode([token for token, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE])
    assert learned == "two<|im_end|>\nfour<|im_end|>\n"
    stats = EncodeStats()
    assert encode(tokenizer, chat[:2], 4, stats) is None and stats.dropped == 1  # cut before the answer: nothing to learn


@pytest.mark.parametrize("name", ["llama-a", "gpt2-a"])
def test_packed_rows_give_each_example_its_own_logits(name: str) -> None:
    """Position ids that restart per example, and no mask, keep examples from attending to
    each other (in a forward without a KV cache, as training runs): a packed row's logits
    are each example's logits alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.finetuning.batches import EncodeStats, collate, encode, pack
    from jobs.tiny.models import build

    folder = build(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    pairs = (("What is 2+3?", "5."), ("Hello!", "Hello! How can I help you today?"), ("Reverse the word cat.", "tac"))
    chats = [[{"role": "user", "content": question}, {"role": "assistant", "content": answer}] for question, answer in pairs]
    examples = [encode(tokenizer, chat, 256, EncodeStats()) for chat in chats]
    [row] = pack(examples, 256)  # type: ignore[arg-type]
    batch = collate([row], tokenizer.pad_token_id)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for example in examples:
            assert example is not None
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + len(example.input_ids)], alone, atol=1e-5, rtol=1e-4)
            start += len(example.input_ids)


def test_the_shipped_colours_dataset_is_what_its_generator_writes(repo: Path) -> None:
    import runpy

    rows = runpy.run_path(str(repo / "recipes" / "data" / "make_colours.py"))["rows"]()
    assert (repo / "recipes" / "data" / "colours.jsonl").read_text() == "".join(json.dumps(row) + "\n" for row in rows)
    assert read_dataset(repo / "recipes" / "data" / "colours.jsonl").shape == "messages"
