"""The merge stage gives exactly mergekit-yaml's tensors, and refuses pickles by default."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from jobs.entry import run_stage
from jobs.stages.merge import MERGE_SEED
from jobs.tiny.models import build

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"

CONFIGS = {
    "linear": {
        "models": [{"model": "tiny:llama-a", "parameters": {"weight": 0.7}}, {"model": "tiny:llama-b", "parameters": {"weight": 0.3}}],
        "merge_method": "linear",
    },
    "slerp": {
        "models": [{"model": "tiny:llama-a"}, {"model": "tiny:llama-b"}],
        "merge_method": "slerp", "base_model": "tiny:llama-a", "parameters": {"t": 0.4},
    },
    "task_arithmetic": {
        "models": [{"model": "tiny:llama-b", "parameters": {"weight": 0.6}}, {"model": "tiny:llama-c", "parameters": {"weight": 0.4}}],
        "merge_method": "task_arithmetic", "base_model": "tiny:llama-a",
    },
    "ties": {
        "models": [{"model": "tiny:llama-b", "parameters": {"weight": 0.5, "density": 0.6}}, {"model": "tiny:llama-c", "parameters": {"weight": 0.5, "density": 0.6}}],
        "merge_method": "ties", "base_model": "tiny:llama-a", "parameters": {"normalize": True},
    },
    "dare_ties": {
        "models": [{"model": "tiny:llama-b", "parameters": {"weight": 0.5, "density": 0.5}}, {"model": "tiny:llama-c", "parameters": {"weight": 0.5, "density": 0.5}}],
        "merge_method": "dare_ties", "base_model": "tiny:llama-a",
    },
}


def _merge_with_foundry(config: dict, tmp: Path, **params: object) -> Path:
    spec = StageSpec(stage="merge", recipe="t", key="merge-test", store=str(tmp / "store"), params={"mergekit": config, **params})
    run_stage(spec)
    return tmp / "store" / "t" / "merge-test"


def _with_local_paths(config: dict) -> dict:
    text = json.dumps(config)
    for name in ("llama-a", "llama-b", "llama-c"):
        text = text.replace(f"tiny:{name}", str(build(name)))
    return json.loads(text)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_tensors_equal_mergekit_yaml(method: str, tmp_path: Path) -> None:
    ours = _merge_with_foundry(CONFIGS[method], tmp_path)
    config_file = tmp_path / "mergekit.yml"
    config_file.write_text(yaml.safe_dump(_with_local_paths(CONFIGS[method])))
    subprocess.run([str(MERGEKIT_YAML), str(config_file), str(tmp_path / "reference"), "--random-seed", str(MERGE_SEED), "--quiet"], check=True, capture_output=True)
    mine, theirs = load_file(ours / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors")
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    # The merge really mixed the inputs: it equals neither parent.
    parent = load_file(build("llama-a") / "model.safetensors")
    assert any(not torch.equal(mine[n], parent[n]) for n in mine)


def test_output_is_complete_and_safetensors_only(tmp_path: Path) -> None:
    out = _merge_with_foundry(CONFIGS["slerp"], tmp_path)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "_SUCCESS.json"} <= names
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in out.iterdir())
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    # The recorded configuration is the recipe's, not this machine's cache paths.
    assert "tiny:llama-a" in (out / "mergekit_config.yml").read_text()
    marker = json.loads((out / "_SUCCESS.json").read_text())
    assert marker["versions"]["mergekit"] == "0.1.5"
    assert {entry["path"] for entry in marker["files"]} == names - {"_SUCCESS.json"}


def _pickle_only_model(tmp: Path) -> Path:
    folder = tmp / "pickled"
    folder.mkdir()
    source = build("llama-b")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_pickle_is_refused_unless_allowed(tmp_path: Path) -> None:
    pickled = _pickle_only_model(tmp_path)
    config = {"models": [{"model": "tiny:llama-a"}, {"model": str(pickled)}], "merge_method": "slerp", "base_model": "tiny:llama-a", "parameters": {"t": 0.5}}
    with pytest.raises(UserError, match="weights are pickles only .*allow_pickle: true"):
        _merge_with_foundry(config, tmp_path)
    assert not (tmp_path / "store" / "t" / "merge-test" / "_SUCCESS.json").exists()
    out = _merge_with_foundry(config, tmp_path, allow_pickle=True)
    assert (out / "model.safetensors").exists()


def test_safetensors_are_preferred_over_pickles(tmp_path: Path) -> None:
    both = _pickle_only_model(tmp_path)
    save_file(load_file(build("llama-b") / "model.safetensors"), both / "model.safetensors")
    config = {"models": [{"model": "tiny:llama-a"}, {"model": str(both)}], "merge_method": "slerp", "base_model": "tiny:llama-a", "parameters": {"t": 0.5}}
    assert (_merge_with_foundry(config, tmp_path) / "_SUCCESS.json").exists()
