"""onnxruntime-genai's model builder, run with Foundry's adapters for two families it misbuilds.

`python -m jobs.onnx.builder_run <the builder's arguments>` is the builder's own command line
(`python -m onnxruntime_genai.models.builder`), with two of its per-family classes replaced
by subclasses here before it dispatches on `architectures[0]`, the way the builder itself
adapts a family (one subclass over its base). What each fixes, in onnxruntime-genai 0.18.0
with transformers 5.25:

- Gemma 3 (text): transformers 5 nests the rope parameters per layer type
  (`rope_parameters: {full_attention: {...}, sliding_attention: {...}}`) and no longer has
  `rope_theta` or `rope_local_base_freq`; the builder reads `rope_type` at the top (KeyError),
  and it scales the local layers' cache with the global layers' scaling.
- SmolLM3: for its layers without RoPE the builder turns the fused rotary off but not the
  rotary itself, so it adds a separate RotaryEmbedding fed by a `position_ids` input that its
  GroupQueryAttention graph does not have (KeyError), and would rotate those layers anyway.

Only the classes change; the builder's own `__main__` runs unchanged (runpy), so its options
and outputs are the builder's. Its module imports its classes from the top-level `builders`
package (onnxruntime_genai.models puts its folder on sys.path), so that is where they are
replaced.

With `--foundry-reference REQUEST.json` first (`{"model_dir": ..., "prompts": [...],
"trust_remote_code": ..., "target": ...}`), the PyTorch model the builder loads is kept
and, once the builder has written the graph and returned, the quantize stage's reference is
computed from it (jobs/onnx/reference.py): the process, its imports and the loaded
checkpoint serve both.
"""

from __future__ import annotations

import importlib
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path, for `builders`)

from foundry import exporters

# The builder's own package of classes, imported by the name builder.py imports it by.
builders = importlib.import_module("builders")

BUILDER_MODULE = "onnxruntime_genai.models.builder"


class Gemma3TextModel(builders.Gemma3Model):
    """Gemma 3 with each layer type's rope parameters: the global layers' (full_attention)
    as the builder's top-level ones, the local layers' (sliding_attention) for the local cache."""

    def make_config_init(self, config: Any) -> None:
        per_type = config.rope_parameters
        if isinstance(per_type, dict) and "full_attention" in per_type:
            full, sliding = per_type["full_attention"], per_type["sliding_attention"]
            # Lint and the stage refuse other rope types (foundry.exporters.export_problem):
            # the local cache is kept free of linear's `rescale_factors` below, and yarn's
            # magnitude scaling would leak into it.
            problem = exporters.export_problem({"model_type": "gemma3_text", "rope_parameters": per_type})
            if problem:
                raise NotImplementedError(problem)
            config.rope_parameters = dict(full)
            config.rope_theta = full["rope_theta"]
            config.rope_local_base_freq = sliding["rope_theta"]
        super().make_config_init(config)

    def make_rotary_embedding_multi_cache(self) -> None:
        """As the builder's, but the local cache unscaled: only the global layers' rope is linear."""
        self.cos_cache_global_name, self.sin_cache_global_name = "cos_cache_global", "sin_cache_global"
        self.cos_cache_local_name, self.sin_cache_local_name = "cos_cache_local", "sin_cache_local"
        make_caches = super(builders.Gemma3Model, self).make_rotary_embedding_caches
        make_caches(cos_cache_name=self.cos_cache_global_name, sin_cache_name=self.sin_cache_global_name)
        self.rope_attrs.update(create_caches=True, theta=self.rope_local_theta, rescale_factors=1)
        make_caches(cos_cache_name=self.cos_cache_local_name, sin_cache_name=self.sin_cache_local_name)


class SmolLM3NoRopeModel(builders.SmolLM3Model):
    """SmolLM3 whose layers without RoPE (`no_rope_layers[i] == 0`) have no rotary at all."""

    def make_attention(self, layer_id: int, attention: Any, root_input: str, **kwargs: Any) -> None:
        uses_rope = self.attention_attrs["rope"]
        self.attention_attrs["rope"] = uses_rope and bool(self.no_rope_layers[layer_id])
        try:
            super().make_attention(layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"] = uses_rope


ADAPTERS = {"Gemma3Model": Gemma3TextModel, "SmolLM3Model": SmolLM3NoRopeModel}


def keep_loaded_models(kept: list[Any]) -> None:
    """Append every PyTorch model the builder loads to `kept` (the builder drops its own
    reference once the graph is built; the graph's lazy tensors hold the weights until saved)."""
    load_weights = builders.base.Model.load_weights

    def load_and_keep(self: Any, input_path: str) -> Any:
        model = load_weights(self, input_path)
        kept.append(model)
        return model

    builders.base.Model.load_weights = load_and_keep


def main() -> None:
    request = None
    if sys.argv[1:2] == ["--foundry-reference"]:
        request = json.loads(Path(sys.argv[2]).read_text())
        del sys.argv[1:3]
    for name, adapter in ADAPTERS.items():
        setattr(builders, name, adapter)
    kept: list[Any] = []
    keep_loaded_models(kept)
    runpy.run_module(BUILDER_MODULE, run_name="__main__", alter_sys=True)
    if request is not None:
        from jobs.onnx import reference
        from jobs.steps import user_error_exit

        if not kept:
            raise RuntimeError("the builder loaded no PyTorch model to compute the reference from")
        with user_error_exit():
            reference.write(kept[0], Path(request["model_dir"]), request["prompts"], Path(request["target"]), trust_remote_code=request["trust_remote_code"])


if __name__ == "__main__":
    main()
