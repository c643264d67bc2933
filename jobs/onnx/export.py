"""The fp32 ONNX export of a causal LM, as one graph with past key values, by the family's exporter.

A local Hugging Face folder in, `model.onnx` plus its external data out, with the inputs
and outputs a browser client feeds and reads (`input_ids`, `attention_mask`, `position_ids`
where the exporter keeps it, `past_key_values.N.key/value`; `logits`,
`present.N.key/value`). Every variant is derived from this graph (jobs/onnx/derive.py).
Beside it, the PyTorch reference the variants are checked against (jobs/onnx/reference.py),
computed where the PyTorch model is loaded anyway.

Which exporter takes a family is decided in `foundry/exporters.py` (so `foundry lint`
refuses the others):

- `BuilderExporter`: onnxruntime-genai's model builder, run as its own program so that
  the PyTorch model it loads is gone when it exits (through jobs/onnx/builder_run.py, which
  puts Foundry's adapters for Gemma 3 and SmolLM3 in place of the builder's classes, and
  computes the reference from the model the builder loaded once the graph is written). Its
  graphs declare the last cache dimension as the symbolic `kv_cache_dim`; transformers.js
  sizes its empty cache by setting every symbolic dimension but the batch to 0, so it is
  pinned to the head size here. It also writes `genai_config.json`, kept for onnxruntime-genai.
- `OptimumExporter`: optimum-onnx in its own environment (jobs/onnx/optimum_env.py); the
  reference is a step of its own in Foundry's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from foundry import exporters
from foundry.errors import UserError
from jobs.onnx import optimum_env, reference
from jobs.steps import StepLog, run_command, run_step

GENAI_CONFIG = "genai_config.json"
REFERENCE_FILE = "reference.npz"


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
    graph: Path         # <out>/model.onnx, fp32, its external data beside it
    reference: Path     # <out>/reference.npz: the prompts' token ids and PyTorch logits


class Exporter:
    """Writes the fp32 graph of a model folder, and the reference over `prompts`, into `out`."""

    name: str

    def export(self, log: StepLog, model_dir: Path, out: Path, *, prompts: list[str], trust_remote_code: bool) -> Exported:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


class BuilderExporter(Exporter):
    name = exporters.BUILDER

    def export(self, log: StepLog, model_dir: Path, out: Path, *, prompts: list[str], trust_remote_code: bool) -> Exported:
        cache = out / ".builder-cache"
        options = [
            "hf_token=false",
            f"hf_remote={'true' if trust_remote_code else 'false'}",
            # A full cache for every layer: transformers.js grows one cache per layer, and the
            # builder's windowed cache for sliding-window layers (gemma2/3) wants a capacity.
            "windowed_kv_cache=false",
        ]
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out) as request:
            json.dump({"model_dir": str(model_dir), "prompts": prompts, "trust_remote_code": trust_remote_code, "target": str(out / REFERENCE_FILE)}, request)
            request.flush()
            command = [
                sys.executable, "-m", "jobs.onnx.builder_run", "--foundry-reference", request.name,
                "-i", str(model_dir), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(cache), "--extra_options", *options,
            ]
            run_command(log, "export", command, env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
        shutil.rmtree(cache, ignore_errors=True)
        model = out / "model.onnx"
        _settle_graph(model, out / GENAI_CONFIG, producer_version=self.version())
        return Exported(model, out / REFERENCE_FILE)

    def version(self) -> str:
        from importlib.metadata import version

        return version("onnxruntime-genai")


class OptimumExporter(Exporter):
    name = exporters.OPTIMUM

    def export(self, log: StepLog, model_dir: Path, out: Path, *, prompts: list[str], trust_remote_code: bool) -> Exported:
        python = optimum_env.python()
        script = Path(__file__).with_name("optimum_export.py")
        command = [str(python), str(script), str(model_dir), str(out), "--trust-remote-code" if trust_remote_code else "--no-remote-code"]
        run_command(log, "export", command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        run_step(log, "reference", reference.from_checkpoint, model_dir, prompts, out / REFERENCE_FILE, trust_remote_code)
        return Exported(out / "model.onnx", out / REFERENCE_FILE)

    def version(self) -> str:
        return optimum_env.OPTIMUM_ONNX_VERSION


EXPORTERS: dict[str, Exporter] = {exporter.name: exporter for exporter in (BuilderExporter(), OptimumExporter())}


def exporter_for(model_dir: Path) -> Exporter:
    return EXPORTERS[family(model_dir).exporter]


def _settle_graph(model_path: Path, genai_config: Path, *, producer_version: str) -> None:
    """Give the cache's last dimension its value, the head size, in the graph's inputs and
    outputs; and record the builder's version alone (it appends the git commit of the
    directory it ran in, which would make every commit of a checkout export other bytes)."""
    head_size = int(json.loads(genai_config.read_text())["model"]["decoder"]["head_size"])
    model = onnx.load(str(model_path), load_external_data=False)
    model.producer_version = producer_version
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            last = value.type.tensor_type.shape.dim[-1]
            if last.dim_param:
                last.Clear()
                last.dim_value = head_size
    temporary = model_path.with_name(f".{model_path.name}.tmp")
    temporary.write_bytes(model.SerializeToString())
    os.replace(temporary, model_path)


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
