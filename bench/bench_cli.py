"""`foundry --help` and `foundry lint` wall time, and proof that no heavy library is imported."""

import statistics
import subprocess
import sys
from pathlib import Path

from bench.report import measured, write

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "mergekit", "peft", "optimum", "onnxruntime")
RUNS = 10
GOAL_SECONDS = 0.3


def heavy_imports(args: list[str]) -> list[str]:
    """Top-level packages among HEAVY that `python -X importtime` shows being imported."""
    code = f"import sys; sys.argv = ['foundry', *{args!r}]; from foundry.cli import main; main()"
    stderr = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=REPO).stderr
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")}
    return sorted(names & set(HEAVY))


def main() -> None:
    foundry = str(Path(sys.executable).parent / "foundry")
    rows = []
    for label, args in (("foundry --help", ["--help"]), ("foundry lint recipes/tiny-demo.yml", ["lint", "recipes/tiny-demo.yml"])):
        times = sorted(measured([foundry, *args], cwd=REPO)[0] for _ in range(RUNS))
        rows.append({
            "command": label, "median_s": statistics.median(times), "max_s": times[-1],
            "goal_s": GOAL_SECONDS, "meets_goal": statistics.median(times) < GOAL_SECONDS,
            "heavy_imports": ",".join(heavy_imports(args)) or "none",
        })
    write("cli", rows)


if __name__ == "__main__":
    main()
