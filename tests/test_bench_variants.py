"""`foundry bench-variants`: every variant of a real tiny quantized model measured with ONNX
Runtime: size with every external-data chunk, load time, speed, and quality against fp32
(next-token agreement and KL divergence, or an evaluation suite's metrics as deltas).

One quantize run of tiny:llama-a (every level this ONNX Runtime supports) and one publish
of it with tiny shards are shared by the module; the command runs once on the published folder."""

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundry.errors import UserError
from foundry.stagespec import StageInput, StageSpec
from foundry.variants import VARIANT_FILES
from jobs.stages import publish, quantize
from jobs.tiny.models import build
from jobs.tools.bench_variants import bench, mean_kl, size_on_disk
from tests.png_check import assert_png

REPO = Path(__file__).resolve().parent.parent
SUITE_ROWS = [
    {"query": "The capital of France is", "choices": ["Paris", "London", "the sea"], "gold": 0},
    {"query": "1, 1, 2, 3, 5,", "choices": ["8", "7"], "gold": 0},
    {"query": "The quick brown fox jumps over the lazy", "choices": ["dog", "cat"], "gold": 0},
]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A quantize key's folder, as the quantize stage writes it, and its report."""
    out = tmp_path_factory.mktemp("quantized")
    spec = StageSpec(stage="quantize", recipe="bench", key="quantize-0123456789ab", store="file:///unused", params={"variants": list(VARIANT_FILES)})
    return out, quantize.run(spec, {"model": build("llama-a")}, out)


@pytest.fixture(scope="module")
def published(quantized: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same variants laid out for transformers.js, external data in chunks of at most 50 kB."""
    to = tmp_path_factory.mktemp("published")
    spec = StageSpec(stage="publish", recipe="bench", key="publish-0123456789ab", store="file:///unused", inputs={"onnx": StageInput(key="quantize-0123456789ab")},
                     params={"to": str(to), "shard_size_mb": 0.05, "entry": {"id": "bench-q4", "name": "Bench"}, "variants": list(VARIANT_FILES)})
    publish.run(spec, {"onnx": quantized[0]}, tmp_path_factory.mktemp("publish-out"))
    return to / "bench-q4"


@pytest.fixture(scope="module")
def command(published: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-report")
    result = subprocess.run([sys.executable, "-m", "foundry", "bench-variants", str(published), "--tokens", "4", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    return result, out


def test_every_variant_is_reported_and_quantization_shrinks_it(command: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = command
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench-variants.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == list(VARIANT_FILES) and report["reference"] == "fp32"
    assert report["quality"] == "next-token agreement" and report["prompts"] == len(quantize.DEFAULT_PROMPTS) and report["positions"] > 40
    sizes = [rows[level]["size_bytes"] for level in rows]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes
    assert rows["fp32"]["top1_agreement"] == 1.0 and rows["fp32"]["mean_kl"] == 0.0
    for row in rows.values():
        assert row["load_seconds"] > 0 and row["tokens_per_second"] > 0
        assert 0.0 <= row["top1_agreement"] <= 1.0 and row["mean_kl"] >= 0.0
    # Against ONNX fp32 as the quantize stage measured against PyTorch: fp16 keeps every
    # token (measured 1.0), and the KL grows with coarser weights (measured fp16 3.5e-7,
    # q8 7.4e-4, q4 0.013, q2 0.26: orders of magnitude apart).
    assert rows["fp16"]["top1_agreement"] >= 0.99
    assert rows["fp16"]["mean_kl"] < rows["q8"]["mean_kl"] < rows["q4"]["mean_kl"]
    if "q2" in rows:
        assert rows["q4"]["mean_kl"] < rows["q2"]["mean_kl"]


def test_report_files_and_terminal_table(command: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = command
    for level in list(VARIANT_FILES):
        assert f"│ {level} " in result.stdout
    markdown = (out / "bench-variants.md").read_text()
    assert "| variant | size (MiB) | load (s) | tokens/s | top-1 agreement vs fp32 | mean KL vs fp32 (nats) |" in markdown
    assert all(f"\n| {level} | " in markdown for level in list(VARIANT_FILES))
    assert_png(out / "bench-variants.png")


def test_size_counts_the_graph_and_every_chunk(quantized: tuple[Path, dict[str, Any]], published: Path) -> None:
    folder, report = quantized
    for level, record in report["variants"].items():
        assert size_on_disk(folder, level) == record["size_bytes"]
        name = VARIANT_FILES[level]
        files = [path for path in (published / "onnx").iterdir() if path.name == name or path.name.startswith(name + "_data")]
        assert size_on_disk(published, level) == sum(path.stat().st_size for path in files)
    assert (published / "onnx" / "model.onnx_data_1").exists()      # fp32 spans several chunks here


def test_quality_on_a_suite_is_a_delta_from_fp32(quantized: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    suite = tmp_path / "facts.jsonl"
    suite.write_text("".join(json.dumps(row) + "\n" for row in SUITE_ROWS))
    report = bench(quantized[0], suites=[str(suite)], limit=2, tokens=2)
    assert report["quality"] == "suites" and report["suites"] == [str(suite)] and report["limit"] == 2
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == list(VARIANT_FILES)
    reference = rows["fp32"]["metrics"]
    assert set(reference) == {"facts.acc", "facts.acc_norm"}
    for row in rows.values():
        assert row["metrics"].keys() == reference.keys()
        assert row["deltas"] == {name: pytest.approx(value - reference[name]) for name, value in row["metrics"].items()}
    assert rows["fp32"]["deltas"] == {"facts.acc": 0.0, "facts.acc_norm": 0.0}


def test_mean_kl_is_the_hand_computed_divergence() -> None:
    reference = [np.array([[0.0, math.log(3.0)], [0.0, 0.0]])]       # p = (1/4, 3/4), then (1/2, 1/2)
    variant = [np.array([[0.0, 0.0], [0.0, 0.0]])]                    # q = (1/2, 1/2) at both positions
    first = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert mean_kl(reference, variant) == pytest.approx(first / 2)
    assert mean_kl(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_a_folder_without_variants_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"^{tmp_path}: no ONNX variants \(none of onnx/model.onnx, .*\); give a published model folder or a quantize key$"):
        bench(tmp_path)


def test_limit_without_a_suite_is_refused(quantized: tuple[Path, dict[str, Any]]) -> None:
    with pytest.raises(UserError, match=r"^--limit 5: limits the items of a --suite, and none is given"):
        bench(quantized[0], limit=5)
