"""Stage keys: the same recipe gives the same keys; any upstream change moves every key below it."""

from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.plan import plan
from foundry.recipe.load import load_recipe

BASE = """
models: [{model: tiny:llama-a}, {model: tiny:llama-b}]
merge_method: slerp
base_model: tiny:llama-a
parameters: {t: 0.4}
quantize: {variants: [q4]}
publish: {to: ./out}
"""


def keys(tmp_path: Path, text: str, name: str = "r") -> dict[str, str]:
    path = tmp_path / f"{name}.yml"
    path.write_text(text)
    return {stage.stage: stage.key for stage in plan(load_recipe(path)).stages}


def test_same_recipe_same_keys_and_key_shape(tmp_path: Path) -> None:
    first, second = keys(tmp_path, BASE), keys(tmp_path, BASE)
    assert first == second
    assert list(first) == ["merge", "quantize", "publish"]
    assert all(key.startswith(f"{stage}-") and len(key) == len(stage) + 13 for stage, key in first.items())


def test_a_merge_parameter_changes_every_key(tmp_path: Path) -> None:
    before, after = keys(tmp_path, BASE), keys(tmp_path, BASE.replace("t: 0.4", "t: 0.5"))
    assert all(before[stage] != after[stage] for stage in before)


def test_a_publish_change_moves_only_publish(tmp_path: Path) -> None:
    before, after = keys(tmp_path, BASE), keys(tmp_path, BASE.replace("to: ./out", "to: ./elsewhere"))
    assert before["merge"] == after["merge"] and before["quantize"] == after["quantize"]
    assert before["publish"] != after["publish"]


def test_a_single_model_recipe_starts_from_the_model(tmp_path: Path) -> None:
    path = tmp_path / "single.yml"
    path.write_text("models: [{model: tiny:gpt2-a}]\nquantize: {variants: [q8]}\n")
    the_plan = plan(load_recipe(path))
    assert [s.stage for s in the_plan.stages] == ["quantize"]
    assert the_plan.stages[0].inputs["model"].model == "tiny:gpt2-a"


def test_nothing_to_run_is_said(tmp_path: Path) -> None:
    path = tmp_path / "idle.yml"
    path.write_text("models: [{model: tiny:gpt2-a}]\n")
    with pytest.raises(UserError, match="nothing to run"):
        plan(load_recipe(path))


def test_evaluate_comes_before_quantize_which_waits_for_its_gate(tmp_path: Path) -> None:
    path = tmp_path / "ev.yml"
    path.write_text("models: [{model: tiny:gpt2-a}]\nevaluate: {suites: [arc_easy]}\nquantize: {variants: [q8]}\npublish: {to: ./out}\n")
    evaluate, quantize, publish = plan(load_recipe(path)).stages
    assert (evaluate.stage, quantize.stage, publish.stage) == ("evaluate", "quantize", "publish")
    assert evaluate.inputs["model"].model == "tiny:gpt2-a" and quantize.inputs["model"].model == "tiny:gpt2-a"
    assert quantize.after == (evaluate.key,) and publish.after == (evaluate.key,)
    assert publish.inputs["evaluation"].key == evaluate.key
    assert evaluate.gate == quantize.gate == publish.gate == {} and "gate" not in evaluate.params and "gate" not in publish.params


def test_only_publish_keys_the_gate_which_quantize_and_publish_carry(tmp_path: Path) -> None:
    """The gate judges the measurements: a new threshold must not measure (or quantize) again."""
    keys = {}
    for threshold in ("0.45", "0.6"):
        path = tmp_path / f"gate-{threshold}.yml"
        path.write_text(f"name: g\nmodels: [{{model: tiny:gpt2-a}}]\nevaluate: {{suites: [arc_easy], gate: {{arc_easy.acc_norm: '>= {threshold}'}}}}\n"
                        "quantize: {variants: [q8]}\npublish: {to: ./out}\n")
        evaluate, quantize, publish = plan(load_recipe(path)).stages
        rules = {"arc_easy.acc_norm": f">= {threshold}"}
        assert "gate" not in evaluate.params and evaluate.gate == {}
        assert quantize.gate == publish.gate == publish.params["gate"] == rules
        keys[threshold] = (evaluate.key, quantize.key, publish.key)
    assert keys["0.45"][:2] == keys["0.6"][:2] and keys["0.45"][2] != keys["0.6"][2]


def test_a_local_model_is_keyed_by_the_files_a_loader_reads_at_its_top_level(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "checkpoints" / "step-100").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "vocab_size": 512}')
    (model / "model.safetensors").write_bytes(b"0" * 64)
    recipe = f"models: [{{model: tiny:llama-a}}, {{model: {model}}}]\nmerge_method: linear\nparameters: {{weight: 0.5}}\n"
    before = keys(tmp_path, recipe)
    (model / "checkpoints" / "step-100" / "model.safetensors").write_bytes(b"1" * 64)  # below the top: not read
    (model / "README.md").write_text("notes")  # not a file a loader reads
    assert keys(tmp_path, recipe) == before
    (model / "tokenizer.json").write_text("{}")
    with_tokenizer = keys(tmp_path, recipe)
    assert with_tokenizer != before
    (model / "model.safetensors").write_bytes(b"0" * 65)
    assert keys(tmp_path, recipe) != with_tokenizer
