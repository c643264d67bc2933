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


# Gemma 3's rope, as its adapter (jobs/onnx/builder_run.py) builds it: the global layers'
# scaling may be linear, the local layers' none (every Gemma 3 checkpoint published so far).
GEMMA3_GLOBAL_ROPE_TYPES = ("default", "linear")


def export_problem(config: dict) -> str | None:
    """What the exporter would refuse in a config of a family it takes, or None."""
    if config.get("model_type") != "gemma3_text":
        return None
    global_type, local_type = _gemma3_rope_types(config)
    if global_type in GEMMA3_GLOBAL_ROPE_TYPES and local_type == "default":
        return None
    return (
        f"its rope is {global_type} on the global layers and {local_type} on the local ones; "
        f"the Gemma 3 export builds {' or '.join(GEMMA3_GLOBAL_ROPE_TYPES)} global and default local rope"
    )


def _gemma3_rope_types(config: dict) -> tuple[str, str]:
    """(global, local) rope types, from transformers 5's per-layer-type `rope_parameters` or
    an older config's `rope_scaling` (which scales the global layers only)."""
    per_type = config.get("rope_parameters")
    if isinstance(per_type, dict) and "full_attention" in per_type:
        return _rope_type(per_type.get("full_attention")), _rope_type(per_type.get("sliding_attention"))
    return _rope_type(config.get("rope_scaling") or per_type), "default"


def _rope_type(parameters: object) -> str:
    if not isinstance(parameters, dict):
        return "default"
    return str(parameters.get("rope_type") or parameters.get("type") or "default")

