"""The export of a causal LM to ONNX by the family's exporter: one fp32 graph with past key
values, the variants derived from it (jobs/onnx/derive.py), and the PyTorch reference they
are checked against (jobs/onnx/reference.py), computed where the PyTorch model is loaded
anyway.

The graphs have the inputs and outputs a browser client feeds and reads (`input_ids`,
`attention_mask`, `position_ids` where the exporter keeps it, `past_key_values.N.key/value`;
`logits`, `present.N.key/value`). Which exporter takes a family is decided in
`foundry/exporters.py` (so `foundry lint` refuses the others):

- `BuilderExporter`: onnxruntime-genai's model builder, run as its own program so that
  the PyTorch model it loads is gone when it exits (through jobs/onnx/builder_run.py, which
  puts Foundry's adapters for Gemma 3 and SmolLM3 in place of the builder's classes, derives
  the variants from the graph in memory in place of saving it, and computes the reference
  from the model the builder loaded). Its graphs declare the last cache dimension as the
  symbolic `kv_cache_dim`; transformers.js sizes its empty cache by setting every symbolic
  dimension but the batch to 0, so it is pinned to the head size. It also writes
  `genai_config.json`, kept for onnxruntime-genai.
- `OptimumExporter`: optimum-onnx in its own environment (jobs/onnx/optimum_env.py) writes
  the fp32 graph; the reference is a step of its own in Foundry's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from foundry import exporters
from foundry.errors import UserError
from jobs.onnx import optimum_env, reference
from jobs.steps import StepLog, run_command, run_step

REFERENCE_FILE = "reference.npz"
REQUEST_FILE = "request.json"       # what the builder's process is asked to make (jobs/onnx/builder_run.py)
MADE_FILE = "made.json"             # what it made


def read_config(model_dir: Path) -> dict[str, Any]:
    """The folder's config.json, read as lint reads it (foundry.modelref), or a UserError."""
    from foundry.modelref import BadModelConfig, UnreadableFile
    from foundry.modelref import read_config as read_model_config

    try:
        config = read_model_config(model_dir / "config.json")
    except FileNotFoundError:
        raise UserError(f"model folder {model_dir}: no config.json; a Hugging Face causal LM folder (config.json, *.safetensors, tokenizer files) is expected") from None
    except (UnreadableFile, BadModelConfig) as error:
        raise UserError(f"model folder {model_dir}: config.json is not a model config ({error})") from None
    if not config.get("model_type"):
        raise UserError(f"model folder {model_dir}: config.json has no `model_type`; is this a transformers model?")
    return config


def family(model_dir: Path) -> exporters.Family:
    """The model's family, or a UserError naming the families Foundry exports."""
    config = read_config(model_dir)
    found = exporters.family_of(config)
    if found is None:
        architecture = (config.get("architectures") or ["?"])[0]
        raise UserError(
            f"model folder {model_dir}: {config['model_type']} ({architecture}) cannot be exported to ONNX for the web; "
            f"supported: {exporters.supported_summary()}"
        )
    problem = exporters.export_problem(config)
    if problem:
        raise UserError(f"model folder {model_dir}: cannot be exported to ONNX: {problem}")
    return found


@dataclass(frozen=True)
class Exported:
    variants: dict[str, dict[str, Any]]     # what jobs.onnx.derive.derive made of each variant
    fp32_weight_bytes: int                  # the fp32 graph's weights, which the checks' slices are sized from
    reference: Path                         # the prompts' token ids and PyTorch logits (jobs/onnx/reference.py)


class Exporter:
    """Makes the requested variants of a model folder in `onnx_dir`, through an fp32 graph,
    and the PyTorch reference over `prompts`; `work` is its scratch folder."""

    name: str

    def export(self, log: StepLog, model_dir: Path, work: Path, onnx_dir: Path, *, variants: list[str], prompts: list[str], trust_remote_code: bool) -> Exported:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


class BuilderExporter(Exporter):
    """The builder's process does it all (jobs/onnx/builder_run.py): it builds the fp32 graph
    in memory, derives each variant from it in place of saving it, and computes the reference
    from the PyTorch model it loaded. An fp32 graph reaches the disk only as the fp32 variant."""

    name = exporters.BUILDER

    def export(self, log: StepLog, model_dir: Path, work: Path, onnx_dir: Path, *, variants: list[str], prompts: list[str], trust_remote_code: bool) -> Exported:
        cache = work / ".builder-cache"
        options = [
            "hf_token=false",
            f"hf_remote={'true' if trust_remote_code else 'false'}",
            # A full cache for every layer: transformers.js grows one cache per layer, and the
            # builder's windowed cache for sliding-window layers (gemma2/3) wants a capacity.
            "windowed_kv_cache=false",
        ]
        work.mkdir(parents=True, exist_ok=True)
        request = {
            "model_dir": str(model_dir), "prompts": prompts, "trust_remote_code": trust_remote_code, "reference": str(work / REFERENCE_FILE),
            "variants": variants, "onnx_dir": str(onnx_dir), "made": str(work / MADE_FILE), "producer_version": self.version(),
        }
        (work / REQUEST_FILE).write_text(json.dumps(request))
        command = [
            sys.executable, "-m", "jobs.onnx.builder_run", "--foundry-request", str(work / REQUEST_FILE),
            "-i", str(model_dir), "-o", str(work), "-p", "fp32", "-e", "cpu", "-c", str(cache), "--extra_options", *options,
        ]
        run_command(log, "export", command, env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
        shutil.rmtree(cache, ignore_errors=True)
        made = json.loads((work / MADE_FILE).read_text())
        return Exported(made["variants"], made["fp32_weight_bytes"], work / REFERENCE_FILE)

    def version(self) -> str:
        from importlib.metadata import version

        return version("onnxruntime-genai")


class OptimumExporter(Exporter):
    """optimum-onnx writes the fp32 graph from its own environment; the reference is a step
    of its own here, and the variants are derived from the graph's file in this process."""

    name = exporters.OPTIMUM

    def export(self, log: StepLog, model_dir: Path, work: Path, onnx_dir: Path, *, variants: list[str], prompts: list[str], trust_remote_code: bool) -> Exported:
        from jobs.onnx.derive import Source, derive_variants, weight_bytes

        python = optimum_env.python()
        script = Path(__file__).with_name("optimum_export.py")
        command = [str(python), str(script), str(model_dir), str(work), "--trust-remote-code" if trust_remote_code else "--no-remote-code"]
        run_command(log, "export", command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        run_step(log, "reference", reference.from_checkpoint, model_dir, prompts, work / REFERENCE_FILE, trust_remote_code)
        source = Source.from_file(work / "model.onnx")
        return Exported(derive_variants(source, onnx_dir, variants), weight_bytes(source), work / REFERENCE_FILE)

    def version(self) -> str:
        return optimum_env.OPTIMUM_ONNX_VERSION


EXPORTERS: dict[str, Exporter] = {exporter.name: exporter for exporter in (BuilderExporter(), OptimumExporter())}


def exporter_for(model_dir: Path) -> Exporter:
    return EXPORTERS[family(model_dir).exporter]


def settle_builder_graph(model: onnx.ModelProto, *, head_size: int, producer_version: str) -> None:
    """Give the cache's last dimension its value, the head size, in the builder's graph's
    inputs and outputs (transformers.js sizes an empty cache by setting every symbolic
    dimension but the batch to 0); and record the builder's version alone (it appends the
    git commit of the directory it ran in, which would make every commit of a checkout
    export other bytes)."""
    model.producer_version = producer_version
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            last = value.type.tensor_type.shape.dim[-1]
            if last.dim_param:
                last.Clear()
                last.dim_value = head_size


def check_decoder_io(model: Any) -> dict[str, Any]:
    """Check the graph's names against what transformers.js feeds and reads; return a summary.

    `model` is an `onnx.ModelProto` (loaded with or without its external data).
    """
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    missing = [name for name in ("input_ids", "attention_mask") if name not in inputs]
    if "logits" not in outputs:
        missing.append("logits (output)")
    past = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
    if not past:
        missing.append("past_key_values.* (inputs)")
    for name in past:
        present = "present." + name.removeprefix("past_key_values.")
        if present not in outputs:
            missing.append(f"{present} (output)")
    if missing:
        raise RuntimeError(f"the exported graph lacks what transformers.js needs: {', '.join(missing)}")

    def elem(value: Any) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    return {
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "uses_position_ids": "position_ids" in inputs,
        "num_layers": len({name.split(".")[1] for name in past}),
        "past_dtype": elem(inputs[past[0]]),
        "logits_dtype": elem(outputs["logits"]),
    }


def _layer_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1, name)
