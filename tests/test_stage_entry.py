"""`foundry-stage SPEC.json` refuses a spec that is not one with a single line and exit 2:
the cluster's podFailurePolicy fails exit 2 at once, where it would retry exit 1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.entry import main

GOOD = {"stage": "merge", "recipe": "r", "key": "merge-000000000000", "store": "/nonexistent", "inputs": {}, "params": {}}


@pytest.mark.parametrize(("content", "message"), [
    (b"not json", "Invalid JSON"),
    (b"[1, 2]", "Input should be an object"),
    (b"[" * 100_000 + b"]" * 100_000, "Invalid JSON: recursion limit exceeded"),
    (json.dumps({**GOOD, "stage": "bake"}).encode(), "stage: Input should be 'merge', 'finetune', 'evaluate', 'quantize' or 'publish'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "key"}).encode(), "key: Field required"),
    (json.dumps({**GOOD, "inputs": {"model": {"key": "a", "model": "b"}}}).encode(), "inputs.model: a stage input names exactly one of `key` or `model`"),
    (json.dumps({**GOOD, "extra": 1}).encode(), "extra: Extra inputs are not permitted"),
])
def test_a_malformed_spec_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_bytes(content)
    with pytest.raises(SystemExit) as exited:
        main([str(spec)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: stage spec {spec}: ") and message in lines[0], lines


def test_the_console_script_exits_2_on_a_device_or_a_missing_spec(tmp_path: Path) -> None:
    for path, message in (("/dev/zero", "a device, pipe or socket, not a regular file"), (str(tmp_path / "none.json"), "no such file")):
        result = subprocess.run([sys.executable, "-c", "from jobs.entry import main; main()", path], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.strip() == f"error: stage spec {path}: {message}"
