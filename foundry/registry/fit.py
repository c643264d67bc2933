"""Does a model fit, and which model fits best: the registry's estimates put to use.

A preset is assessed as it would be trained: LoRA with its own batch size, length, rank,
targets and checkpointing; on a GPU in bf16, QLoRA when the preset asks for it or when
plain LoRA does not fit (QLoRA runs wherever CUDA and bitsandbytes do); on a CPU in fp32,
and only for presets marked cpu_acceptable.
"""

from dataclasses import dataclass

from foundry.errors import UserError
from foundry.registry.load import Registry
from foundry.registry.memory import Device, Estimate, Method, Verdict, Workload, estimate, shape_from_config, verdict
from foundry.registry.schema import FinetuneDefaults, Preset

_VERDICT_ORDER: dict[Verdict, int] = {"fits": 0, "tight": 1, "does not fit": 2}


@dataclass(frozen=True)
class Fit:
    preset: Preset
    device: Device
    method: Method
    estimate: Estimate
    verdict: Verdict


def training_workload(settings: FinetuneDefaults, device: Device, method: Method, *, batch_size: int | None = None) -> Workload:
    return Workload(
        method, device, batch_size or settings.batch_size, settings.max_length, settings.rank,
        settings.target_modules, settings.gradient_checkpointing,
    )


def assess(preset: Preset, device: Device, available_gib: float) -> Fit:
    shape = shape_from_config(preset.config)
    if device == "cpu":
        needed = estimate(shape, training_workload(preset.finetune, "cpu", "lora"))
        return Fit(preset, "cpu", "lora", needed, verdict(needed.total, available_gib))
    first: Method = "qlora" if preset.finetune.qlora else "lora"
    needed = estimate(shape, training_workload(preset.finetune, "gpu", first))
    fit = Fit(preset, "gpu", first, needed, verdict(needed.total, available_gib))
    if fit.verdict != "fits" and first == "lora":
        quantized = estimate(shape, training_workload(preset.finetune, "gpu", "qlora"))
        fallback = Fit(preset, "gpu", "qlora", quantized, verdict(quantized.total, available_gib))
        if _VERDICT_ORDER[fallback.verdict] < _VERDICT_ORDER[fit.verdict]:
            return fallback
    return fit


def candidates(registry: Registry, task: str | None, device: Device) -> list[Preset]:
    """Presets for a task (tiny test models only when the task is `test`); on a CPU, only
    those that train at a bearable speed there."""
    chosen = []
    for preset in registry.presets.values():
        if task is not None and task not in preset.tasks:
            continue
        if task is None and preset.is_tiny:
            continue
        if device == "cpu" and not preset.cpu_acceptable:
            continue
        chosen.append(preset)
    return chosen


def ranked(registry: Registry, task: str | None, device: Device, available_gib: float) -> list[Fit]:
    """Every candidate's fit, best first: what fits before what is tight, then quality, then
    speed; the registry's order breaks ties."""
    fits = [assess(preset, device, available_gib) for preset in candidates(registry, task, device)]
    return sorted(fits, key=lambda fit: (_VERDICT_ORDER[fit.verdict], -fit.preset.quality, -fit.preset.speed))


def select(registry: Registry, task: str, device: Device, available_gib: float) -> tuple[Fit, list[Fit]]:
    """The best model for `task` that fits (or, failing that, is tight), and every candidate."""
    every = ranked(registry, task, device, available_gib)
    if not every:
        where = "on a CPU (no preset for it is cpu_acceptable)" if device == "cpu" else "in the registry"
        raise UserError(f"no model for task {task!r} {where}; `foundry models list` shows the tasks of each")
    best = every[0]
    if best.verdict == "does not fit":
        smallest = min(every, key=lambda fit: fit.estimate.total)
        memory = "GPU memory" if device == "gpu" else "RAM"
        raise UserError(
            f"no {task} model fits in {available_gib:g} GiB of {memory}; the smallest, {smallest.preset.alias}, "
            f"needs about {smallest.estimate.total_gib:.1f} GiB ({smallest.method})"
        )
    return best, every
