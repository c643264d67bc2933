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

Families beyond the plain decoder: LFM2's short-convolution layers (in_proj, out_proj and a
depthwise kernel in place of attention, w1/w2/w3 for the MLP); Granite 4's shared MLP
(input_linear, output_linear); Gemma 3's multimodal models, whose language model is read
from text_config and whose SigLIP vision tower counts as frozen weights.

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
    conv_layers: int = 0  # LFM2's short-convolution layers, in place of attention
    conv_kernel: int = 0
    frozen_extra: int = 0  # parameters outside the language model (a vision tower), never adapted

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
    frozen_extra = 0
    if isinstance(config.get("text_config"), dict):  # a multimodal model: its language model
        frozen_extra = _vision_parameters(config)
        tied = config.get("tie_word_embeddings", config["text_config"].get("tie_word_embeddings", True))
        config = {**config["text_config"], "model_type": model_type, "tie_word_embeddings": tied}
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    intermediate = _int(config, "intermediate_size")
    layer_types = config.get("layer_types") or []
    conv_layers = sum(kind == "conv" for kind in layer_types) if model_type == "lfm2" else 0
    if model_type == "lfm2":
        intermediate = _lfm2_ff_dim(config, intermediate)
    if model_type == "granitemoehybrid":  # the dense MLP every layer has; intermediate_size is the experts'
        intermediate = int(config.get("shared_intermediate_size") or intermediate)
    return Shape(
        model_type, hidden, _int(config, "num_hidden_layers"), intermediate, _int(config, "vocab_size"),
        heads, int(config.get("num_key_value_heads") or heads), int(config.get("head_dim") or hidden // heads),
        bool(config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)), gated_mlp=True, learned_positions=0,
        qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)), dense_bias=False,
        conv_layers=conv_layers, conv_kernel=int(config.get("conv_L_cache") or 3) if conv_layers else 0, frozen_extra=frozen_extra,
    )


def _lfm2_ff_dim(config: dict[str, Any], ff_dim: int) -> int:
    """LFM2's MLP width: its config states a SwiGLU-equivalent width and, when
    block_auto_adjust_ff_dim is set, the model takes two thirds of it rounded up to
    block_multiple_of (6656 becomes 4608 in LFM2-350M)."""
    ff_dim = int(config.get("block_ff_dim") or ff_dim)
    if not config.get("block_auto_adjust_ff_dim"):
        return ff_dim
    ff_dim = int(float(config.get("block_ffn_dim_multiplier") or 1.0) * int(2 * ff_dim / 3))
    multiple = int(config.get("block_multiple_of") or 256)
    return multiple * ((ff_dim + multiple - 1) // multiple)


def _vision_parameters(config: dict[str, Any]) -> int:
    """A SigLIP vision tower and its projection into the language model (Gemma 3): patch
    and position embeddings, pre-norm encoder layers with biases, a post-norm."""
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise ValueError("config has text_config but no vision_config")
    hidden, inner, layers = _int(vision, "hidden_size"), _int(vision, "intermediate_size"), _int(vision, "num_hidden_layers")
    patch, image = _int(vision, "patch_size"), _int(vision, "image_size")
    per_layer = 4 * (hidden * hidden + hidden) + (hidden * inner + inner) + (inner * hidden + hidden) + 2 * 2 * hidden
    embeddings = 3 * patch * patch * hidden + hidden + (image // patch) ** 2 * hidden
    projection = hidden * _int(config["text_config"], "hidden_size") + hidden  # the projector and its norm
    return embeddings + layers * per_layer + 2 * hidden + projection


def _int(config: dict[str, Any], name: str) -> int:
    value = config.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config lacks a positive integer {name!r}")
    return value


def linear_modules(shape: Shape) -> dict[str, list[tuple[int, int, int]]]:
    """Each linear module name, with (in, out, layers) for every module of that name: how
    many layers hold it (LFM2's attention and convolution layers differ; GPT-2 has two
    `c_proj` in each layer). These are the names LoRA's target_modules match."""
    h, a, kv, i, n = shape.hidden, shape.attention_width, shape.kv_width, shape.intermediate, shape.layers
    if shape.model_type == "gpt2":
        return {"c_attn": [(h, a + 2 * kv, n)], "c_proj": [(a, h, n), (i, h, n)], "c_fc": [(h, i, n)]}
    if shape.model_type == "phi3":
        return {"qkv_proj": [(h, a + 2 * kv, n)], "o_proj": [(a, h, n)], "gate_up_proj": [(h, 2 * i, n)], "down_proj": [(i, h, n)]}
    if shape.model_type == "lfm2":
        attention, conv = n - shape.conv_layers, shape.conv_layers
        return {
            "q_proj": [(h, a, attention)], "k_proj": [(h, kv, attention)], "v_proj": [(h, kv, attention)],
            "out_proj": [(a, h, attention), (h, h, conv)], "in_proj": [(h, 3 * h, conv)],
            "w1": [(h, i, n)], "w3": [(h, i, n)], "w2": [(i, h, n)],
        }
    attention_part = {"q_proj": [(h, a, n)], "k_proj": [(h, kv, n)], "v_proj": [(h, kv, n)], "o_proj": [(a, h, n)]}
    if shape.model_type == "granitemoehybrid":
        return {**attention_part, "input_linear": [(h, 2 * i, n)], "output_linear": [(i, h, n)]}
    return {**attention_part, "gate_proj": [(h, i, n)], "up_proj": [(h, i, n)], "down_proj": [(i, h, n)]}


def parameter_count(shape: Shape) -> int:
    return _linear_parameters(shape) + _other_parameters(shape)


def _linear_parameters(shape: Shape) -> int:
    return sum(fan_in * fan_out * layers for sizes in linear_modules(shape).values() for fan_in, fan_out, layers in sizes)


def _other_parameters(shape: Shape) -> int:
    """Embeddings, head, norms, biases, convolution kernels and a vision tower: what QLoRA
    leaves in 16 bits."""
    h = shape.hidden
    norm = 2 * h if shape.dense_bias else h  # LayerNorm has a bias, RMSNorm does not
    per_layer = 2 * norm
    if shape.dense_bias:
        per_layer += sum(fan_out for sizes in linear_modules(shape).values() for _, fan_out, _ in sizes)
    elif shape.qkv_bias:
        per_layer += shape.attention_width + 2 * shape.kv_width
    embeddings = shape.vocab * h + shape.learned_positions * h
    head = 0 if shape.tied else shape.vocab * h
    convolutions = shape.conv_layers * h * shape.conv_kernel
    return embeddings + head + per_layer * shape.layers + norm + convolutions + shape.frozen_extra


def lora_parameters(shape: Shape, rank: int, target_modules: list[str] | str) -> int:
    """rank x (in + out) for every adapted linear of every layer. Names the shape does not
    know adapt nothing here; the finetune stage refuses them against the real model."""
    modules = linear_modules(shape)
    names = list(modules) if target_modules == "all-linear" else [name for name in target_modules if name in modules]
    return rank * sum((fan_in + fan_out) * layers for name in names for fan_in, fan_out, layers in modules[name])


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
