"""Seeded mutations of the shipped recipes and datasets, each given to the real CLI entry
(`foundry.cli.main`, in this process), as tests/test_fuzz.py runs it in a child process.

    python tests/fuzz_inputs.py WORK --seed N --recipes N --datasets N

Every mutated recipe goes through `lint` and `plan` (and `run`, when lint refuses it: run must
refuse it the same way before anything starts), every mutated dataset through `data check`.
An exit code other than 0 or 2, an exception escaping `main` (what a user would see as a
traceback) or a write outside WORK is a failure. An audit hook sees every file this process
opens for writing, creates, renames or deletes. The report, on stdout, is JSON.
"""

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_WRITE_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# Values a careless or hostile user might write where a recipe has a scalar.
NASTY_VALUES = [
    "/", "'../../../../'", "~nosuchuser/model", "/dev/zero", "/proc/self/environ", "./bad-config-list", "./bad-config-deep",
    "./bad-hidden-size", "./no-weights", "./model-ok", "-1", "1e999", ".nan", "-.inf", "null", "[]", "{}", "!!binary AAAA",
    "!!python/object/apply:os.system [echo]", "*undefined", "&a [*a]", '"\\0"', '"\\ud800"', "2024-01-01", "0x10", "x" * 5000,
    "[" * 1500 + "]" * 1500, "~", "s3://", "s3://bucket", "org/name@rev+lora", "tiny:nope", "file:///", "yes", "12:30:00",
    "[tiny:llama-a, tiny:llama-b]", "{model: {path: /}}", "'tiny:llama-a'", "100000000000000000000000", "0", "-0.0", "''",
]
SECTIONS = [
    "finetune: {dataset: /dev/zero}", "finetune: {dataset: ~nosuchuser/d.jsonl}", "evaluate: {suites: [{jsonl: /proc/self/environ}]}",
    "sweep: {grid: {parameters.t: [0.1, 2]}}", "quantize: {variants: [q4, q4]}", "publish: {to: /}", "name: ../x",
    "resources: {merge: {memory: -1}}", "base_model: /", "tokenizer_source: union", "slices: [{sources: [{model: /, layer_range: [0, 99]}]}]",
    "lol: &l [x, x, x, x, x, x, x, x, x]\nlol2: &m [*l, *l, *l, *l, *l, *l, *l, *l, *l]\nlol3: [*m, *m, *m, *m, *m, *m, *m, *m, *m]",
]
BYTES = [b"\x00", b"\xff", b"\t", b":", b"- ", b"[", b"{", b"&", b"*", b"!", b"%", b"@", b"`", b"|", b">", b'"', b"'", b"#", b"\n", b"\r", b"\xef\xbb\xbf", b"\xe2\x80\xa8"]


def mutate_recipe(text: bytes, rng: random.Random) -> bytes:
    lines = text.split(b"\n")
    kind = rng.randrange(8)
    at = rng.randrange(len(text) + 1)
    line = rng.randrange(len(lines))
    if kind == 0:
        return text[:at]
    if kind == 1:
        return text[:at] + rng.choice(BYTES) + text[at:]
    if kind == 2:
        return b"\n".join(lines[:line] + lines[line + 1:])
    if kind == 3:
        return b"\n".join(lines[:line] + [lines[line]] + lines[line:])
    if kind == 4:
        return b"\n".join((b"  " + item if index == line else item) for index, item in enumerate(lines))
    if kind == 5:
        return text + b"\n" + rng.choice(SECTIONS).encode() + b"\n"
    values = [index for index, item in enumerate(lines) if re.match(rb"^\s*-?\s*[A-Za-z_.]+:\s*\S", item) and not item.lstrip().startswith(b"#")]
    if not values:
        return text
    index = rng.choice(values)
    key, _, _ = lines[index].partition(b":")
    lines[index] = key + b": " + rng.choice(NASTY_VALUES).encode()
    return b"\n".join(lines)


def mutate_dataset(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:  # where a JSON value starts, so that an insertion changes the structure
        at = rng.choice([match.end() for match in re.finditer(rb"[:\[,]\s*", data)] or [at])
    kind = rng.randrange(10)
    inserts = [b"\x00", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 5000, b"x" * 300_000, b'"\\ud800"', b"\r", b'"', b"\xe2\x80\xa8", b"null", b"[]", b"{}", b"1e999", b"NaN", b","]
    if kind == 0:
        return data[:at]
    if kind == 1:
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    if kind == 2:
        return b"\xef\xbb\xbf" + data
    if kind == 3:
        swaps = [(b'"role"', b'"rol"'), (b'"role"', b'"role": ["user"], "x"'), (b'"content"', b'"content": 1, "y"'), (b'"messages"', b'"messages": {}, "z"'), (b'"prompt"', b'"prompt": null, "w"')]
        old, new = rng.choice(swaps)
        return data.replace(old, new, rng.randrange(1, 4))
    return data[:at] + rng.choice(inserts) + data[at:]


def dataset_bases() -> dict[str, bytes]:
    """The shipped datasets in the three shapes (the skill suites' rows made prompt/completion
    and instruction/output), each as JSONL, as a JSON array and as CSV (messages cells as JSON)."""
    import csv

    bases: dict[str, bytes] = {}
    for path in sorted((REPO / "recipes" / "data").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()][:40]
        if path.stem == "arith":
            rows = [{"prompt": row["prompt"], "completion": row["answer"]} for row in rows]
        elif path.stem == "reverse":
            rows = [{"instruction": row["prompt"], "output": row["answer"]} for row in rows]
        bases[path.stem + ".jsonl"] = "".join(json.dumps(row) + "\n" for row in rows).encode()
        bases[path.stem + ".json"] = json.dumps(rows, indent=1).encode()
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=sorted({key for row in rows for key in row}))
        writer.writeheader()
        writer.writerows({key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in row.items()} for row in rows)
        bases[path.stem + ".csv"] = table.getvalue().encode()
    return bases


def model_folders(work: Path) -> None:
    """Folders the nasty values name: broken configs, one without weights, one that is fine."""
    configs = {"bad-config-list": "[1, 2]", "bad-config-deep": "[" * 5000 + "]" * 5000, "bad-hidden-size": '{"model_type": "llama", "hidden_size": "abc"}',
               "no-weights": '{"model_type": "llama", "hidden_size": 64, "vocab_size": 512}', "model-ok": '{"model_type": "llama", "hidden_size": 64, "vocab_size": 512}'}
    for name, config in configs.items():
        (work / name).mkdir(parents=True, exist_ok=True)
        (work / name / "config.json").write_text(config)
    (work / "model-ok" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


class Writes:
    """Paths outside `root` that this process wrote to, from Python's audit events."""

    def __init__(self, root: Path) -> None:
        self.root = str(root.resolve())
        self.outside: list[str] = []
        self.on = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.on:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS)
            paths = [path] if writing else []
        elif event in _WRITE_EVENTS:
            paths = [arg for arg in args[:2] if isinstance(arg, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            if isinstance(path, int):
                continue
            full = os.path.realpath(os.fsdecode(path))
            if full != self.root and not full.startswith(self.root + os.sep):
                self.outside.append(f"{event} {full}")


def run_cli(args: list[str]) -> tuple[int, str]:
    """`foundry ARGS` through the console script's entry, in this process: (exit code, output);
    an exception out of `main` is reported as exit code -1 with its traceback."""
    from foundry.cli import main

    output = io.StringIO()
    sys.argv = ["foundry", *args]
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except BaseException:  # noqa: BLE001 - what escapes is exactly what the fuzz looks for
            code = -1
            output.write(traceback.format_exc())
    return code, output.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--recipes", type=int, default=300)
    parser.add_argument("--datasets", type=int, default=100)
    options = parser.parse_args()
    work = options.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "recipes" / "data", work / "recipes" / "data", dirs_exist_ok=True)
    model_folders(work)
    os.chdir(work)
    rng = random.Random(options.seed)
    recipes = {path.name: path.read_bytes() for path in sorted((REPO / "recipes").glob("*.yml"))}
    datasets = dataset_bases()
    import typer

    from foundry import cli

    # main() as the console script runs it, with typer's command tree built once, not per call
    # (that is most of a call's time); imported before the hook, so bytecode caches are not counted.
    cli.app = typer.main.get_command(cli.app)  # type: ignore[assignment]

    writes = Writes(work)
    failures: list[dict[str, Any]] = []
    codes: Counter[str] = Counter()
    samples: list[tuple[list[str], int]] = []  # a few results, for the test to repeat through the console script
    writes.on = True
    for number in range(options.recipes):
        name = rng.choice(sorted(recipes))
        path = work / "mutated" / f"{number:03d}-{name}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutate_recipe(recipes[name], rng))
        commands = [["lint", str(path)], ["plan", str(path), "--store", str(work / "store")]]
        for args in commands:
            code, output = run_cli(args)
            codes[f"{args[0]} {code}"] += 1
            if args[0] == "lint" and number < 4:
                samples.append((args, code))
            if code not in (0, 2) or "Traceback" in output:
                failures.append({"input": str(path), "command": args[0], "code": code, "output": output[-3000:]})
            if args[0] == "lint" and code == 2:
                commands.append(["run", str(path), "--store", str(work / "store"), "--runs-dir", str(work / "runs")])
            if args[0] == "run" and code != 2:
                failures.append({"input": str(path), "command": "run", "code": code, "output": "lint refused it, run did not: " + output[-2000:]})
    for number in range(options.datasets):
        name = rng.choice(sorted(datasets))
        path = work / "datasets" / f"{number:03d}-{name}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutate_dataset(datasets[name], rng))
        code, output = run_cli(["data", "check", str(path)])
        codes[f"data check {code}"] += 1
        if number < 2:
            samples.append((["data", "check", str(path)], code))
        if code not in (0, 2) or "Traceback" in output:
            failures.append({"input": str(path), "command": "data check", "code": code, "output": output[-3000:]})
    writes.on = False
    print(json.dumps({"codes": dict(codes), "samples": samples, "failures": failures, "writes_outside": sorted(set(writes.outside))}, indent=1), file=sys.__stdout__)


if __name__ == "__main__":
    main()
