"""1 GiB of chunk files to an S3 endpoint and back: Foundry's transfers against plain boto3.

The endpoint is moto's ThreadedMotoServer on loopback, started here in a process of its own
(so the server does not share the client's interpreter lock). The data is what a publish
uploads: chunks of the default 100 MB shard size. Each round times, on the same endpoint,
boto3 `upload_file`/`download_file` with default settings (file after file, as a script
would call them) and Foundry's `upload_files`/`download_files` with default settings, which
hash every byte with sha256 and check it against the expected digest. The order of the two
alternates between rounds; the table shows the median of the rounds.

Caveat, reported as is: moto pays a lot per request (a ranged GET reads the whole object, a
multipart upload is concatenated on completion), so fewer, larger requests win by more on
moto than they would on S3 or MinIO.
"""

import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import write

MIB = 1024 * 1024
TOTAL = 1024 * MIB
CHUNK = 100 * MIB
ROUNDS = 3
BUCKET = "bench"
_SERVER = (
    "import logging, sys\n"
    "from moto.server import ThreadedMotoServer\n"
    "logging.getLogger('werkzeug').setLevel(logging.WARNING)\n"
    "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "server.start()\n"
    "print(server.get_host_and_port()[1], flush=True)\n"
    "sys.stdin.read()\n"
)


def make_chunks(folder: Path) -> dict[Path, str]:
    """1 GiB in chunk files of at most 100 MiB, with their sha256."""
    rng = random.Random(0)
    chunks: dict[Path, str] = {}
    left, index = TOTAL, 0
    while left:
        size = min(CHUNK, left)
        data = rng.randbytes(size)
        path = folder / f"model_q4.onnx_data{f'_{index}' if index else ''}"
        path.write_bytes(data)
        chunks[path] = hashlib.sha256(data).hexdigest()
        left, index = left - size, index + 1
    return chunks


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    work = Path(tempfile.mkdtemp(prefix="foundry-bench-s3-"))
    try:
        assert server.stdout is not None
        endpoint = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        rows = run_rounds(work, endpoint)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    write("s3", rows)


def run_rounds(work: Path, endpoint: str) -> list[dict[str, object]]:
    import boto3

    from foundry.hashing import sha256_file
    from foundry.s3.client import client
    from foundry.s3.transfer import Download, Upload, download_files, upload_files

    (work / "up").mkdir()
    chunks = make_chunks(work / "up")
    plain = boto3.client("s3", endpoint_url=endpoint)       # default settings, as a script would have them
    ours = client()
    plain.create_bucket(Bucket=BUCKET)

    def plain_up() -> None:
        for path in chunks:
            plain.upload_file(str(path), BUCKET, f"boto3/{path.name}")

    def plain_down() -> None:
        for path in chunks:
            plain.download_file(BUCKET, f"boto3/{path.name}", str(work / "down-boto3" / path.name))

    def hash_after() -> None:
        for path in chunks:
            assert sha256_file(work / "down-boto3" / path.name) == chunks[path]

    def ours_up() -> None:
        upload_files(ours, BUCKET, [Upload(path, f"foundry/{path.name}", digest) for path, digest in chunks.items()], progress=False)

    def ours_down() -> None:
        download_files(ours, BUCKET, [Download(f"foundry/{path.name}", work / "down-foundry" / path.name, path.stat().st_size, digest)
                                      for path, digest in chunks.items()], progress=False)

    times: dict[str, list[float]] = {name: [] for name in ("plain_up", "ours_up", "plain_down", "ours_down", "hash")}
    for round_ in range(ROUNDS):
        for folder in ("down-boto3", "down-foundry"):
            shutil.rmtree(work / folder, ignore_errors=True)
            (work / folder).mkdir()
        pairs = [("plain_up", plain_up), ("ours_up", ours_up)], [("plain_down", plain_down), ("ours_down", ours_down)]
        for pair in pairs:
            for name, action in pair if round_ % 2 == 0 else reversed(pair):
                times[name].append(timed(action))
        times["hash"].append(timed(hash_after))
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {values[-1]:.2f}s" for name, values in times.items()), file=sys.stderr)

    median = {name: statistics.median(values) for name, values in times.items()}
    size_mib = TOTAL // MIB

    def row(method: str, direction: str, seconds: float, checked: str, baseline: float) -> dict[str, object]:
        return {"method": method, "direction": direction, "files": len(chunks), "MiB": size_mib, "seconds": round(seconds, 2),
                "MiB_per_s": round(size_mib / seconds, 1), "sha256_checked": checked, "vs_boto3": round(baseline / seconds, 2),
                "rounds": ROUNDS, "all_seconds": [round(value, 2) for value in times_of(method, direction)]}

    def times_of(method: str, direction: str) -> list[float]:
        name = ("ours" if method.startswith("foundry") else "plain") + ("_up" if direction == "upload" else "_down")
        return times[name] if method != "boto3 download_file + hashlib after" else [a + b for a, b in zip(times["plain_down"], times["hash"], strict=True)]

    return [
        row("boto3 upload_file (defaults)", "upload", median["plain_up"], "no", median["plain_up"]),
        row("foundry upload_files", "upload", median["ours_up"], "yes", median["plain_up"]),
        row("boto3 download_file (defaults)", "download", median["plain_down"], "no", median["plain_down"]),
        row("boto3 download_file + hashlib after", "download", median["plain_down"] + median["hash"], "yes", median["plain_down"]),
        row("foundry download_files", "download", median["ours_down"], "yes", median["plain_down"]),
    ]


if __name__ == "__main__":
    main()
