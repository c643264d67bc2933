"""A seeded fuzz of what users feed the CLI: a few hundred mutations of the shipped recipes
and datasets (tests/fuzz_inputs.py) through `lint`, `plan`, `run` and `data check`. Each
must exit 0 or 2, never with a traceback, and nothing may be written outside the run's
folder. The mutations run in one child process (where an audit hook watches every write),
through the CLI's own entry; a few are repeated through the console script."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_mutated_recipes_and_datasets_exit_0_or_2_without_traceback_or_stray_writes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"), "FOUNDRY_CACHE": str(tmp_path / "cache" / "foundry")}
    env.pop("FOUNDRY_STORE", None)
    done = subprocess.run([sys.executable, str(HERE / "fuzz_inputs.py"), str(work), "--seed", "16", "--recipes", "300", "--datasets", "100"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["failures"] == [], json.dumps(report["failures"][:5], indent=1)
    assert report["writes_outside"] == []
    codes = report["codes"]
    for command, count in (("lint", 300), ("plan", 300), ("data check", 100)):
        assert codes.get(f"{command} 0", 0) + codes.get(f"{command} 2", 0) == count, codes
    # Both outcomes, in every command: the mutations are neither all harmless nor all fatal.
    for command in ("lint", "plan", "data check"):
        assert codes.get(f"{command} 0", 0) >= 20 and codes.get(f"{command} 2", 0) >= 20, codes
    assert codes.get("run 2") == codes["lint 2"]
    for args, code in report["samples"]:
        real = subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, env=env, cwd=work, timeout=60)
        assert (real.returncode, "Traceback" in real.stderr) == (code, False), (args, real.stderr[-2000:])
