"""The merge stage against `mergekit-yaml` on the same recipe: wall time and peak memory.

Both run as fresh processes on two ~170M-parameter Llama-shaped models made here (random
weights; no hub), alternating, so neither gets a warmer page cache.
"""

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from bench.report import measured, write

REPS = 5
GOAL_RATIO = 1.10
SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000}


def make_model(folder: Path, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.tiny.models import build

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**SHAPE)).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(build("llama-a") / name, folder / name)
    return folder


def main() -> None:
    from foundry.stagespec import StageSpec

    work = Path(tempfile.mkdtemp(prefix="foundry-bench-merge-"))
    try:
        a, b = make_model(work / "a", 1), make_model(work / "b", 2)
        config = {"models": [{"model": str(a)}, {"model": str(b)}], "merge_method": "slerp", "base_model": str(a), "parameters": {"t": 0.4}, "dtype": "float32"}
        (work / "mergekit.yml").write_text(yaml.safe_dump(config))
        spec = StageSpec(stage="merge", recipe="bench", key="merge-bench", store=str(work / "store"), params={"mergekit": config}).write(work / "spec.json")
        bin_dir = Path(sys.executable).parent
        runs: dict[str, list[tuple[float, int]]] = {"mergekit-yaml": [], "foundry merge stage": []}
        for _ in range(REPS):
            shutil.rmtree(work / "out", ignore_errors=True)
            runs["mergekit-yaml"].append(measured([str(bin_dir / "mergekit-yaml"), str(work / "mergekit.yml"), str(work / "out"), "--quiet"]))
            shutil.rmtree(work / "store", ignore_errors=True)
            runs["foundry merge stage"].append(measured([sys.executable, "-m", "jobs", str(spec)]))
        reference = statistics.median(t for t, _ in runs["mergekit-yaml"])
        reference_rss = max(m for _, m in runs["mergekit-yaml"])
        rows = []
        for label, samples in runs.items():
            wall = statistics.median(t for t, _ in samples)
            peak = max(m for _, m in samples)
            rows.append({
                "command": label, "median_wall_s": wall, "min_wall_s": min(t for t, _ in samples), "peak_rss_mib": round(peak / 1024, 1),
                "wall_vs_mergekit": round(wall / reference, 3), "rss_vs_mergekit": round(peak / reference_rss, 3),
                "meets_goal": wall <= reference * GOAL_RATIO and peak <= reference_rss * 1.02,
            })
        write("merge", rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
