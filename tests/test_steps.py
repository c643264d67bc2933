"""jobs/steps.py: a stage's heavy steps in processes of their own, their peaks, and a killed
step named with the memory it had (issue "Real model sizes": "a stage that runs out of
memory says which step and how much it had, not a bare kill")."""

import os
import sys
from pathlib import Path

import pytest

from foundry.errors import UserError
from jobs.onnx.export import read_config
from jobs.steps import StepKilled, StepLog, run_command, run_step

MIB = 1024 * 1024


def test_a_step_returns_its_result_and_its_own_peak() -> None:
    log = StepLog("quantize")
    # The stage process may be large when it starts a step: the step is charged its own
    # memory, not its parent's (a forked child's peak starts from its parent's).
    held_by_the_parent = os.urandom(600 * MIB)
    # A function importable by name in the child (as every step is): 128 MiB of random bytes.
    assert len(run_step(log, "hold", os.urandom, 128 * MIB)) == 128 * MIB
    # The child's own peak: at least what it made, below what two more copies would take.
    assert 128 * MIB <= log.peaks["hold"] < 3 * 128 * MIB + 100 * MIB, log.peaks["hold"] / MIB
    assert len(held_by_the_parent) == 600 * MIB


def test_a_killed_step_is_named_with_the_memory_it_had() -> None:
    log = StepLog("quantize")
    with pytest.raises(StepKilled) as raised:
        run_command(log, "reference", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    message = str(raised.value)
    assert isinstance(raised.value, UserError)     # one line and exit 2 from the CLI
    assert "\n" not in message
    assert "quantize: step 'reference' was killed by signal 9" in message
    assert "out-of-memory killer" in message and "GiB (the" in message and "resources.quantize.memory" in message
    assert "reference" in log.peaks


def test_a_failing_step_shows_the_end_of_its_errors() -> None:
    log = StepLog("merge")
    program = "import sys\nfor n in range(40): print('line', n, file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(RuntimeError) as raised:
        run_command(log, "export", [sys.executable, "-c", program])
    message = str(raised.value)
    assert message.startswith("merge: step 'export' failed (exit 3):")
    assert "line 39" in message and "line 24" not in message    # the last 15 lines


def test_a_step_that_refuses_its_input_raises_the_users_one_line(tmp_path: Path) -> None:
    log = StepLog("quantize")
    # A UserError inside the step's process (here: a model folder without config.json) is
    # the stage's UserError, its line unchanged: one line and exit 2 from the CLI, not a
    # failed step with a traceback.
    with pytest.raises(UserError) as raised:
        run_step(log, "reference", read_config, tmp_path)
    assert str(raised.value).startswith(f"model folder {tmp_path}: no config.json;")
    assert "\n" not in str(raised.value) and not isinstance(raised.value, StepKilled)
    # Exit 2 alone (argparse's, say) is still a failed step.
    with pytest.raises(RuntimeError, match="failed \\(exit 2\\)"):
        run_command(log, "export", [sys.executable, "-c", "import sys; print('usage: x', file=sys.stderr); sys.exit(2)"])
