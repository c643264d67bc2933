"""What checking a stage's inputs against their markers costs (issue 16).

Every stage re-hashes its committed inputs before it uses them (`Store.fetch`). This
measures that pass against what a stage does with the same bytes anyway:
- a 1 GiB safetensors-like key, one file and four shards of 256 MiB (sharded checkpoints
  hash in parallel), warm in the page cache as a key just committed is: the check against
  one plain read of the same bytes, the least any stage that loads them spends;
- the offline demo: the check of the merge and quantize keys against the seconds the
  quantize and publish stages that read them take.
`FOUNDRY_BENCH_VERIFY_MIB` sets the large key's size (default 1024).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import write
from foundry.store import build_record, open_store

REPO = Path(__file__).resolve().parent.parent
REPEATS = 3
_BLOCK = 64 * 1024 * 1024


def _large_key(store, key: str, shards: int, size: int) -> None:  # noqa: ANN001 - a LocalStore
    staging = store.new_staging("bench", key)
    block = os.urandom(_BLOCK)
    for index in range(shards):
        with open(staging / f"model-{index + 1:05d}-of-{shards:05d}.safetensors", "wb") as out:
            for _ in range(size // shards // _BLOCK):
                out.write(block)
    store.commit("bench", key, staging, build_record(staging, key=key, stage="merge", recipe="bench", started=time.time(), extra={}))


def _read_all(folder: Path) -> None:
    buffer = bytearray(_BLOCK)
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            while handle.readinto(buffer):
                pass


def _median(action) -> float:  # noqa: ANN001 - a callable
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    size = int(os.environ.get("FOUNDRY_BENCH_VERIFY_MIB", "1024")) * 1024 * 1024
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as work:
        store = open_store(str(Path(work) / "store"))
        for shards in (1, 4):
            key = f"merge-{shards}shards"
            _large_key(store, key, shards, size)
            folder = Path(store.location("bench", key))
            verify = _median(lambda key=key: store.fetch("bench", key))
            read = _median(lambda folder=folder: _read_all(folder))
            rows.append({"input": f"{size / 2**30:.2f} GiB in {shards} file(s)", "verify_s": verify, "read_s": read,
                         "verify_GBps": size / verify / 1e9, "stage_s": None, "verify_share": f"{verify / read:.2f}x one read"})
            store.discard("bench", key)
        rows += _demo(Path(work))
    write("verify", rows)


def _demo(work: Path) -> list[dict[str, object]]:
    """The offline demo, run once: each input check against the stage that reads that input."""
    shutil.copy(REPO / "recipes" / "tiny-demo.yml", work / "tiny-demo.yml")
    subprocess.run([sys.executable, "-m", "foundry", "run", "tiny-demo.yml"], cwd=work, check=True, capture_output=True)
    store = open_store(str(work / ".foundry" / "store"))
    keys = {item.key.partition("-")[0]: item for item in store.list_committed("tiny-demo")}
    rows = []
    for source, reader in (("merge", "quantize"), ("quantize", "publish")):
        verify = _median(lambda source=source: store.fetch("tiny-demo", keys[source].key))
        stage = float((store.marker("tiny-demo", keys[reader].key) or {}).get("seconds", 0.0))
        rows.append({"input": f"tiny demo {source} key ({keys[source].size_bytes / 2**20:.1f} MiB), read by {reader}", "verify_s": verify, "read_s": None,
                     "verify_GBps": keys[source].size_bytes / verify / 1e9, "stage_s": stage, "verify_share": f"{100 * verify / stage:.2f}% of {reader}"})
    return rows


if __name__ == "__main__":
    main()
