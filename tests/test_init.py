"""`foundry init`: a starter recipe for every preset family that `foundry lint` accepts as
written, pairs merged, unexportable families with quantize and publish commented, and
one-line refusals (an existing file, a pair that cannot merge, an unknown model)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foundry.errors import UserError
from foundry.recipe.load import load_recipe
from foundry.registry.load import PRESETS_ENV, load_registry
from foundry.starter import write_starter


@pytest.fixture(autouse=True)
def _offline_and_no_user_presets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user presets, and an empty hub cache: hub models are linted as a new user's would be."""
    monkeypatch.delenv(PRESETS_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def foundry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd)


def test_a_starter_for_every_preset_lints_as_written(tmp_path: Path) -> None:
    """Every preset, so every family and every variant of one (Gemma 3 1B exports, 4B does not)."""
    registry = load_registry()
    folder = tmp_path / "recipes"
    names = {alias: "starter-" + alias.replace(":", "-") for alias in registry.presets}
    for alias, name in names.items():
        write_starter(folder / f"{name}.yml", [alias], registry)
    write_starter(folder / "starter-pair.yml", ["tiny:llama-a", "tiny:llama-b"], registry)
    linted = foundry("lint", str(folder), cwd=tmp_path)
    assert linted.returncode == 0, linted.stderr
    assert len([line for line in linted.stdout.splitlines() if line.startswith("ok ")]) == len(names) + 1
    for alias, name in names.items():
        preset = registry.get(alias)
        recipe = load_recipe(folder / f"{name}.yml")
        assert recipe.models == [{"model": preset.hub_id}] and not recipe.merges
        assert (recipe.quantize is not None) == (preset.exporter is not None), alias  # commented where no exporter takes it
        assert recipe.finetune is None and recipe.evaluate is None  # there, commented
    assert {"lfm2", "granitemoehybrid", "gemma3", "qwen3", "smollm3"} <= {preset.family for preset in registry.presets.values()}
    pair = load_recipe(folder / "starter-pair.yml")
    assert (pair.merge_method, pair.base_model, pair.parameters, pair.publish is not None) == ("slerp", "tiny:llama-a", {"t": 0.5}, True)


def test_the_commented_blocks_lint_once_uncommented(tmp_path: Path) -> None:
    """The fine-tune and evaluate blocks are recipe text, not prose: uncommented, they lint."""
    path = write_starter(tmp_path / "live.yml", ["tiny:llama-a", "tiny:llama-b"], load_registry())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    text = path.read_text()
    lines, block = [], False
    for line in text.splitlines():
        block = line in ("# finetune:", "# evaluate:") or (block and line.startswith("#   "))
        lines.append(line[2:] if block else line)
    live = "\n".join(lines)
    (tmp_path / "live.yml").write_text(live)
    data = yaml.safe_load(live)
    assert data["finetune"]["dataset"] == "data/train.jsonl" and data["evaluate"]["suites"] == ["arc_easy"]
    linted = foundry("lint", "live.yml", cwd=tmp_path)
    assert linted.returncode == 0, linted.stderr


def test_a_family_no_exporter_takes_says_why_its_publish_is_commented(tmp_path: Path) -> None:
    text = write_starter(tmp_path / "lfm.yml", ["lfm2:350m"], load_registry()).read_text()
    assert "# quantize and publish are commented: no exporter takes lfm2:350m (Lfm2ForCausalLM) yet" in text
    assert "\n# quantize:\n" in text and "\nquantize:" not in text


def test_refusals_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "mine.yml"
    existing.write_text("# mine\n")
    refused = foundry("init", "mine.yml", "--model", "qwen3:0.6b", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr == "error: mine.yml: already exists; pick another name, or pass --force to overwrite it\n"
    assert existing.read_text() == "# mine\n"
    forced = foundry("init", "mine.yml", "--model", "qwen3:0.6b", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "model: Qwen/Qwen3-0.6B" in existing.read_text()
    mismatched = foundry("init", "pair.yml", "-m", "qwen3:1.7b", "-m", "llama3.2:1b", cwd=tmp_path)
    assert mismatched.returncode == 2 and mismatched.stderr.count("\n") == 1
    assert "qwen3:1.7b and llama3.2:1b cannot be merged: architecture qwen3 and llama differ" in mismatched.stderr
    assert not (tmp_path / "pair.yml").exists() and not list(tmp_path.glob(".*.init"))
    with pytest.raises(UserError, match="--model no-such-model: not a registry alias"):
        write_starter(tmp_path / "x.yml", ["no-such-model"], load_registry())
    with pytest.raises(UserError, match="give one --model .* or two .*, not 3"):
        write_starter(tmp_path / "x.yml", ["tiny:llama-a"] * 3, load_registry())
    with pytest.raises(UserError, match=r"x\.txt: a recipe file ends in \.yml or \.yaml"):
        write_starter(tmp_path / "x.txt", ["tiny:llama-a"], load_registry())


def test_a_hub_model_the_registry_does_not_know_is_taken_as_written(tmp_path: Path) -> None:
    path = write_starter(tmp_path / "coder.yml", ["qwen2.5:1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct"], load_registry())
    recipe = load_recipe(path)
    assert recipe.models == [{"model": "Qwen/Qwen2.5-1.5B-Instruct"}, {"model": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}]
    assert "the registry's preset for qwen2.5:1.5b" in path.read_text()


def test_init_never_imports_torch(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "foundry", "init", "light.yml", "-m", "qwen3:1.7b"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "foundry" in imported and not {"torch", "transformers", "peft", "onnxruntime"} & imported
