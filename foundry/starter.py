"""`foundry init`: a commented starter recipe for one model, or a pair to merge.

The recipe is what a first run needs: the model (or a slerp merge of two), quantize and
publish; fine-tune and evaluate are there, commented, to switch on. It is validated as
`foundry lint` validates a recipe before it is written, and written whole (a temporary file
renamed into place), so a file `init` leaves behind always lints. A model whose family no
exporter takes (foundry/exporters.py) gets its quantize and publish blocks commented too,
with the reason: `foundry lint` would refuse them.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry import modelref
from foundry.errors import UserError
from foundry.exporters import Family, family_of
from foundry.recipe.load import load_recipe
from foundry.recipe.schema import SAFE_NAME
from foundry.registry.load import Registry
from foundry.registry.schema import Preset


@dataclass(frozen=True)
class StarterModel:
    """A model as the recipe will name it, with what is known of it offline."""

    reference: str
    preset: Preset | None
    config: dict[str, Any] | None

    @property
    def label(self) -> str:
        return self.preset.alias if self.preset else self.reference

    @property
    def exporter(self) -> Family | None:
        return family_of(self.config) if self.config else None


def resolve(reference: str, registry: Registry) -> StarterModel:
    """A registry alias or hub id becomes the preset's hub id; another hub id, a tiny: name
    or a local folder is taken as written, its config read when it is at hand."""
    preset = registry.presets.get(reference) or registry.by_model(reference)
    if preset is not None:
        return StarterModel(preset.hub_id, preset, preset.config)
    ref = modelref.parse(reference)
    if ref.kind == "local" and not ref.local_path.is_dir():
        raise UserError(f"--model {reference}: not a registry alias, a hub id (org/name) or a model folder; `foundry models list` shows the aliases")
    return StarterModel(reference, None, ref.config())


def write_starter(path: Path, references: list[str], registry: Registry, *, force: bool = False) -> Path:
    """Write the starter recipe at `path` and return it; UserError, with nothing written,
    when the file exists (without `force`), the models cannot be merged, or the name is unsafe."""
    if not 1 <= len(references) <= 2:
        raise UserError(f"give one --model (to start from it) or two (to merge them), not {len(references)}")
    if path.suffix not in (".yml", ".yaml"):
        raise UserError(f"{path}: a recipe file ends in .yml or .yaml")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pick another name, or pass --force to overwrite it")
    if not re.match(SAFE_NAME, path.stem) or ".." in path.stem:
        raise UserError(f"{path}: {path.stem!r} is not a safe recipe name; use letters, digits, '.', '_' and '-'")
    models = [resolve(reference, registry) for reference in references]
    if len(models) == 2:
        _check_mergeable(*models)
    text = render(path.stem, models, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.init")
    draft.write_text(text, encoding="utf-8")
    try:
        load_recipe(draft)
    except UserError as error:
        draft.unlink()
        raise UserError(f"{path}: the starter recipe for {' + '.join(model.label for model in models)} does not lint: {error.lines()[0]}") from None
    os.replace(draft, path)
    return path


def _check_mergeable(first: StarterModel, second: StarterModel) -> None:
    if first.config is None or second.config is None:
        return  # not at hand offline: `foundry lint` checks again once it is cached
    for label, get in (("architecture", lambda c: c.get("model_type")), ("hidden size", modelref.hidden_size), ("vocab size", lambda c: c.get("vocab_size"))):
        mine, theirs = get(first.config), get(second.config)
        if mine != theirs:
            raise UserError(
                f"{first.label} and {second.label} cannot be merged: {label} {mine} and {theirs} differ; "
                "a weight merge needs two models of one family and size (two fine-tunes of one base)"
            )


def render(name: str, models: list[StarterModel], shown_path: str) -> str:
    first = models[0]
    tiny = all(model.reference.startswith("tiny:") for model in models)
    lines = [
        f"# {name}: a starter recipe written by `foundry init` for {' + '.join(model.label for model in models)}.",
        f"#   foundry lint {shown_path}    check it (nothing runs)",
        f"#   foundry plan {shown_path}    the stages it makes, and which are already done",
        f"#   foundry run {shown_path}     run them on this machine; `foundry submit` runs them on a cluster",
        "# Every key is described in docs/recipes.md; `foundry schema` gives editors its JSON Schema.",
        f"name: {name}",
        "",
        "# --- mergekit's part, handed to mergekit unchanged ---",
        "models:",
    ]
    lines += [f"  - model: {model.reference}" for model in models]
    if len(models) == 2:
        lines += [
            "merge_method: slerp     # spherical interpolation; linear, ties, dare_ties, task_arithmetic ... also work",
            f"base_model: {first.reference}",
            "parameters:",
            f"  t: 0.5                # 0 keeps {first.label}, 1 takes {models[1].label}",
        ]
    else:
        lines += ["# One model, used as it is. To merge, add a second model of the same family and size,",
                  "# then merge_method: slerp, base_model and parameters: {t: 0.5}."]
    lines += [f"dtype: {'float32' if tiny else 'bfloat16'}", "", "# --- Foundry's part ---"]
    lines += _finetune_block(first) + [""] + _evaluate_block() + [""] + _publish_block(name, models)
    return "\n".join(lines) + "\n"


def _finetune_block(base: StarterModel) -> list[str]:
    preset = f"the registry's preset for {base.preset.alias}" if base.preset else "the registry's generic settings (no preset knows this model)"
    block = [
        "# Fine-tune with LoRA: uncomment, and point dataset at your JSONL. The other settings come",
        f"# from {preset}; a field written here wins.",
        "# finetune:",
        "#   dataset: data/train.jsonl   # rows of {\"messages\": [...]} or {\"prompt\": ..., \"completion\": ...}",
        "#   preset: auto",
        "#   epochs: 3",
    ]
    if base.preset is not None and base.preset.gated:
        block.insert(0, f"# {base.preset.alias} is gated: accept its licence on the hub and set HF_TOKEN before a run.")
    return block


def _evaluate_block() -> list[str]:
    return [
        "# Evaluate after the merge (and fine-tune); a failed gate stops before quantize:",
        "# evaluate:",
        "#   suites: [arc_easy]          # builtins: arc_easy, arc_challenge, hellaswag; or {jsonl: data/facts.jsonl}",
        "#   limit: 200",
        "#   gate: {arc_easy.acc_norm: \">= 0.45\"}",
    ]


def _publish_block(name: str, models: list[StarterModel]) -> list[str]:
    block = [
        "quantize:",
        "  variants: [fp16, q8, q4]     # ONNX variants for the browser (fp32, fp16, q8, q4, q2)",
        "publish:",
        "  to: ./.foundry/published/models   # a folder, or s3://bucket/prefix",
        "  entry:",
        f"    id: {name}-q4",
        f"    key: {name}",
        f'    name: "{name}"',
    ]
    unexported = [model for model in models if model.config is not None and model.exporter is None]
    if unexported:
        architecture = (unexported[0].config or {}).get("architectures", ["?"])[0]
        reason = [
            f"# quantize and publish are commented: no exporter takes {unexported[0].label} ({architecture}) yet",
            "# (foundry/exporters.py lists the families that do). Fine-tune and evaluate it; publish another family.",
        ]
        return reason + ["# " + line for line in block]
    unproven = [model for model in models if model.exporter is not None and not model.exporter.web]
    if unproven:
        return [f"# {unproven[0].label} exports to ONNX, but its graphs are not yet proven in transformers.js."] + block
    return block
