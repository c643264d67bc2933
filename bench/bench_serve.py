"""`foundry serve` against plain ONNX Runtime: tokens per second on the same q4 variant.

Served: `foundry serve` in its own process, asked by a streaming client over HTTP (the
client of `foundry bench-latency`: greedy chat completion, `ignore_eos`, every token a
server-sent event), from request sent to [DONE]. Plain: jobs/tools/query.py's OnnxGenerator in a
process of its own too (so that neither side shares a process with torch or the client),
the loop a Python program would write: template and tokenize the same chat, generate the
same number of tokens greedily, decode. Both include the prompt's prefill.

Two models, both published by the real quantize and publish stages: the tiny Llama of the
tests (2 layers, 64 wide: well over a thousand tokens per second, so the server's cost per
token shows in full) and a randomly initialised ~22M-parameter Llama (6 layers, 512 wide,
the model of bench_finetune), closer to what a token costs in a real model. Rounds
alternate plain and served, and the ratio is the median of each round's served/plain (the
two runs of a round share the machine's load, which on a shared box is most of the noise).
Goal: served >= 90% of plain.

On a box shared with other work, wall-clock rates also depend on how the scheduler shares
the cores: the server runs two busy threads (the model's worker, and the request's thread
that detokenizes and writes while the next token is computed) where the plain loop runs
one, so under load the server can come out ahead. The CPU time each process spends per
token (user + system, all threads, from /proc) is reported beside the rates: it is the
server's cost per token whatever the load.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import write

ROUNDS = 20
TOKENS = 200              # the tiny models hold 256 positions; the prompt takes ~25
GOAL = 0.9
# ONNX Runtime's threads spin for a while after a run; without a pause, whichever side runs
# right after the other shares the cores with the other's spinning threads.
SETTLE_S = 0.2
MODEL_ID = "bench-serve"
PROMPT = "Tell me a long story about a lighthouse keeper."


def publish_q4(model: Path, work: Path) -> Path:
    """`model` through the quantize (q4 only) and publish stages; the publish folder."""
    from foundry.stagespec import StageSpec
    from jobs.stages import publish, quantize

    quantized, staged = work / "quantized", work / "staged"
    quantized.mkdir(parents=True)
    staged.mkdir()
    quantize.run(StageSpec(stage="quantize", recipe="b", key="quantize-000000000000", store=str(work / "store"), params={"variants": ["q4"]}), {"model": model}, quantized)
    params = {"to": str(work / "published"), "entry": {"id": MODEL_ID}}
    publish.run(StageSpec(stage="publish", recipe="b", key="publish-000000000000", store=str(work / "store"), params=params), {"onnx": quantized}, staged)
    return work / "published"


def plain_rate(generator: Any) -> float:
    from jobs.tools.query import chat_ids

    started = time.perf_counter()
    ids = chat_ids(generator.tokenizer, [{"role": "user", "content": PROMPT}])
    new = list(generator.token_ids(ids, TOKENS, stops=set()))
    generator.tokenizer.decode(new, skip_special_tokens=True)
    return len(new) / (time.perf_counter() - started)


def plain_worker(published: Path) -> None:
    """The plain side, in a child process: one timed generation per line read, its rate printed."""
    from jobs.tools.query import OnnxGenerator

    generator = OnnxGenerator(published / MODEL_ID, "q4")
    for _ in sys.stdin:
        print(plain_rate(generator), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare(label: str, published: Path) -> dict[str, Any]:
    from foundry.serve.latency import stream_once

    server = subprocess.Popen([str(Path(sys.executable).parent / "foundry"), "serve", str(published), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    plain_process = subprocess.Popen([sys.executable, "-m", "bench.bench_serve", "plain", str(published)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def plain_once() -> float:
        assert plain_process.stdin is not None and plain_process.stdout is not None
        plain_process.stdin.write("go\n")
        plain_process.stdin.flush()
        return float(plain_process.stdout.readline())

    try:
        line = server.stdout.readline() if server.stdout else ""
        found = re.search(r"at (http://\S+?)/?$", line.strip())
        if found is None:
            raise RuntimeError(f"foundry serve did not start: {line!r}")
        url = found.group(1)
        plain_once()
        stream_once(url, MODEL_ID, TOKENS, PROMPT)           # warm-up, both sides
        plain, served, first = [], [], []
        cpu = {"plain": -cpu_seconds(plain_process.pid), "serve": -cpu_seconds(server.pid)}
        for _ in range(ROUNDS):
            time.sleep(SETTLE_S)
            plain.append(plain_once())
            time.sleep(SETTLE_S)
            sample = stream_once(url, MODEL_ID, TOKENS, PROMPT)
            if sample.tokens != TOKENS:
                raise RuntimeError(f"foundry serve generated {sample.tokens} tokens, not {TOKENS}")
            served.append(sample.tokens_per_s)
            first.append(sample.first_token_s)
        cpu = {"plain": cpu["plain"] + cpu_seconds(plain_process.pid), "serve": cpu["serve"] + cpu_seconds(server.pid)}
    finally:
        for process in (server, plain_process):
            process.terminate()
            process.wait(timeout=30)
    ratio = statistics.median(one / other for one, other in zip(served, plain, strict=True))
    return {
        "model": label, "tokens": TOKENS, "rounds": ROUNDS,
        "plain_tokens_per_s": statistics.median(plain), "serve_tokens_per_s": statistics.median(served),
        "serve_first_token_ms": statistics.median(first) * 1000, "ratio": ratio, "goal": GOAL, "meets_goal": ratio >= GOAL,
        "plain_cpu_us_per_token": cpu["plain"] / (ROUNDS * TOKENS) * 1e6, "serve_cpu_us_per_token": cpu["serve"] / (ROUNDS * TOKENS) * 1e6,
    }


def main() -> None:
    from bench.bench_finetune import make_model
    from jobs.tiny.models import build

    models: dict[str, Callable[[Path], Path]] = {
        "tiny Llama (2x64)": lambda _: build("llama-a"),
        "22M Llama (6x512)": lambda work: make_model(work / "model"),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temporary:
        for index, (label, make) in enumerate(models.items()):
            work = Path(temporary) / str(index)
            work.mkdir()
            rows.append(compare(label, publish_q4(make(work), work)))
    write("serve", rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["plain"]:
        plain_worker(Path(sys.argv[2]))
    else:
        main()
