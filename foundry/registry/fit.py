"""Does a model fit, and which model fits best: the registry's estimates put to use.

A preset is assessed as it would be trained: LoRA with its own batch size, length, rank,
targets and checkpointing; on a GPU in bf16, on a CPU in fp32 (and only presets marked
cpu_acceptable). When that is not a comfortable fit, the same training at batch 1 (the
accumulation makes up the rest, so the effective batch is unchanged) is tried, then
QLoRA on a GPU (where CUDA and bitsandbytes are), at the preset's batch and at 1.

The ranking is what a person would choose: what fits comfortably before what is tight
before what does not fit; then quality; then an open model before a gated one (a gated
download stops at a licence form and a token); then speed; the registry's order last.
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
    batch_size: int  # the batch the estimate is for: the preset's, or 1 when only that fits

    @property
    def accumulation(self) -> int:
        """Gradient accumulation that keeps the preset's effective batch at this batch size."""
        settings = self.preset.finetune
        return max(1, settings.batch_size * settings.gradient_accumulation // self.batch_size)


def training_workload(settings: FinetuneDefaults, device: Device, method: Method, *, batch_size: int | None = None) -> Workload:
    return Workload(
        method, device, batch_size or settings.batch_size, settings.max_length, settings.rank,
        settings.target_modules, settings.gradient_checkpointing,
    )


def assess(preset: Preset, device: Device, available_gib: float) -> Fit:
    """The first way of training the preset that fits comfortably, else the first that is
    tight, else the one that comes closest."""
    shape = shape_from_config(preset.config)
    first: Method = "qlora" if device == "gpu" and preset.finetune.qlora else "lora"
    methods: list[Method] = [first] if device == "cpu" or first == "qlora" else [first, "qlora"]
    batches = sorted({preset.finetune.batch_size, 1}, reverse=True)
    tried = []
    for method in methods:
        for batch in batches:
            needed = estimate(shape, training_workload(preset.finetune, device, method, batch_size=batch))
            fit = Fit(preset, device, method, needed, verdict(needed.total, available_gib), batch)
            if fit.verdict == "fits":
                return fit
            tried.append(fit)
    # Tight: the first way that is; does not fit: the way that comes closest.
    return min(tried, key=lambda fit: (_VERDICT_ORDER[fit.verdict], fit.estimate.total if fit.verdict == "does not fit" else 0))


def candidates(registry: Registry, task: str | None, device: Device, *, web: bool = False) -> list[Preset]:
    """Presets for a task (tiny test models only when the task is `test`); on a CPU, only
    those that train at a bearable speed there; with `web`, only those whose published
    graphs are proven in transformers.js."""
    chosen = []
    for preset in registry.presets.values():
        if task is not None and task not in preset.tasks:
            continue
        if task is None and preset.is_tiny:
            continue
        if device == "cpu" and not preset.cpu_acceptable:
            continue
        if web and not preset.web:
            continue
        chosen.append(preset)
    return chosen


def rank_key(fit: Fit) -> tuple[int, int, bool, int]:
    return (_VERDICT_ORDER[fit.verdict], -fit.preset.quality, fit.preset.gated, -fit.preset.speed)


def ranked(registry: Registry, task: str | None, device: Device, available_gib: float, *, web: bool = False) -> list[Fit]:
    """Every candidate's fit, best first (see the module's docstring); sorted() is stable,
    so the registry's order breaks ties."""
    fits = [assess(preset, device, available_gib) for preset in candidates(registry, task, device, web=web)]
    return sorted(fits, key=rank_key)


def select(registry: Registry, task: str, device: Device, available_gib: float, *, web: bool = False) -> tuple[Fit, list[Fit]]:
    """The best model for `task` that fits (or, failing that, is tight), and every candidate."""
    every = ranked(registry, task, device, available_gib, web=web)
    if not every:
        published = " publishable to the web" if web else ""
        where = " that trains on a CPU (cpu_acceptable)" if device == "cpu" else ""
        raise UserError(f"no model{published} for task {task!r}{where}; `foundry models list` shows the tasks of each")
    best = every[0]
    if best.verdict == "does not fit":
        smallest = min(every, key=lambda fit: fit.estimate.total)
        memory = "GPU memory" if device == "gpu" else "RAM"
        raise UserError(
            f"no {task} model fits in {available_gib:g} GiB of {memory}; the smallest, {smallest.preset.alias}, "
            f"needs about {smallest.estimate.total_gib:.1f} GiB ({smallest.method}, batch {smallest.batch_size})"
        )
    return best, every


def explain(fit: Fit, best: Fit, available_gib: float) -> str:
    """One line: how the model would train here, and why it ranks where it does."""
    how = f"{fit.method}, batch {fit.batch_size}" + (f" x {fit.accumulation} accumulated" if fit.batch_size != fit.preset.finetune.batch_size else "")
    needs = f"{fit.estimate.total_gib:.1f} of {available_gib:g} GiB"
    if fit is best:
        why = "selected: " + ("the best quality that fits" if fit.verdict == "fits" else "nothing fits comfortably; this is the best that fits at all")
    elif fit.verdict == "does not fit":
        why = "more than the memory at hand, even at batch 1"
    elif _VERDICT_ORDER[fit.verdict] > _VERDICT_ORDER[best.verdict]:
        why = "tight: ranked after what fits comfortably"
    elif fit.preset.quality < best.preset.quality:
        why = f"lower quality than {best.preset.alias}"
    elif fit.preset.gated and not best.preset.gated:
        why = f"gated (licence and token): ranked after the open {best.preset.alias}, of equal quality"
    elif fit.preset.speed < best.preset.speed:
        why = f"slower than {best.preset.alias}, of equal quality"
    else:
        why = f"ties with {best.preset.alias}; the registry lists it later"
    return f"{fit.verdict} ({how}, {needs}); {why}"
