"""Shared output of the benchmarks: one table on stdout, one JSON file per benchmark."""

import json
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write(name: str, rows: list[dict[str, Any]]) -> Path:
    """Print `rows` as a table and save them with the machine they ran on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), "rows": rows}, indent=2))
    columns = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns}
    print(f"\n{name}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns))
    print(f"-> {path}")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def measured(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, measured from a parent of its own.

    The files earlier commands wrote are flushed to disk first: otherwise the kernel writes
    them back while this command runs, and a command is slowed by what came before it (the
    builder's int4 run at 0.5B, right after a publish of six variants: 18.8 and 23.0 s in two
    bench runs without the flush, 13.4 to 17.1 s in nine runs with it; 10.5 to 13.7 s
    alone on an idle machine).
    """
    import os
    import subprocess
    import sys

    os.sync()

    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)"
    )
    probed = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=cwd, env=env, check=True)
    output = probed.stdout.split()
    if output[2] != "0":
        raise RuntimeError(f"benchmark command failed: {' '.join(command)}\n{probed.stderr[-3000:]}")
    return float(output[0]), int(output[1])
