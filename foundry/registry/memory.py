"""How much memory a model needs to run or fine-tune, from the shape in its config.json.

The estimate is arithmetic on the shape, not a measurement, so it works for any model whose
config.json is at hand (or whose shape a preset carries) without downloading weights:

    parameters   embeddings + per layer (attention q/k/v/o, MLP, norms, biases) + head
    weights      parameters x bytes per weight (bf16 on a GPU, fp32 on a CPU; NF4 linears
                 under QLoRA)
    trainable    LoRA: rank x (in + out) per adapted linear per layer, 16 bytes each (fp32
                 weight, gradient, Adam m and v); full: every parameter, 16 bytes each in
                 all, its weight included
    activations  what backward keeps, per token per layer: 7 hidden-size vectors, k and v,
                 and the MLP's intermediates (4 x intermediate gated, 2 x plain), at batch x
                 length; with gradient checkpointing, one hidden vector per layer plus one
                 layer's worth. The CPU's attention keeps its score matrix (heads x length^2);
                 fused GPU kernels do not. The logits keep batch x length x vocab three times
                 (in the compute dtype and twice in fp32 for the loss).
    inference    weights, the KV cache for batch x length, one layer's activations
    overhead     the runtime itself: 1 GiB on a GPU (CUDA context, workspaces), 0.5 GiB on a CPU

It stays an estimate: allocator fragmentation and library workspaces vary. The verdict
keeps a margin for that: "fits" up to 85% of the memory, "tight" up to 100%.
"""

from dataclasses import dataclass
from typing import Any, Literal

GIB = 1024**3
Method = Literal["inference", "lora", "qlora", "full"]
Device = Literal["gpu", "cpu"]
Verdict = Literal["fits", "tight", "does not fit"]

FITS_SHARE = 0.85
OVERHEAD_BYTES = {"gpu": 1 * GIB, "cpu": GIB // 2}
WEIGHT_BYTES = {"gpu": 2, "cpu": 4}  # bf16 on a GPU; fp32 on a CPU, where bf16 matmuls are slow
NF4_BYTES = 4.127 / 8  # 4-bit weights plus double-quantized absmax per block of 64
TRAINABLE_BYTES = 16  # fp32 weight + gradient + Adam's two moments
LOGIT_FP32_COPIES = 8  # bytes per logit on top of the compute dtype: fp32 upcast + its gradient

# Default tie_word_embeddings by model_type, where config.json may leave it out.
_TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2"}


@dataclass(frozen=True)
class Shape:
    """The sizes memory depends on, read from a config.json."""

    model_type: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    gated_mlp: bool
    learned_positions: int  # rows of a learned position table (GPT-2); 0 with rotary
    qkv_bias: bool
    dense_bias: bool  # biases on every linear and LayerNorm (GPT-2)

    @property
    def attention_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


def shape_from_config(config: dict[str, Any]) -> Shape:
    """The Shape of a config.json; ValueError naming the first missing field."""
    model_type = str(config.get("model_type", "")).lower()
    if model_type == "gpt2" or "n_embd" in config:
        hidden = _int(config, "n_embd")
        heads = _int(config, "n_head")
        return Shape(
            model_type or "gpt2", hidden, _int(config, "n_layer"), int(config.get("n_inner") or 4 * hidden), _int(config, "vocab_size"),
            heads, heads, hidden // heads, bool(config.get("tie_word_embeddings", True)), gated_mlp=False,
            learned_positions=_int(config, "n_positions"), qkv_bias=True, dense_bias=True,
        )
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    return Shape(
        model_type, hidden, _int(config, "num_hidden_layers"), _int(config, "intermediate_size"), _int(config, "vocab_size"),
        heads, int(config.get("num_key_value_heads") or heads), int(config.get("head_dim") or hidden // heads),
        bool(config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)), gated_mlp=True, learned_positions=0,
        qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)), dense_bias=False,
    )


def _int(config: dict[str, Any], name: str) -> int:
    value = config.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config lacks a positive integer {name!r}")
    return value


def linear_modules(shape: Shape) -> dict[str, list[tuple[int, int]]]:
    """Each linear module name of one layer, with the (in, out) sizes of every module of
    that name (GPT-2 has two `c_proj`). These are the names LoRA's target_modules match."""
    h, a, kv, i = shape.hidden, shape.attention_width, shape.kv_width, shape.intermediate
    if shape.model_type == "gpt2":
        return {"c_attn": [(h, a + 2 * kv)], "c_proj": [(a, h), (i, h)], "c_fc": [(h, i)]}
    if shape.model_type == "phi3":
        return {"qkv_proj": [(h, a + 2 * kv)], "o_proj": [(a, h)], "gate_up_proj": [(h, 2 * i)], "down_proj": [(i, h)]}
    return {"q_proj": [(h, a)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(a, h)], "gate_proj": [(h, i)], "up_proj": [(h, i)], "down_proj": [(i, h)]}


def parameter_count(shape: Shape) -> int:
    return _linear_parameters(shape) + _other_parameters(shape)


def _linear_parameters(shape: Shape) -> int:
    per_layer = sum(fan_in * fan_out for sizes in linear_modules(shape).values() for fan_in, fan_out in sizes)
    return per_layer * shape.layers


def _other_parameters(shape: Shape) -> int:
    """Embeddings, head, norms and biases: what QLoRA leaves in 16 bits."""
    h = shape.hidden
    norm = 2 * h if shape.dense_bias else h  # LayerNorm has a bias, RMSNorm does not
    per_layer = 2 * norm
    if shape.dense_bias:
        per_layer += sum(fan_out for sizes in linear_modules(shape).values() for _, fan_out in sizes)
    elif shape.qkv_bias:
        per_layer += shape.attention_width + 2 * shape.kv_width
    embeddings = shape.vocab * h + shape.learned_positions * h
    head = 0 if shape.tied else shape.vocab * h
    return embeddings + head + per_layer * shape.layers + norm


def lora_parameters(shape: Shape, rank: int, target_modules: list[str] | str) -> int:
    """rank x (in + out) for every adapted linear of every layer. Names the shape does not
    know adapt nothing here; the finetune stage refuses them against the real model."""
    modules = linear_modules(shape)
    names = list(modules) if target_modules == "all-linear" else [name for name in target_modules if name in modules]
    return rank * shape.layers * sum(fan_in + fan_out for name in names for fan_in, fan_out in modules[name])


@dataclass(frozen=True)
class Workload:
    method: Method
    device: Device
    batch_size: int = 1
    seq_len: int = 512
    rank: int = 16
    target_modules: list[str] | str = "all-linear"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class Estimate:
    parameters: int
    trainable: int
    weights: int  # bytes, and so on below
    trainable_state: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.overhead

    @property
    def total_gib(self) -> float:
        return self.total / GIB


def estimate(shape: Shape, work: Workload) -> Estimate:
    if work.method == "qlora" and work.device != "gpu":
        raise ValueError("QLoRA needs a CUDA GPU (bitsandbytes); estimate lora for a CPU")
    parameters = parameter_count(shape)
    act_bytes = WEIGHT_BYTES[work.device]
    if work.method == "qlora":
        weights = int(_linear_parameters(shape) * NF4_BYTES) + _other_parameters(shape) * WEIGHT_BYTES["gpu"]
    else:
        weights = parameters * WEIGHT_BYTES[work.device]
    if work.method == "inference":
        trainable, state = 0, 0
    elif work.method == "full":
        # The weights are part of a trainable parameter's 16 bytes (on a GPU: bf16 weight and
        # gradient, fp32 master copy, Adam's two moments); the rest is optimizer state.
        trainable, state = parameters, parameters * (TRAINABLE_BYTES - WEIGHT_BYTES[work.device])
    else:
        trainable = lora_parameters(shape, work.rank, work.target_modules)
        state = trainable * TRAINABLE_BYTES
    tokens = work.batch_size * work.seq_len
    if work.method == "inference":
        kv_cache = 2 * shape.layers * shape.kv_width * tokens * WEIGHT_BYTES[work.device]
        activations = kv_cache + tokens * _layer_activations(shape) * act_bytes
    else:
        activations = _training_activations(shape, work, act_bytes)
    return Estimate(parameters, trainable, weights, state, activations, OVERHEAD_BYTES[work.device])


def _layer_activations(shape: Shape) -> int:
    """Values one layer keeps for backward, per token (see the module's docstring)."""
    mlp = 4 * shape.intermediate if shape.gated_mlp else 2 * shape.intermediate
    return 7 * shape.hidden + 2 * shape.kv_width + mlp


def _training_activations(shape: Shape, work: Workload, act_bytes: int) -> int:
    tokens = work.batch_size * work.seq_len
    kept_layers = 1 if work.gradient_checkpointing else shape.layers
    per_token = _layer_activations(shape) * kept_layers
    if work.gradient_checkpointing:
        per_token += shape.hidden * shape.layers  # each layer's input, to recompute from
    scores = work.batch_size * shape.heads * work.seq_len**2 * 4 * kept_layers if work.device == "cpu" else 0
    logits = tokens * shape.vocab * (act_bytes + LOGIT_FP32_COPIES)
    return tokens * per_token * act_bytes + scores + logits


def verdict(required_bytes: int, available_gib: float) -> Verdict:
    available = available_gib * GIB
    if required_bytes <= FITS_SHARE * available:
        return "fits"
    return "tight" if required_bytes <= available else "does not fit"
