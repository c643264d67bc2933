"""ONNX export of a causal LM with past key values, as the graph transformers.js loads.

One job: a local Hugging Face folder in, one fp32 `model.onnx` out (with its weights as
external data in one `model.onnx_data`), checked to have the inputs and outputs a browser
client feeds and reads:

- inputs `input_ids`, `attention_mask`, `position_ids` (for the families whose export has
  it) and `past_key_values.N.key` / `past_key_values.N.value`;
- outputs `logits` and `present.N.key` / `present.N.value`.

optimum-onnx 0.1.0 exports `text-generation-with-past` as that one graph (no separate
decoder / decoder-with-past / merged files, the past is empty on the first step), so
nothing but `model.onnx` is kept from its output folder.
"""

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foundry.errors import UserError

TASK = "text-generation-with-past"
LOG = logging.getLogger("foundry.quantize")

# Messages every export prints and no Foundry user can act on, by logger: optimum's note
# that the tied lm_head and the embedding became two initializers (the lm_head MatMul takes
# a transposed copy, as in every community export), and transformers' `torch_dtype`
# deprecation, raised by optimum's own loader call and by configs that carry both keys.
# (Filters, not levels: transformers 4.57 runs a tensor-parallel check that logs two
# warnings whenever `transformers.modeling_utils` has its level raised.)
_NOISE = {
    "optimum": ("Found different candidate ONNX initializers", "\t"),
    "transformers.configuration_utils": ("`torch_dtype` is deprecated",),
    "transformers.modeling_utils": ("`torch_dtype` is deprecated",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"model folder {model_dir}: no config.json; a Hugging Face causal LM folder (config.json, *.safetensors, tokenizer files) is expected")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"model folder {model_dir}: config.json is not valid JSON ({error})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise UserError(f"model folder {model_dir}: config.json has no `model_type`; is this a transformers model?")
    return config


def exportable_model_types() -> list[str]:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    return sorted(TasksManager.get_supported_model_type_for_task(TASK, "onnx"))


def check_exportable(model_dir: Path) -> str:
    """The model type, or a UserError when optimum-onnx cannot export it as a decoder with past."""
    config = read_config(model_dir)
    model_type = str(config["model_type"])
    supported = exportable_model_types()
    if model_type not in supported or config.get("is_encoder_decoder"):
        from importlib.metadata import version

        raise UserError(
            f"model type {model_type!r} cannot be exported to ONNX as a decoder with past key values by optimum-onnx "
            f"{version('optimum-onnx')} (decoder-only types it exports: {', '.join(t for t in supported if t not in _ENCODER_DECODER)})"
        )
    return model_type


# Types optimum lists for text-generation that are encoder-decoders (their decoder only).
_ENCODER_DECODER = {"bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "pegasus"}


@contextlib.contextmanager
def quiet_loaders() -> Iterator[None]:
    """Silence the tracer's and loaders' warnings that every export prints and no user can act on."""
    import torch

    filters = {name: _DropMessages(prefixes) for name, prefixes in _NOISE.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator")
        # optimum-onnx 0.1.0 drives torch's TorchScript exporter (torch.onnx.export(dynamo=False)).
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        for name, drop in filters.items():
            logging.getLogger(name).addFilter(drop)
        try:
            yield
        finally:
            for name, drop in filters.items():
                logging.getLogger(name).removeFilter(drop)


def export_decoder(model_dir: Path, workdir: Path, *, trust_remote_code: bool = False) -> Path:
    """Export `model_dir` into a new `workdir/export-*/`; return the path of its `model.onnx`.

    The weights are exported in float32 whatever dtype the checkpoint stores (bf16 merges
    included): every variant is derived from this graph.
    """
    from optimum.exporters.onnx import main_export

    check_exportable(model_dir)
    target = Path(tempfile.mkdtemp(prefix="export-", dir=workdir))
    with quiet_loaders():
        main_export(
            str(model_dir),
            output=target,
            task=TASK,
            dtype="fp32",
            framework="pt",
            library_name="transformers",
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            do_validation=False,  # the quantize stage measures agreement against PyTorch itself
            device="cpu",
        )
    onnx_path = target / "model.onnx"
    if not onnx_path.is_file():
        produced = sorted(p.name for p in target.iterdir() if p.suffix == ".onnx")
        raise RuntimeError(f"optimum-onnx wrote {produced} instead of one model.onnx for {TASK}")
    return onnx_path


def check_decoder_io(model: Any) -> dict[str, Any]:
    """Check the graph's names against what transformers.js feeds and reads; return a summary.

    `model` is an `onnx.ModelProto` (loaded with or without its external data).
    """
    import onnx

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
