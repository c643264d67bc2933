"""Every family the builder exports, published and run by its real client.

For each architecture a small random-weight model is built here with transformers (the
tokenizer of tiny:llama-a, weights drawn wide enough that greedy decoding has clear
winners), run through `foundry run` (quantize: fp32, q4, q4f16; publish); the fp32 graph's
logits must agree with PyTorch's (the stage's agreement check), and transformers.js in Node
must generate ONNX Runtime's greedy tokens for every variant;
q4 and q4f16 of the tied family also on WebAssembly, in Chromium.
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from foundry import exporters, manifest
from foundry.web import assets
from jobs.tiny.models import build
from tests.web_support import assert_same_tokens, greedy_answers, run_node, serve

CHROMIUM = "/usr/bin/chromium"
LOCAL_TRANSFORMERS = assets.TRANSFORMERS_ROUTE + assets.TRANSFORMERS_MODULE
MAX_NEW_TOKENS = 12
VARIANTS = ["fp32", "q4", "q4f16"]
MESSAGES = [{"role": "user", "content": "Anna went to the park"}]
# The stage's agreement check, fp32 ONNX against PyTorch; the first prompt outruns Gemma 3's window.
PROMPTS = ["Anna went to the park with her old dog and they played there until it was dark", "The old dog"]
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256}

# architecture -> config fields beyond SMALL (each family's own switches, small).
FAMILIES: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {"model_type": "llama"},
    "Qwen2ForCausalLM": {"model_type": "qwen2", "tie_word_embeddings": True},
    "Qwen3ForCausalLM": {"model_type": "qwen3"},
    "MistralForCausalLM": {"model_type": "mistral", "sliding_window": None},
    "GemmaForCausalLM": {"model_type": "gemma"},
    "Gemma2ForCausalLM": {"model_type": "gemma2", "sliding_window": 128, "query_pre_attn_scalar": 16},
    # A window shorter than the prompt, local and global layers, each with its own rope base.
    "Gemma3ForCausalLM": {
        "model_type": "gemma3_text", "num_hidden_layers": 3, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "sliding_window": 4, "query_pre_attn_scalar": 16, "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10.0}, "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0}},
    },
    "Phi3ForCausalLM": {"model_type": "phi3", "original_max_position_embeddings": 256, "tie_word_embeddings": False},
    "GraniteForCausalLM": {"model_type": "granite", "embedding_multiplier": 2.0, "logits_scaling": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.25},
    # The second and fourth layers without RoPE (no_rope_layers == [1, 0, 1, 0]), embeddings tied as SmolLM3-3B's.
    "SmolLM3ForCausalLM": {"model_type": "smollm3", "num_hidden_layers": 4, "no_rope_layer_interval": 2, "tie_word_embeddings": True},
}

# Gemma 2 and 3 scale their embeddings by sqrt(hidden_size) and normalise every layer's
# output: at random, the token's own embedding outweighs the layers, and greedy decoding
# repeats one token whatever the attention does. Their norms are drawn wide so that the
# layers count.
WIDE_NORMS = {"Gemma2ForCausalLM": 4.0, "Gemma3ForCausalLM": 4.0}


def test_the_table_covers_the_builder() -> None:
    assert set(FAMILIES) == set(exporters.BUILDER_ARCHITECTURES)


@pytest.mark.parametrize(("config", "problem"), [
    # transformers 5's per-layer-type parameters, as the Gemma 3 test model writes them
    ({"rope_parameters": FAMILIES["Gemma3ForCausalLM"]["rope_parameters"]}, None),
    # the hub's Gemma 3 configs, written by transformers 4: 1B unscaled, 4B linear x8
    ({"rope_scaling": None, "rope_theta": 1e6, "rope_local_base_freq": 1e4}, None),
    ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, None),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "yarn on the global layers and default on the local ones"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "linear"}}}, "default on the global layers and linear on the local ones"),
])
def test_gemma3_rope_the_export_builds(config: dict[str, Any], problem: str | None) -> None:
    found = exporters.export_problem({"model_type": "gemma3_text", **config})
    assert found is None if problem is None else problem in found


def _random_model(folder: Path, architecture: str) -> Path:
    tokenizer_source = build("llama-a")
    fields = {**SMALL, **FAMILIES[architecture]}
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(
        model_type, architectures=[architecture], vocab_size=512, bos_token_id=0, eos_token_id=4, pad_token_id=5, initializer_range=0.3, **fields,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if architecture in WIDE_NORMS:
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.data.normal_(0.0, WIDE_NORMS[architecture])
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (tokenizer_source / name).is_file():
            shutil.copyfile(tokenizer_source / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, subprocess.CompletedProcess]]]:
    """Every family built, quantized and published by `foundry run` into one web root, served."""
    site = tmp_path_factory.mktemp("architectures-site")
    runs = {}
    for architecture in FAMILIES:
        work = tmp_path_factory.mktemp(architecture)
        model = _random_model(work / "model", architecture)
        recipe = {
            "name": _entry(architecture),
            "models": [{"model": str(model)}],
            "quantize": {"variants": VARIANTS, "prompts": PROMPTS},
            "publish": {"to": str(site / "models"), "shard_size_mb": 0.1, "entry": {"id": _entry(architecture)}},
        }
        (work / "recipe.yml").write_text(yaml.safe_dump(recipe))
        runs[architecture] = subprocess.run([sys.executable, "-m", "foundry", "run", "recipe.yml"], cwd=work, capture_output=True, text=True)
    with serve(site) as (url, _):
        yield site, url, runs


def _entry(architecture: str) -> str:
    return architecture.lower().removesuffix("forcausallm")


@pytest.mark.parametrize("architecture", list(FAMILIES))
def test_published_family_generates_in_transformers_js(architecture: str, published: tuple[Path, str, dict], tmp_path: Path) -> None:
    site, url, runs = published
    result = runs[architecture]
    assert result.returncode == 0, result.stdout + result.stderr
    entry_id = _entry(architecture)
    folder = site / "models" / entry_id
    variants = manifest.read(folder)["variants"]
    assert set(variants) == set(VARIANTS)
    assert variants["fp32"]["top1_agreement"] == 1.0 and variants["fp32"]["max_logit_diff"] < 1e-3, variants["fp32"]
    genai = json.loads((folder / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "onnx/model_q4.onnx"
    output = run_node("node_generate.mjs", {
        "base": f"{url}/models/{entry_id}/", "variants": VARIANTS, "messages": MESSAGES,
        "max_new_tokens": MAX_NEW_TOKENS, "cache_dir": str(tmp_path / "cache"),
    })
    reference = greedy_answers(folder, MESSAGES[0]["content"], MAX_NEW_TOKENS)
    assert_same_tokens(output["results"], reference, folder)
    # Something to compare: random weights may reach an end token early, but not at once, and
    # do not repeat one token (what a model whose layers do not count would do).
    assert len(reference["fp32"]["new_ids"]) >= 2 and len(set(reference["fp32"]["new_ids"])) > 1, reference["fp32"]


def test_q4f16_of_a_tied_model_runs_on_webassembly(published: tuple[Path, str, dict]) -> None:
    """Qwen2 ties its embeddings: its q4 and q4f16 keep two tables (int8 rows for the lookup),
    and onnxruntime-web's WebAssembly runs them in Chromium with ONNX Runtime's tokens."""
    site, url, runs = published
    entry_id = _entry("Qwen2ForCausalLM")
    folder = site / "models" / entry_id
    assert runs["Qwen2ForCausalLM"].returncode == 0
    q4 = onnx.load(str(folder / "onnx" / "model_q4.onnx"), load_external_data=False)
    assert {"MatMulNBits", "Gather"} <= {node.op_type for node in q4.graph.node} and "GatherBlockQuantized" not in {node.op_type for node in q4.graph.node}
    output = run_node("browser.mjs", {"mode": "generate", "chromium": CHROMIUM, "url": f"{url}/_harness/harness.html", "request": {
        "transformers": LOCAL_TRANSFORMERS, "catalogue": "/models/foundry-catalogue.js", "ort": assets.ONNXRUNTIME_WEB_ROUTE,
        "base": f"{url}/models/{entry_id}/", "variants": ["q4", "q4f16"], "messages": MESSAGES, "max_new_tokens": MAX_NEW_TOKENS,
    }})
    assert output["offsite"] == []
    reference = greedy_answers(folder, MESSAGES[0]["content"], MAX_NEW_TOKENS)
    assert_same_tokens(output["results"], {level: reference[level] for level in ("q4", "q4f16")}, folder)
