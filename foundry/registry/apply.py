"""A recipe's finetune section with the registry applied: the finetune stage's parameters.

`preset: auto` looks the base model up (the merge's base_model, else its first model; or
the one model a recipe starts from) by `tiny:` name or hub id; a model the registry does
not know gets the registry's generic defaults. `preset: ALIAS` names one. Every field the
recipe sets wins over the preset's. This runs in the planner, so the settings a stage
trains with are part of its key, and the stage needs no registry of its own.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry import modelref
from foundry.errors import UserError
from foundry.hashing import sha256_file
from foundry.recipe.references import distinct_sources
from foundry.recipe.schema import Recipe
from foundry.registry.fit import training_workload
from foundry.registry.load import Registry
from foundry.registry.memory import Device, Verdict, estimate, shape_from_config, verdict
from foundry.registry.schema import FinetuneDefaults, Preset

OVERRIDABLE: tuple[str, ...] = tuple(FinetuneDefaults.model_fields)
GENERIC_TEMPLATE = "plain"  # for a model with no chat template and no preset


@dataclass(frozen=True)
class ResolvedFinetune:
    base: str | None
    preset: Preset | None
    settings: FinetuneDefaults
    overridden: tuple[str, ...]


def base_reference(recipe: Recipe) -> str | None:
    if isinstance(recipe.base_model, str):
        return recipe.base_model
    sources = distinct_sources(recipe)
    return sources[0] if sources else None


def resolve(recipe: Recipe, registry: Registry) -> ResolvedFinetune:
    spec = recipe.finetune
    assert spec is not None
    base = base_reference(recipe)
    if spec.preset == "auto":
        preset = registry.by_model(base) if base else None
    else:
        preset = registry.get(spec.preset)
    defaults = preset.finetune if preset else registry.defaults
    overrides = {name: getattr(spec, name) for name in OVERRIDABLE if getattr(spec, name) is not None}
    settings = FinetuneDefaults.model_validate({**defaults.model_dump(), **overrides})
    if preset is not None and settings.max_length > preset.context_length:
        raise UserError(f"recipe {recipe.name}: finetune.max_length {settings.max_length} is above {preset.alias}'s context length {preset.context_length}")
    return ResolvedFinetune(base, preset, settings, tuple(overrides))


def stage_params(recipe: Recipe, resolved: ResolvedFinetune) -> dict[str, Any]:
    spec = recipe.finetune
    assert spec is not None
    return {
        **resolved.settings.model_dump(),
        "dataset": _dataset_location(spec.dataset),
        "preset": resolved.preset.alias if resolved.preset else None,
        "chat_template": resolved.preset.chat_template if resolved.preset else GENERIC_TEMPLATE,
        "max_steps": spec.max_steps,
        "packing": spec.packing,
        "force_cpu": spec.force_cpu,
        "seed": spec.seed,
        "eval_every": spec.eval_every,
        "checkpoint_every": spec.checkpoint_every,
        "split": spec.split.model_dump(),
        "trust_remote_code": recipe.trust_remote_code,
        "allow_pickle": recipe.allow_pickle,
    }


def dataset_identity(location: str) -> list[str]:
    """What makes a dataset the same data: a local file's sha256; an s3:// URL as written
    (the planner does not read buckets: write a new object for new data)."""
    if "://" in location and not location.startswith("file://"):
        return [location]
    path = Path(location.removeprefix("file://"))
    return [str(path), sha256_file(path)] if path.is_file() else [str(path)]


def _dataset_location(dataset: str) -> str:
    if "://" in dataset and not dataset.startswith("file://"):
        return dataset
    return str(Path(os.path.expanduser(dataset.removeprefix("file://"))).resolve())


def hardware_fit(recipe: Recipe, resolved: ResolvedFinetune) -> tuple[Verdict, str] | None:
    """The verdict and a line saying why, when the training would not fit (or only just) in
    the hardware the recipe declares: finetune.hardware, or resources.finetune.memory for a
    run on a CPU. None when it fits, or when nothing is declared to check against."""
    spec = recipe.finetune
    assert spec is not None
    declared = _declared(recipe)
    config = resolved.preset.config if resolved.preset else (modelref.parse(resolved.base).config() if resolved.base else None)
    if declared is None or config is None:
        return None
    device, available = declared
    method = "qlora" if device == "gpu" and resolved.settings.qlora else "lora"
    try:
        needed = estimate(shape_from_config(config), training_workload(resolved.settings, device, method))
    except ValueError:
        return None  # a config without the shape fields: nothing to estimate from
    judged = verdict(needed.total, available)
    if judged == "fits":
        return None
    memory = "GPU memory" if device == "gpu" else "RAM"
    model = resolved.preset.alias if resolved.preset else resolved.base
    advice = "lower batch_size or max_length, or set gradient_checkpointing: true" + ("" if device == "cpu" or method == "qlora" else ", or qlora: true")
    return judged, (
        f"finetune: {model} ({method}, batch {resolved.settings.batch_size} x {resolved.settings.max_length} tokens) needs about "
        f"{needed.total_gib:.1f} GiB; the declared {available:g} GiB of {memory} is {'tight' if judged == 'tight' else 'not enough'}; {advice}"
    )


def _declared(recipe: Recipe) -> tuple[Device, float] | None:
    spec = recipe.finetune
    assert spec is not None
    hardware = spec.hardware
    if hardware is not None and hardware.vram_gb is not None and not spec.force_cpu:
        return "gpu", hardware.vram_gb
    if hardware is not None and hardware.ram_gb is not None:
        return "cpu", hardware.ram_gb
    resources = recipe.resources.finetune if recipe.resources else None
    if resources is not None and resources.memory and (spec.force_cpu or not resources.gpu):
        return "cpu", _quantity_gib(resources.memory)
    return None


def _quantity_gib(quantity: str) -> float:
    """A Kubernetes memory quantity (32Gi, 500M, ...) in GiB."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * units[suffix] / 2**30
    return float(quantity) / 2**30
