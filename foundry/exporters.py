"""Which exporter turns a model family into the graphs Foundry publishes, from config.json alone.

Two exporters, chosen by family:

- onnxruntime-genai's model builder (GroupQueryAttention with rotary inside, MatMulNBits):
  the graphs Foundry Local runs and onnx-community's GQA web models come from; it builds
  every variant tensor by tensor, so it holds at 7B. Keyed by `architectures[0]`, which is
  what the builder dispatches on.
- optimum-onnx, in an environment of its own (it needs transformers < 4.58): the families
  only it exports, GPT-2 first among them.

The table lives in the submitter, not in `jobs/`, because `foundry lint` refuses a family
neither takes before anything runs, and lint never imports torch. `web` says whether the
published graphs of that family are proven in transformers.js by the test suite; `foundry
models select --web` keeps to those.
"""

from dataclasses import dataclass

BUILDER = "onnxruntime-genai"
OPTIMUM = "optimum-onnx"


@dataclass(frozen=True)
class Family:
    model_type: str
    exporter: str
    web: bool


# The builder's architectures (onnxruntime_genai/models/builder.py, 0.18.0) whose graphs the
# suite publishes and runs in transformers.js (tests/test_architectures.py). Others the
# builder knows (gpt-oss, lfm2, internlm2, ernie, ...) are not offered until a test proves
# their graphs in a browser. Gemma3ForCausalLM and SmolLM3ForCausalLM export through
# Foundry's adapters of the builder's classes (jobs/onnx/builder_run.py): the builder misreads
# transformers 5's per-layer-type rope parameters of the one and the layers without RoPE of
# the other.
BUILDER_ARCHITECTURES: dict[str, Family] = {
    architecture: Family(model_type, BUILDER, web=True)
    for architecture, model_type in {
        "LlamaForCausalLM": "llama",
        "MistralForCausalLM": "mistral",
        "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3",
        "GemmaForCausalLM": "gemma",
        "Gemma2ForCausalLM": "gemma2",
        "Gemma3ForCausalLM": "gemma3_text",
        "Phi3ForCausalLM": "phi3",
        "GraniteForCausalLM": "granite",
        "SmolLM3ForCausalLM": "smollm3",
    }.items()
}

# model_type -> family, for what optimum-onnx 0.1.0 exports as a decoder with past and the
# builder does not.
OPTIMUM_MODEL_TYPES: dict[str, Family] = {
    model_type: Family(model_type, OPTIMUM, web=model_type in {"gpt2"})
    for model_type in (
        "bloom", "codegen", "cohere", "falcon", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj",
        "mpt", "olmo2", "opt", "stablelm",
    )
}


def family_of(config: dict) -> Family | None:
    """The exporter for a config.json, or None when neither exporter takes it."""
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and architectures and architectures[0] in BUILDER_ARCHITECTURES:
        return BUILDER_ARCHITECTURES[architectures[0]]
    return OPTIMUM_MODEL_TYPES.get(str(config.get("model_type", "")))


def supported_summary() -> str:
    """One line naming every family Foundry exports, for refusals."""
    builder = sorted({family.model_type for family in BUILDER_ARCHITECTURES.values()})
    return f"{BUILDER}: {', '.join(builder)}; {OPTIMUM}: {', '.join(sorted(OPTIMUM_MODEL_TYPES))}"
