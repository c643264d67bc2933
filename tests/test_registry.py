"""The model registry: presets validate, estimates are the arithmetic they claim, selection
picks the best model that fits, and the CLI stays light."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.plan import plan
from foundry.recipe.load import load_recipe
from foundry.registry import fit as fitting
from foundry.registry.gated import gated_warnings
from foundry.registry.load import PRESETS_ENV, load_registry
from foundry.registry.memory import GIB, Workload, estimate, lora_parameters, parameter_count, shape_from_config

REQUIRED = (
    "distilgpt2", "gpt2", "gpt2-medium", "gpt2-large", "tinyllama", "qwen2.5:0.5b", "qwen2.5:1.5b", "qwen2.5:7b", "qwen2:1.5b",
    "codegemma:2b", "phi3:mini", "phi4:mini", "llama3.2:1b", "llama3.1:8b", "mistral:7b", "deepseek-r1-distill-qwen:7b",
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
    assert best.preset.alias == "qwen2.5:7b"  # quality 5; llama3.1:8b ties and comes later in the registry
    best, every = fitting.select(registry, "chat", "cpu", 16.0)
    assert best.preset.alias == "qwen2.5:1.5b" and all(fit.preset.cpu_acceptable for fit in every)
    with pytest.raises(UserError, match="no chat model fits in 1 GiB of GPU memory; the smallest, tinyllama"):
        fitting.select(registry, "chat", "gpu", 1.0)


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
    unknown = foundry("models", "show", "mistral7b")
    assert unknown.returncode == 2 and "did you mean 'mistral:7b'" in unknown.stderr
