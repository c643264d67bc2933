"""The catalogue page in headless Chromium: load time, first-token latency and tokens per
second of every published variant, on WebAssembly and on WebGPU, in one browser run.

What a person sees: `foundry serve` serves the published folder (page, models.json, local
transformers.js), and tests/web/browser.mjs drives the page: pick a device, press Load, send
the same prompt, read the figures the page shows in its table of tries (each load in a fresh
worker). Load: from Load to the model ready (download from loopback, session creation);
first token: from Send to the first new token (template, prefill, the first step); tokens/s:
over the tokens after the first. Greedy, at most TOKENS tokens; a model may stop earlier at
its end-of-sequence token (the tokens column says how many).

Two models published by the real stages: the tiny demo (`foundry run recipes/tiny-demo.yml`)
and a randomly initialised ~22M-parameter Llama (6 layers, 512 wide, bench_finetune's).
With no GPU, Chromium's WebGPU is SwiftShader, a software adapter without shader-f16: its
figures say what the page does there (the f16 variants are not offered), not what a GPU does.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from bench.report import write

REPO = Path(__file__).resolve().parent.parent
BROWSER = REPO / "tests" / "web" / "browser.mjs"
CHROMIUM = "/usr/bin/chromium"
TOKENS = 16
WAIT_MS = 600_000          # one load or one reply; SwiftShader decodes a large fp32 graph slowly
PROMPT = "Tell me a long story about a lighthouse keeper."
DEVICES = ("wasm", "webgpu")
LARGE_ID = "bench-llama-22m"


def publish_tiny_demo(work: Path) -> Path:
    """The tiny demo as `foundry run` publishes it, into `work`/models."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny-demo.yml").read_text())
    recipe["publish"]["to"] = str(work / "models")
    work.mkdir(parents=True)
    (work / "tiny-demo.yml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    subprocess.run([sys.executable, "-m", "foundry", "run", "tiny-demo.yml"], cwd=work, check=True, capture_output=True)
    return work / "models"


def publish_large(work: Path, to: Path) -> None:
    """A random-weight 22M Llama through the quantize (every level) and publish stages, into `to`."""
    from bench.bench_finetune import make_model
    from foundry.stagespec import StageSpec
    from foundry.variants import VARIANT_FILES
    from jobs.stages import publish, quantize

    quantized, staged = work / "quantized", work / "staged"
    quantized.mkdir(parents=True)
    staged.mkdir()
    spec = {"recipe": "bench", "store": str(work / "store")}
    quantize.run(StageSpec(stage="quantize", key="quantize-000000000000", params={"variants": list(VARIANT_FILES)}, **spec), {"model": make_model(work / "model")}, quantized)
    params = {"to": str(to), "entry": {"id": LARGE_ID, "name": "Random Llama 22M (6x512)"}}
    publish.run(StageSpec(stage="publish", key="publish-000000000000", params=params, **spec), {"onnx": quantized}, staged)


def plan(catalogue: dict[str, Any]) -> list[dict[str, Any]]:
    """The page's steps: every model's every variant on every device, the same prompt each time."""
    return [{"device": device, "model": key, "variant": level, "prompt": PROMPT, "max_new_tokens": TOKENS}
            for key, entry in catalogue.items() for device in DEVICES for level in entry["variants"]]


def drive(url: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The steps in one Chromium run of the catalogue page, WebGPU enabled."""
    query = urllib.parse.urlencode({"transformers": "/_foundry/transformers/transformers.min.js", "ort": "/_foundry/onnxruntime-web/"})
    job = {"mode": "page", "chromium": CHROMIUM, "webgpu": True, "url": f"{url}/?{query}", "steps": steps, "timeout_ms": WAIT_MS}
    result = subprocess.run(["node", str(BROWSER), json.dumps(job)], cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{BROWSER} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def row(step: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    """One table row: the figures of a try, or why there is none."""
    tried = done.get("try") or {}

    def figure(name: str) -> float | None:
        return float(tried[name]) if tried.get(name) not in (None, "null") else None

    note = done.get("unavailable") or tried.get("error") or done.get("error") or ("" if done.get("reply") and not done["reply"]["error"] else "no reply")
    return {
        "model": step["model"], "device": step["device"], "variant": step["variant"],
        "load_s": figure("loadS"), "first_token_ms": figure("firstTokenMs"), "tokens_per_s": figure("tokensPerS"),
        "tokens": int(tried["tokens"]) if tried.get("tokens") else None, "note": note,
    }


def main() -> None:
    if not (shutil.which("node") and os.access(CHROMIUM, os.X_OK) and (REPO / "node_modules" / "playwright-core").is_dir()):
        raise SystemExit("bench_browser needs Node, node_modules (`make web`) and Debian's chromium")
    from foundry.serve.server import start_server

    with tempfile.TemporaryDirectory(prefix="bench-browser-") as temporary:
        work = Path(temporary)
        to = publish_tiny_demo(work / "tiny")
        publish_large(work / "large", to)
        steps = plan(json.loads((to / "models.json").read_text()))
        server = start_server(to)
        try:
            output = drive(server.url, steps)
        finally:
            server.stop()
    print(output["adapter"])
    write("browser", [row(step, done) for step, done in zip(steps, output["steps"], strict=True)])


if __name__ == "__main__":
    main()
