"""The model registry: presets validate, estimates are the arithmetic they claim, selection
picks the best model that fits, and the CLI stays light."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.plan import plan
from foundry.recipe.load import load_recipe
from foundry.registry import fit as fitting
from foundry.registry.gated import gated_warnings
from foundry.registry.load import PRESETS_ENV, Registry, load_registry, registry_of
from foundry.registry.memory import GIB, Workload, estimate, lora_parameters, parameter_count, shape_from_config
from foundry.registry.schema import FinetuneDefaults

REQUIRED = (
    "distilgpt2", "gpt2", "gpt2-medium", "gpt2-large", "tinyllama", "qwen2.5:0.5b", "qwen2.5:1.5b", "qwen2.5:7b", "qwen2:1.5b",
    "codegemma:2b", "phi3:mini", "phi4:mini", "llama3.2:1b", "llama3.1:8b", "mistral:7b", "deepseek-r1-distill-qwen:7b",
    "qwen3:0.6b", "qwen3:1.7b", "qwen3:4b", "qwen3:8b", "gemma-3:270m", "gemma-3:1b", "gemma-3:4b", "smollm3:3b",
    "lfm2:350m", "lfm2:700m", "lfm2:1.2b", "granite-4.0:350m", "granite-4.0:1b", "granite-4.0:micro", "llama3.2:3b",
)


@pytest.fixture(autouse=True)
def _no_user_presets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(PRESETS_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_every_preset_validates_and_the_required_ones_are_there() -> None:
    registry = load_registry()
    assert set(REQUIRED) <= set(registry.presets)
    assert {f"tiny:{family}-{seed}" for family in ("llama", "qwen2", "gpt2") for seed in "abc"} <= set(registry.presets)
    for preset in registry.presets.values():
        assert preset.hub_id and preset.license and preset.description and preset.tasks
        assert preset.finetune.max_length <= preset.context_length


def test_every_alias_and_hub_id_resolves_to_its_preset() -> None:
    registry = load_registry()
    for alias, preset in registry.presets.items():
        assert registry.get(alias) is preset
        assert registry.get(preset.hub_id) is preset and registry.get(preset.hub_id.upper()) is preset, alias


def test_web_publishing_follows_the_exporter_table() -> None:
    """Each preset records its architecture; the exporters' table, not the preset, decides."""
    registry = load_registry()
    for preset in registry.presets.values():
        assert preset.config.get("architectures"), f"{preset.alias}: config records no architectures"
    for alias in ("qwen3:1.7b", "gpt2", "gemma-3:270m", "gemma-3:1b", "smollm3:3b"):
        assert registry.get(alias).web, alias
    # No exporter takes Lfm2, GraniteMoeHybrid or Gemma3ForConditionalGeneration (text and images).
    for alias in ("lfm2:350m", "granite-4.0:micro", "gemma-3:4b"):
        assert registry.get(alias).exporter is None and not registry.get(alias).web


def test_new_family_shapes_count_as_the_models_do() -> None:
    """LFM2's convolution layers and derived MLP width, Gemma 3 4B's vision tower: the counts
    the model cards give (less the q/k norms the estimate leaves out)."""
    registry = load_registry()
    lfm2 = shape_from_config(registry.get("lfm2:350m").config)
    assert (lfm2.intermediate, lfm2.conv_layers) == (4608, 10)
    assert parameter_count(lfm2) == 354_483_968 - 6 * 2 * 64
    gemma = shape_from_config(registry.get("gemma-3:4b").config)
    assert gemma.frozen_extra > 400_000_000 and abs(parameter_count(gemma) - 4_300_079_472) / 4_300_079_472 < 1e-4
    # LoRA on LFM2 adapts attention layers' q/k/v/out and convolution layers' in/out projections
    per_rank = lora_parameters(lfm2, 1, ["in_proj", "out_proj"])
    assert per_rank == 10 * ((1024 + 3 * 1024) + (1024 + 1024)) + 6 * (1024 + 1024)


def test_stated_parameter_counts_match_the_shapes() -> None:
    for preset in load_registry().presets.values():
        computed = parameter_count(shape_from_config(preset.config))
        assert abs(computed - preset.parameters) / preset.parameters < 0.005, preset.alias


def test_declared_memory_is_never_below_the_estimate() -> None:
    """presets.yaml's header defines each memory field; the data may round up, never down."""
    for preset in load_registry().presets.values():
        shape, settings = shape_from_config(preset.config), preset.finetune
        method = "qlora" if settings.qlora else "lora"
        common = {"seq_len": settings.max_length, "rank": settings.rank, "target_modules": settings.target_modules}
        pairs = {
            "vram_min_gb": Workload(method, "gpu", 1, gradient_checkpointing=True, **common),
            "vram_recommended_gb": Workload(method, "gpu", settings.batch_size, gradient_checkpointing=settings.gradient_checkpointing, **common),
            "ram_min_gb": Workload("lora", "cpu", 1, gradient_checkpointing=True, **common),
            "ram_recommended_gb": Workload("lora", "cpu", settings.batch_size, gradient_checkpointing=settings.gradient_checkpointing, **common),
        }
        for field, work in pairs.items():
            needed = estimate(shape, work).total_gib
            declared = getattr(preset, field)
            assert needed <= declared <= needed + 1.0, f"{preset.alias}.{field}: declared {declared}, estimated {needed:.2f}"


def test_gpt2_estimate_is_the_hand_computation() -> None:
    """GPT-2 (h=768, 12 layers, 12 heads, I=3072, V=50257, 1024 learned positions, tied),
    LoRA rank 8 on c_attn, c_proj, c_fc, batch 8 x 512 tokens, on a GPU in bf16."""
    shape = shape_from_config(load_registry().get("gpt2").config)
    h, layers, inner, vocab, positions = 768, 12, 3072, 50257, 1024
    per_layer = (
        h * 3 * h + 3 * h      # c_attn: q, k, v in one matrix, with bias
        + h * h + h            # attn.c_proj with bias
        + h * inner + inner    # c_fc with bias
        + inner * h + h        # mlp.c_proj with bias
        + 2 * (2 * h)          # two LayerNorms, weight and bias
    )
    parameters = vocab * h + positions * h + layers * per_layer + 2 * h  # + the final LayerNorm; head tied
    assert parameters == 124_439_808 == parameter_count(shape)

    rank = 8
    lora = layers * rank * ((h + 3 * h) + (h + h) + (inner + h) + (h + inner))  # c_attn, attn.c_proj, mlp.c_proj, c_fc
    assert lora == 1_179_648 == lora_parameters(shape, rank, ["c_attn", "c_proj", "c_fc"])

    batch, length = 8, 512
    tokens = batch * length
    weights = parameters * 2                                    # bf16
    state = lora * 16                                           # fp32 weight, gradient, Adam m and v
    per_token = layers * (7 * h + 2 * h + 2 * inner) * 2        # kept activations, bf16 (kv width = h here)
    logits = tokens * vocab * (2 + 8)                           # bf16 logits, fp32 copy, fp32 gradient
    overhead = GIB                                              # CUDA context and workspaces
    expected = weights + state + tokens * per_token + logits + overhead
    got = estimate(shape, Workload("lora", "gpu", batch, length, rank, ["c_attn", "c_proj", "c_fc"]))
    assert got.total == expected
    assert round(expected / GIB, 3) == 4.362


def test_select_picks_the_best_model_that_fits() -> None:
    registry = load_registry()
    best, every = fitting.select(registry, "chat", "gpu", 8.0)
    assert (best.preset.alias, best.method, best.verdict) == ("phi3:mini", "qlora", "fits")
    assert all(fit.preset.quality <= best.preset.quality for fit in every if fit.verdict == "fits")
    assert any(fit.verdict == "does not fit" and fit.preset.quality > best.preset.quality for fit in every)  # a better one that does not fit
    best, _ = fitting.select(registry, "chat", "gpu", 24.0)
    assert best.preset.alias == "qwen2.5:7b"  # quality 5; qwen3:8b and llama3.1:8b tie and come later in the registry
    best, every = fitting.select(registry, "chat", "cpu", 16.0)
    assert best.preset.alias == "qwen2.5:1.5b" and all(fit.preset.cpu_acceptable for fit in every)
    best, every = fitting.select(registry, "chat", "gpu", 6.0, web=True)
    assert every and all(fit.preset.web for fit in every)
    smallest = min(fitting.ranked(registry, "chat", "gpu", 1.0, web=True), key=lambda fit: fit.estimate.total)
    with pytest.raises(UserError, match=f"no chat model fits in 1 GiB of GPU memory; the smallest, {re.escape(smallest.preset.alias)}, needs about"):
        fitting.select(registry, "chat", "gpu", 1.0, web=True)


def test_the_seed_case_an_open_model_beats_the_gated_one_it_equals() -> None:
    """Seed 003: on 6 GiB the open Qwen2.5-1.5B, not the gated Llama 3.2 1B of equal quality.
    Qwen is tight at its batch of 2, so it is assessed at batch 1 with the accumulation
    doubled (the same effective batch), where it fits; then openness breaks the tie."""
    registry = load_registry()
    _, every = fitting.select(registry, "chat", "gpu", 6.0)
    order = [fit.preset.alias for fit in every]
    qwen = every[order.index("qwen2.5:1.5b")]
    assert (qwen.verdict, qwen.batch_size, qwen.accumulation) == ("fits", 1, 16)
    assert order.index("qwen2.5:1.5b") < order.index("llama3.2:1b")


PRESET = {
    "parameters": 1, "family": "qwen2", "tasks": ["chat"], "license": "apache-2.0", "gated": False, "context_length": 4096,
    "vram_min_gb": 1, "vram_recommended_gb": 1, "ram_min_gb": 1, "ram_recommended_gb": 1, "cpu_acceptable": True,
    "quality": 3, "speed": 3, "chat_template": "chatml", "description": "a test preset",
    "finetune": {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-4,
                 "batch_size": 4, "gradient_accumulation": 2, "max_length": 512, "epochs": 1},
}
SMALL = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8,
         "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 32000}
LARGE = {**SMALL, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24}


def _registry_of(tmp_path: Path, presets: dict[str, dict]) -> Registry:
    """A presets file of this test's own, with each preset's parameter count computed."""
    for fields in presets.values():
        fields["parameters"] = parameter_count(shape_from_config(fields["config"]))
    path = tmp_path / "mine.yaml"
    path.write_text(json.dumps({"defaults": PRESET["finetune"], "presets": presets}))
    return registry_of(path)


def _needs(config: dict, batch: int) -> float:
    settings = FinetuneDefaults.model_validate(PRESET["finetune"])
    return estimate(shape_from_config(config), fitting.training_workload(settings, "cpu", "lora", batch_size=batch)).total_gib


def test_an_open_model_beats_a_gated_one_of_equal_quality(tmp_path: Path) -> None:
    registry = _registry_of(tmp_path, {
        "gated-first": {**PRESET, "gated": True, "hub_id": "org/gated", "config": SMALL},
        "open-second": {**PRESET, "hub_id": "org/open", "config": SMALL},
        "better-gated": {**PRESET, "gated": True, "quality": 4, "hub_id": "org/better", "config": SMALL},
    })
    memory = _needs(SMALL, 4) / 0.5  # every one fits comfortably
    best, every = fitting.select(registry, "chat", "cpu", memory)
    assert best.preset.alias == "better-gated"  # quality first: gated is a tie-breaker, not a veto
    assert [fit.preset.alias for fit in every] == ["better-gated", "open-second", "gated-first"]
    del registry.presets["better-gated"]
    best, every = fitting.select(registry, "chat", "cpu", memory)
    assert best.preset.alias == "open-second"
    assert "gated (licence and token): ranked after the open open-second, of equal quality" in fitting.explain(every[1], best, memory)


def test_a_comfortable_fit_beats_a_tight_one_of_equal_quality(tmp_path: Path) -> None:
    registry = _registry_of(tmp_path, {
        "tight-first": {**PRESET, "hub_id": "org/large", "config": LARGE},
        "comfortable": {**PRESET, "hub_id": "org/small", "config": SMALL},
    })
    memory = _needs(LARGE, 1) / 0.95  # the large one is tight even at batch 1; the small one fits
    assert _needs(SMALL, 4) <= 0.85 * memory
    best, every = fitting.select(registry, "chat", "cpu", memory)
    assert [(fit.preset.alias, fit.verdict) for fit in every] == [("comfortable", "fits"), ("tight-first", "tight")]
    assert fitting.explain(every[1], best, memory).startswith("tight (lora, batch 1 x 8 accumulated")
    assert "tight: ranked after what fits comfortably" in fitting.explain(every[1], best, memory)
    # Alone, the tight one is still chosen, and says so.
    del registry.presets["comfortable"]
    best, _ = fitting.select(registry, "chat", "cpu", memory)
    assert best.verdict == "tight" and "nothing fits comfortably" in fitting.explain(best, best, memory)


def test_a_preset_tight_at_its_batch_fits_at_batch_one(tmp_path: Path) -> None:
    registry = _registry_of(tmp_path, {"large": {**PRESET, "hub_id": "org/large", "config": LARGE}})
    memory = _needs(LARGE, 1) / 0.8
    assert _needs(LARGE, 4) > 0.85 * memory  # tight or worse at the preset's batch of 4
    fit = fitting.assess(registry.get("large"), "cpu", memory)
    assert (fit.verdict, fit.batch_size, fit.accumulation) == ("fits", 1, 8)


def test_web_and_cpu_filters(tmp_path: Path) -> None:
    lfm2 = load_registry().get("lfm2:350m")
    registry = _registry_of(tmp_path, {
        "lfm2-better": {**PRESET, "quality": 4, "hub_id": lfm2.hub_id, "config": lfm2.config, "finetune": lfm2.finetune.model_dump()},
        "qwen-web": {**PRESET, "hub_id": "org/small", "config": SMALL},
        "no-cpu": {**PRESET, "quality": 5, "cpu_acceptable": False, "hub_id": "org/nocpu", "config": SMALL},
    })
    assert fitting.select(registry, "chat", "cpu", 64.0)[0].preset.alias == "lfm2-better"
    assert fitting.select(registry, "chat", "cpu", 64.0, web=True)[0].preset.alias == "qwen-web"
    assert fitting.select(registry, "chat", "gpu", 64.0)[0].preset.alias == "no-cpu"
    with pytest.raises(UserError, match="no model publishable to the web for task 'code'"):
        fitting.select(registry, "code", "cpu", 64.0, web=True)


def test_unknown_alias_gets_a_did_you_mean() -> None:
    with pytest.raises(UserError, match=r"unknown model 'qwen2.5:1.5' \(did you mean 'qwen2.5:1.5b'\?\)"):
        load_registry().get("qwen2.5:1.5")
    assert load_registry().get("Qwen/Qwen2.5-1.5B-Instruct").alias == "qwen2.5:1.5b"


def test_user_presets_add_and_replace_and_are_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpt2 = load_registry().get("gpt2").model_dump(exclude={"alias", "source"})
    mine = tmp_path / "presets.yaml"
    mine.write_text(json.dumps({"presets": {"my-gpt2": {**gpt2, "description": "mine"}, "gpt2": {**gpt2, "quality": 2}}}))
    monkeypatch.setenv(PRESETS_ENV, str(mine))
    registry = load_registry()
    assert registry.get("my-gpt2").source == str(mine) and registry.get("gpt2").quality == 2
    mine.write_text("presets:\n  broken:\n    hub_id: not an id\n    quality: 9\n")
    with pytest.raises(UserError) as error:
        load_registry()
    lines = error.value.lines()
    assert f"{mine}:3: presets.broken.hub_id: hub_id 'not an id': expected a Hugging Face id org/name (or tiny:NAME)" in lines
    assert f"{mine}:4: presets.broken.quality: Input should be less than or equal to 5" in lines


def test_gated_models_say_how_to_give_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    [line] = gated_warnings(["meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"], load_registry())
    assert "meta-llama/Llama-3.2-1B-Instruct (llama3.2:1b) is gated" in line
    assert "set HF_TOKEN" in line and "Secret" in line and "huggingface.tokenSecret.name" in line
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert gated_warnings(["meta-llama/Llama-3.2-1B-Instruct"], load_registry()) == []


RECIPE = """
models: [{model: tiny:llama-a}, {model: tiny:llama-b}]
merge_method: slerp
base_model: tiny:llama-a
parameters: {t: 0.4}
finetune: {dataset: DATA, learning_rate: 0.001HARDWARE}
quantize: {variants: [q4]}
"""


def _plan(tmp_path: Path, hardware: str = "", strict: bool = False):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.jsonl"
    if not data.exists():
        data.write_text('{"prompt": "a", "completion": "b"}\n')
    path = tmp_path / "ft.yml"
    path.write_text(RECIPE.replace("DATA", str(data)).replace("HARDWARE", hardware))
    return plan(load_recipe(path), strict=strict)


def test_the_plan_puts_finetune_between_merge_and_quantize_with_the_preset(tmp_path: Path) -> None:
    the_plan = _plan(tmp_path)
    merge, finetune, quantize = the_plan.stages
    assert [merge.stage, finetune.stage, quantize.stage] == ["merge", "finetune", "quantize"]
    assert finetune.inputs["model"].key == merge.key and quantize.inputs["model"].key == finetune.key
    preset = load_registry().get("tiny:llama-a").finetune
    assert finetune.params["preset"] == "tiny:llama-a" and finetune.params["rank"] == preset.rank
    assert finetune.params["target_modules"] == preset.target_modules
    assert finetune.params["learning_rate"] == 0.001 != preset.learning_rate  # the recipe wins
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "c"}\n')
    assert _plan(tmp_path).stages[1].key != finetune.key  # new data, new key


def test_a_preset_that_does_not_fit_the_declared_hardware_warns_or_is_refused(tmp_path: Path) -> None:
    hardware = ", batch_size: 4096, hardware: {vram_gb: 2}"
    the_plan = _plan(tmp_path, hardware)
    assert any("needs about" in line and "the declared 2 GiB of GPU memory is not enough" in line for line in the_plan.warnings)
    with pytest.raises(UserError, match=r"needs about .* GiB; the declared 2 GiB .*refused under --strict"):
        _plan(tmp_path, hardware, strict=True)
    assert _plan(tmp_path, ", hardware: {vram_gb: 2}", strict=True).warnings == ()


def foundry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True)


def test_models_commands_never_import_torch() -> None:
    for args in (["models", "list", "--json"], ["models", "show", "qwen2.5:1.5b"], ["models", "select", "--task", "chat", "--vram", "8"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "foundry", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
        assert not {"torch", "transformers", "peft"} & imported, args


def test_models_cli() -> None:
    listed = json.loads(foundry("models", "list", "--task", "code", "--json").stdout)
    assert {"qwen2.5:1.5b", "codegemma:2b"} <= {model["alias"] for model in listed} and "gpt2" not in {model["alias"] for model in listed}
    shown = foundry("models", "show", "llama3.1:8b")
    assert shown.returncode == 0 and "gated" in shown.stdout and "QLoRA" in shown.stdout
    selected = foundry("models", "select", "--task", "chat", "--vram", "8")
    assert selected.returncode == 0 and selected.stdout.strip() == "phi3:mini"
    assert "selected: the best quality that fits" in selected.stderr and "gated (licence and token)" in selected.stderr
    web = json.loads(foundry("models", "select", "--task", "chat", "--ram", "8", "--cpu", "--web", "--json").stdout)
    assert web["candidates"] and all(load_registry().get(c["alias"]).web and load_registry().get(c["alias"]).cpu_acceptable for c in web["candidates"])
    assert all(c["why"] for c in web["candidates"])
    both = foundry("models", "select", "--task", "chat", "--cpu", "--vram", "8")
    assert both.returncode == 2 and both.stderr.strip() == "error: --cpu trains on a CPU: give --ram (or nothing, for this machine's RAM), not --vram"
    unknown = foundry("models", "show", "mistral7b")
    assert unknown.returncode == 2 and "did you mean 'mistral:7b'" in unknown.stderr
