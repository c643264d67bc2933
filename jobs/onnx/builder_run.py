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

With `--foundry-request REQUEST.json` first (written by jobs/onnx/export.py), the process
does the quantize stage's export:

- in place of saving the fp32 graph, the builder's `save_model` derives the requested
  variants from the graph in memory (jobs/onnx/derive.py), each tensor converted from the
  memory-mapped checkpoint as it is read: the fp32 graph is written only as the fp32
  variant, never as a copy to derive from (at 0.5B, 2 GB less to write and read back);
- once the builder has returned, the stage's PyTorch reference is computed from the model
  it loaded (jobs/onnx/reference.py): one process, one import of PyTorch, one load.
"""

from __future__ import annotations

import importlib
import json
import runpy
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path, for `builders`)

from foundry import exporters

if TYPE_CHECKING:
    from jobs.onnx.derive import Source

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


def memory_source(model: Any) -> Source:
    """The builder's graph (an onnx_ir model) as a `derive.Source`: its structure serialized
    with placeholders in place of the initializers' values, and each value read from the
    graph's own (lazy) tensor when a variant needs it."""
    import numpy as np
    import onnx_ir as ir
    import torch

    from jobs.onnx.derive import Source

    values = {}
    for name, value in model.graph.initializers.items():
        values[name] = value.const_value
        value.const_value = ir.ExternalTensor("in-memory", None, None, values[name].dtype, shape=values[name].shape, name=name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for name, value in model.graph.initializers.items():
            value.const_value = values[name]

    def read(tensor: Any) -> np.ndarray:
        array = np.asarray(values[tensor.name].numpy())
        # The builder's weights are transposed views of the checkpoint's: PyTorch puts them
        # in order far faster than numpy (0.5B, every weight: 1.3 s against 2.1 s), on every core.
        return array if array.flags.c_contiguous else torch.from_numpy(array).contiguous().numpy()

    return Source(proto, read)


def derive_in_place_of_saving(request: dict[str, Any]) -> None:
    """The builder's `save_model` replaced: the requested variants, derived from its graph."""
    from jobs.onnx.derive import derive_variants, weight_bytes
    from jobs.onnx.export import settle_builder_graph

    def save_variants(self: Any, out_dir: str) -> None:
        self.model.graph.sort()     # as the builder's own save_model does
        source = memory_source(self.model)
        settle_builder_graph(source.model, head_size=self.head_size, producer_version=request["producer_version"])
        made = derive_variants(source, Path(request["onnx_dir"]), request["variants"])
        Path(request["made"]).write_text(json.dumps({"variants": made, "fp32_weight_bytes": weight_bytes(source)}))

    builders.base.Model.save_model = save_variants


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
    if sys.argv[1:2] == ["--foundry-request"]:
        request = json.loads(Path(sys.argv[2]).read_text())
        del sys.argv[1:3]
    for name, adapter in ADAPTERS.items():
        setattr(builders, name, adapter)
    kept: list[Any] = []
    if request is not None:
        derive_in_place_of_saving(request)
        keep_loaded_models(kept)
    runpy.run_module(BUILDER_MODULE, run_name="__main__", alter_sys=True)
    if request is not None:
        from jobs.onnx import reference
        from jobs.steps import user_error_exit

        if not kept:
            raise RuntimeError("the builder loaded no PyTorch model to compute the reference from")
        with user_error_exit():
            reference.write(kept[0], Path(request["model_dir"]), request["prompts"], Path(request["reference"]), trust_remote_code=request["trust_remote_code"])


if __name__ == "__main__":
    main()
