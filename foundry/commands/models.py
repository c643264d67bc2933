"""`foundry models list|show|select`: the registry, its memory estimates and its choice.

Light by design: the registry is YAML and pydantic, estimates are arithmetic, and hardware
is read with nvidia-smi and sysconf; nothing here imports torch.
"""

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from foundry.errors import UserError
from foundry.registry import fit as fitting
from foundry.registry.gated import how_to_provide
from foundry.registry.hardware import Hardware, detect, ram_gib
from foundry.registry.load import load_registry
from foundry.registry.memory import GIB, Workload, estimate, shape_from_config
from foundry.registry.schema import TASKS, Preset

# Wide when piped (CI logs, files), so a table keeps one line a model.
_console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 220)
_stderr = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 220)


def hardware_from_flags(vram: float | None, ram: float | None, detect_it: bool, *, cpu: bool = False) -> Hardware | None:
    given = [flag for flag, value in (("--vram", vram), ("--ram", ram), ("--detect", detect_it or None)) if value is not None]
    if len(given) > 1:
        raise UserError(f"give one of --vram, --ram or --detect, not {' and '.join(given)}")
    if cpu:
        if vram is not None or detect_it:
            raise UserError(f"--cpu trains on a CPU: give --ram (or nothing, for this machine's RAM), not {given[0]}")
        return Hardware("cpu", ram, "RAM (given)") if ram is not None else Hardware("cpu", ram_gib(), "RAM")
    if vram is not None:
        return Hardware("gpu", vram, "GPU (given)")
    if ram is not None:
        return Hardware("cpu", ram, "RAM (given)")
    return detect() if detect_it else None


def list_models(task: str | None, fits: bool, hardware: Hardware | None, as_json: bool, *, web: bool = False, cpu: bool = False) -> None:
    registry = load_registry()
    if task is not None and task not in TASKS:
        raise UserError(f"--task {task}: unknown task; tasks are {', '.join(TASKS)}")
    if fits and hardware is None:
        hardware = detect()
    presets = fitting.candidates(registry, task, hardware.device if hardware and (fits or cpu) else "gpu", web=web)
    assessed = {preset.alias: fitting.assess(preset, hardware.device, hardware.memory_gib) for preset in presets} if hardware else {}
    if fits:
        presets = [preset for preset in presets if assessed[preset.alias].verdict != "does not fit"]
    if as_json:
        typer.echo(json.dumps([_preset_json(preset, assessed.get(preset.alias)) for preset in presets], indent=2))
        return
    title = "models" + (f" for {task}" if task else "") + (f" that fit {hardware.memory_gib:.0f} GiB ({hardware.name})" if fits and hardware else "")
    table = Table(title=title)
    for column in ("alias", "hub id", "params", "tasks", "licence", "gated", "context", "VRAM min/rec", "RAM min/rec", "CPU", "web", "quality", "speed"):
        table.add_column(column, justify="right" if column in ("params", "context", "VRAM min/rec", "RAM min/rec") else "left")
    if hardware:
        table.add_column(f"{hardware.memory_gib:.0f} GiB {hardware.device.upper()}")
    for preset in presets:
        row = [
            preset.alias, preset.hub_id, human_count(preset.parameters), ",".join(preset.tasks), preset.license, "yes" if preset.gated else "no",
            f"{preset.context_length:,}", f"{preset.vram_min_gb:g}/{preset.vram_recommended_gb:g}", f"{preset.ram_min_gb:g}/{preset.ram_recommended_gb:g}",
            "yes" if preset.cpu_acceptable else "no", web_label(preset), "★" * preset.quality, "★" * preset.speed,
        ]
        if hardware:
            assessed_fit = assessed[preset.alias]
            batch = f", batch {assessed_fit.batch_size}" if assessed_fit.batch_size != preset.finetune.batch_size else ""
            row.append(f"{assessed_fit.verdict} ({assessed_fit.method}{batch}, {assessed_fit.estimate.total_gib:.1f})")
        table.add_row(*row)
    _console.print(table)
    if not presets:
        _console.print("no model matches; try without --fits, --web or --cpu, or another --task")


def show_model(alias: str, as_json: bool) -> None:
    preset = load_registry().get(alias)
    estimates = memory_table(preset)
    if as_json:
        typer.echo(json.dumps({**_preset_json(preset, None), "estimates_gib": estimates}, indent=2))
        return
    _console.print(f"[bold]{preset.alias}[/]  {preset.hub_id}  ({human_count(preset.parameters)} parameters, {preset.family})")
    _console.print(f"  {preset.description}")
    _console.print(f"  tasks {', '.join(preset.tasks)}; licence {preset.license}; context {preset.context_length:,} tokens; chat template {preset.chat_template}")
    stars = f"quality {'★' * preset.quality}{'☆' * (5 - preset.quality)}  speed {'★' * preset.speed}{'☆' * (5 - preset.speed)}"
    _console.print(f"  {stars}  CPU training {'acceptable' if preset.cpu_acceptable else 'too slow'}")
    _console.print(f"  publishing: {_publishing(preset)}")
    _console.print(f"  memory (preset): VRAM {preset.vram_min_gb:g} GiB min, {preset.vram_recommended_gb:g} recommended; RAM {preset.ram_min_gb:g} min, {preset.ram_recommended_gb:g} recommended")
    if preset.gated:
        _console.print(f"  [yellow]gated[/]: a Hugging Face token is needed before any download: {how_to_provide(preset.hub_id)}", markup=True)
    if preset.source != "foundry":
        _console.print(f"  from {preset.source}")
    table = Table(title=f"estimated memory (GiB), batch {preset.finetune.batch_size} x {preset.finetune.max_length} tokens")
    for column in ("", "inference", "LoRA", "QLoRA", "full"):
        table.add_column(column, justify="right" if column else "left")
    for device in ("gpu", "cpu"):
        row = estimates[device]
        table.add_row("GPU (bf16)" if device == "gpu" else "CPU (fp32)", *(f"{row[method]:.1f}" if row.get(method) is not None else "-" for method in ("inference", "lora", "qlora", "full")))
    _console.print(table)
    settings = preset.finetune.model_dump()
    _console.print("  finetune defaults (preset: auto), each overridable in the recipe's finetune section:")
    _console.print("    " + ", ".join(f"{name}: {json.dumps(value)}" for name, value in settings.items()), markup=False)


def memory_table(preset: Preset) -> dict[str, dict[str, float | None]]:
    """GiB for each method on each device at the preset's batch and length (QLoRA: GPU only)."""
    shape = shape_from_config(preset.config)
    settings = preset.finetune
    table: dict[str, dict[str, float | None]] = {}
    for device in ("gpu", "cpu"):
        row: dict[str, float | None] = {}
        for method in ("inference", "lora", "qlora", "full"):
            if method == "qlora" and device == "cpu":
                row[method] = None
                continue
            work = fitting.training_workload(settings, device, method) if method != "inference" else Workload("inference", device, 1, settings.max_length)  # type: ignore[arg-type]
            row[method] = round(estimate(shape, work).total / GIB, 2)
        table[device] = row
    return table


def select_model(task: str, hardware: Hardware | None, as_json: bool, *, web: bool = False) -> None:
    if task not in TASKS:
        raise UserError(f"--task {task}: unknown task; tasks are {', '.join(TASKS)}")
    hardware = hardware or detect()
    best, every = fitting.select(load_registry(), task, hardware.device, hardware.memory_gib, web=web)
    if as_json:
        machine = {"device": hardware.device, "memory_gib": round(hardware.memory_gib, 2), "name": hardware.name}
        candidates = [{**_fit_json(fit), "why": fitting.explain(fit, best, hardware.memory_gib)} for fit in every]
        typer.echo(json.dumps({"hardware": machine, "selected": best.preset.alias, "method": best.method, "batch_size": best.batch_size, "candidates": candidates}, indent=2))
        return
    title = f"{task} models{' for the web' if web else ''} on {hardware.memory_gib:.1f} GiB ({hardware.name}), best first"
    table = Table(title=title)
    for column in ("alias", "quality", "speed", "access", "why"):
        table.add_column(column)
    for fit in every:
        access = "gated" if fit.preset.gated else "open"
        table.add_row(fit.preset.alias, "★" * fit.preset.quality, "★" * fit.preset.speed, access, fitting.explain(fit, best, hardware.memory_gib))
    _stderr.print(table)
    settings = best.preset.finetune
    batch = "" if best.batch_size == settings.batch_size else f"; in the recipe's finetune section set batch_size: {best.batch_size}, gradient_accumulation: {best.accumulation}"
    note = " (tight: lower max_length if it runs out of memory)" if best.verdict == "tight" else ""
    _stderr.print(f"selected: [bold]{best.preset.alias}[/] ({best.preset.hub_id}), {best.method}, about {best.estimate.total_gib:.1f} GiB{note}{batch}")
    if best.preset.gated:
        _stderr.print(f"[yellow]gated[/]: {how_to_provide(best.preset.hub_id)}")
    typer.echo(best.preset.alias)


def _publishing(preset: Preset) -> str:
    if preset.exporter is None:
        return "no exporter takes this family yet (foundry/exporters.py): fine-tune and evaluate it, not quantize or publish"
    if preset.web:
        return f"{preset.exporter.exporter}; its graphs are proven in transformers.js"
    return f"{preset.exporter.exporter}; not yet proven in transformers.js, so `models select --web` leaves it out"


def web_label(preset: Preset) -> str:
    """yes: proven in transformers.js; no: exported, not proven in a browser; none: no exporter takes it."""
    if preset.exporter is None:
        return "none"
    return "yes" if preset.web else "no"


def human_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def _preset_json(preset: Preset, assessed: fitting.Fit | None) -> dict[str, Any]:
    data = {**preset.model_dump(), "web": preset.web, "exporter": preset.exporter.exporter if preset.exporter else None}
    if assessed is not None:
        data["fit"] = _fit_json(assessed)
    return data


def _fit_json(fit: fitting.Fit) -> dict[str, Any]:
    return {
        "alias": fit.preset.alias, "device": fit.device, "method": fit.method, "batch_size": fit.batch_size,
        "needs_gib": round(fit.estimate.total_gib, 2), "verdict": fit.verdict, "gated": fit.preset.gated,
    }
