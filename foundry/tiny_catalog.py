"""The `tiny:` models: small, deterministic models Foundry builds itself.

Tests and the offline demo use only these, so nothing is ever fetched from a hub. This
module holds their specifications as plain data, so that `foundry lint` can check vocab
and hidden sizes of `tiny:` references without importing torch; `jobs/tiny/models.py`
builds the weights and tokenizer from the same specification.

Models of one family share one tokenizer and one shape and differ only in their seed,
so any two of a family can be merged with every mergekit method.

The `skills-` models are the merging testbed: a Llama-family base taught generic chat tasks,
and two specialists fine-tuned from it to one skill each (`jobs/tiny/skills.py`), so that
task vectors relative to a shared base exist and merging them can be measured.
"""

from dataclasses import dataclass, field
from typing import Any

PREFIX = "tiny:"

# Bump when the way tiny models are built changes: it is part of their cache key and of
# every stage hash that uses them. 2: built with transformers 5 (same weights; config.json
# has rope_parameters, tokenizer_config.json names TokenizersBackend, no special_tokens_map.json).
BUILD_VERSION = 2

_SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4}


@dataclass(frozen=True)
class TinySpec:
    name: str
    family: str
    architecture: str
    seed: int
    config: dict[str, Any] = field(hash=False)
    parent: str | None = None  # fine-tuned from this tiny model's weights instead of trained from scratch
    skill: str | None = None  # what jobs.tiny.skills teaches on top: "generic", "arith" or "reverse"

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.config.get("hidden_size", self.config.get("n_embd", 0)))


def _llama_config() -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": _SHAPE["vocab_size"],
        "hidden_size": _SHAPE["hidden_size"],
        "intermediate_size": _SHAPE["intermediate_size"],
        "num_hidden_layers": _SHAPE["num_layers"],
        "num_attention_heads": _SHAPE["num_heads"],
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }


def _qwen2_config() -> dict[str, Any]:
    return {**_llama_config(), "model_type": "qwen2", "sliding_window": None, "use_sliding_window": False}


def _gpt2_config() -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "vocab_size": _SHAPE["vocab_size"],
        "n_embd": _SHAPE["hidden_size"],
        "n_layer": _SHAPE["num_layers"],
        "n_head": _SHAPE["num_heads"],
        "n_positions": 256,
        "n_inner": _SHAPE["intermediate_size"],
    }


_FAMILIES = {
    "llama": ("LlamaForCausalLM", _llama_config),
    "qwen2": ("Qwen2ForCausalLM", _qwen2_config),
    "gpt2": ("GPT2LMHeadModel", _gpt2_config),
}

# name: (parent, skill). The base learns generic tasks; each specialist learns one skill from it.
_SKILLS = {
    "skills-base": (None, "generic"),
    "skills-arith": ("skills-base", "arith"),
    "skills-reverse": ("skills-base", "reverse"),
}


def _catalog() -> dict[str, TinySpec]:
    """Three seeds per family: enough for every mergekit method (a base plus two models);
    then the skills testbed, Llama-shaped with the Llama tokenizer."""
    specs = {}
    for family_index, (family, (architecture, make_config)) in enumerate(_FAMILIES.items()):
        for seed_index, suffix in enumerate("abc"):
            name = f"{family}-{suffix}"
            specs[name] = TinySpec(name, family, architecture, seed=1000 * (family_index + 1) + seed_index, config=make_config())
    for index, (name, (parent, skill)) in enumerate(_SKILLS.items()):
        specs[name] = TinySpec(name, "llama", _FAMILIES["llama"][0], seed=5000 + index, config=_llama_config(), parent=parent, skill=skill)
    return specs


CATALOG: dict[str, TinySpec] = _catalog()


def is_tiny(reference: str) -> bool:
    return reference.startswith(PREFIX)


def lookup(reference: str) -> TinySpec | None:
    """The spec for `tiny:NAME`, or None when NAME is not in the catalogue."""
    return CATALOG.get(reference[len(PREFIX):]) if is_tiny(reference) else None
