"""`foundry run` on the offline demo recipe: real merge, export, quantization and publish."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.hashing import sha256_file
from foundry.store import SUCCESS_MARKER

REPO = Path(__file__).resolve().parent.parent


def foundry(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def committed_files(store: Path) -> dict[str, str]:
    """sha256 of every committed file but the markers (which hold timings)."""
    return {
        str(path.relative_to(store)): sha256_file(path)
        for path in sorted(store.rglob("*"))
        if path.is_file() and path.name != SUCCESS_MARKER and ".staging" not in path.parts
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the demo recipe has run once, start to end."""
    work = tmp_path_factory.mktemp("demo")
    shutil.copy(REPO / "recipes" / "tiny-demo.yml", work / "tiny-demo.yml")
    result = foundry("run", "tiny-demo.yml", cwd=work)
    assert result.returncode == 0, result.stderr + result.stdout
    (work / "first-run.txt").write_text(result.stdout + result.stderr)
    return work


def test_first_run_runs_every_stage_and_publishes(demo: Path) -> None:
    output = (demo / "first-run.txt").read_text()
    for stage in ("merge", "quantize", "publish"):
        assert f"✓ {stage} " in output
    published = demo / ".foundry" / "published" / "models"
    catalog = json.loads((published / "models.json").read_text())
    entry = catalog["tiny-demo"]
    assert entry["id"] == "tiny-demo-q4"
    assert entry["urls"]["base"] == "/models/tiny-demo-q4/"
    assert entry["metadata"]["fusion"]["method"] == "slerp"
    assert entry["metadata"]["fusion"]["sources"] == ["tiny:llama-a", "tiny:llama-b"]
    assert {"fp32", "fp16", "q8", "q4"} <= set(entry["variants"])
    model = published / "tiny-demo-q4"
    config = json.loads((model / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"]["model_q4.onnx"] >= 2
    assert (model / "onnx" / "model_q4.onnx_data_1").exists()


def test_second_run_is_entirely_cached(demo: Path) -> None:
    result = foundry("run", "tiny-demo.yml", cwd=demo)
    assert result.returncode == 0, result.stderr
    assert "✓" not in result.stderr
    for stage in ("merge", "quantize", "publish"):
        assert f"• {stage} " in result.stderr and " cached" in result.stderr
    summary = json.loads(sorted((demo / ".foundry" / "runs").glob("*/summary.json"))[-1].read_text())
    assert [row["outcome"] for row in summary] == ["cached", "cached", "cached"]


def test_verify_passes_then_names_a_corrupted_chunk(demo: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo / ".foundry" / "published" / "models" / "tiny-demo-q4", model)
    assert foundry("verify", str(model), cwd=demo).returncode == 0
    chunk = model / "onnx" / "model_q4.onnx_data_1"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    result = foundry("verify", str(model), cwd=demo)
    assert result.returncode == 1
    assert "onnx/model_q4.onnx_data_1: sha256 differs" in result.stderr


def test_verify_a_stage_key_in_the_store(demo: Path) -> None:
    store = demo / ".foundry" / "store" / "tiny-demo"
    key = next(p.name for p in store.iterdir() if p.name.startswith("merge-"))
    result = foundry("verify", f"tiny-demo/{key}", cwd=demo)
    assert result.returncode == 0, result.stderr
    config = store / key / "config.json"
    original = config.read_bytes()
    config.write_text("{}")
    try:
        result = foundry("verify", f"tiny-demo/{key}", cwd=demo)
    finally:
        config.write_bytes(original)
    assert result.returncode == 1 and "config.json: size" in result.stderr


def test_a_stage_killed_before_commit_leaves_nothing_done_and_rerun_is_identical(demo: Path, tmp_path: Path) -> None:
    shutil.copy(REPO / "recipes" / "tiny-demo.yml", tmp_path / "tiny-demo.yml")
    killed = foundry("run", "tiny-demo.yml", "--until", "quantize", cwd=tmp_path, env={"FOUNDRY_FAULT_BEFORE_COMMIT": "quantize"})
    assert killed.returncode == 1
    assert "✗ quantize" in killed.stderr and "log:" in killed.stderr
    store = tmp_path / ".foundry" / "store" / "tiny-demo"
    quantize_keys = [p for p in store.iterdir() if p.name.startswith("quantize-")]
    assert not any((p / SUCCESS_MARKER).exists() for p in quantize_keys)
    rerun = foundry("run", "tiny-demo.yml", "--until", "quantize", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "• merge" in rerun.stderr and "✓ quantize" in rerun.stderr
    reference = {k: v for k, v in committed_files(demo / ".foundry" / "store").items() if "/publish-" not in k}
    assert committed_files(tmp_path / ".foundry" / "store") == reference


def test_only_needs_committed_inputs(tmp_path: Path) -> None:
    shutil.copy(REPO / "recipes" / "tiny-demo.yml", tmp_path / "tiny-demo.yml")
    result = foundry("run", "tiny-demo.yml", "--only", "publish", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not committed" in result.stderr and "Traceback" not in result.stderr


def test_a_failing_stage_shows_its_error_and_log(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 512, "hidden_size": 64}))
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"models:\n  - model: tiny:llama-a\n  - model: {pickled}\nmerge_method: linear\nparameters: {{weight: 0.5}}\n")
    result = foundry("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 2
    assert "weights are pickles only (pytorch_model.bin)" in result.stderr
    log = tmp_path / result.stderr.split("log: ")[1].strip()
    assert log.exists() and "pickles only" in log.read_text()
