"""The finetune stage: peft LoRA (QLoRA where CUDA and bitsandbytes are) on the merged model
or any base, with the settings the planner resolved from the registry's preset.

Parameters (`spec.params`, see foundry/registry/apply.py): the preset's fields (rank,
alpha, dropout, target_modules, learning_rate, batch_size, gradient_accumulation,
max_length, epochs, qlora, gradient_checkpointing) with the recipe's overrides; dataset
(a path or s3:// URL), preset, chat_template (the family for a model without a template),
max_steps, packing, force_cpu, seed, eval_every, checkpoint_every, split {validation,
test, seed}, trust_remote_code, allow_pickle.

Input `model`: a Hugging Face causal LM folder. Output (`out`):

    config.json, generation_config.json, model*.safetensors, tokenizer files
                         the merged model (base + adapter), in the base's dtype, with the
                         chat template it was trained with: quantize and publish read it
                         as they read a merge
    adapter/             adapter_config.json, adapter_model.safetensors
    data/                train.jsonl, validation.jsonl, test.jsonl: the split, as chats
    train_log.jsonl      one line per optimizer step: loss, learning rate, tokens, and
                         val_loss at each evaluation
    loss_curve.png       training and validation loss against the step
    finetune.json        the settings, the data, the losses; what this returns

Everything that can be refused is refused before training: a bad dataset row (file and
line), an empty dataset, a target module the model does not have (with the names it has).
Checkpoints go to `$FOUNDRY_CHECKPOINTS/<recipe>/<key>/`, or beside a local store in
`<store>/_checkpoints/<recipe>/<key>/`, or `$FOUNDRY_CACHE/checkpoints/...`; a stage
re-run after a kill resumes from the newest and removes them when it is done.
"""

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from jobs.finetuning.datasets import Chat, read_dataset, split_indices

LOG = logging.getLogger("foundry.finetune")
REPORT_FILE = "finetune.json"
LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss_curve.png"
ADAPTER_FOLDER = "adapter"
CHECKPOINTS_ENV = "FOUNDRY_CHECKPOINTS"
WARMUP_SHARE = 0.03
EVALUATIONS = 10  # validation losses per run when eval_every is not set
SETTINGS_REPORTED = (
    "rank", "alpha", "dropout", "target_modules", "learning_rate", "batch_size", "gradient_accumulation",
    "max_length", "epochs", "max_steps", "packing", "seed", "gradient_checkpointing",
)


def run(spec: StageSpec, inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    params = spec.params
    if "model" not in inputs:
        raise UserError(f"stage {spec.key}: finetune needs a `model` input")
    model_dir = Path(inputs["model"])
    dataset = read_dataset(params["dataset"])
    chats = dataset.chats()
    shares = params.get("split") or {}
    split = split_indices(len(chats), float(shares.get("validation", 0.1)), float(shares.get("test", 0.1)), int(shares.get("seed", 0)))
    parts = {name: [chats[index] for index in getattr(split, name)] for name in ("train", "validation", "test")}
    LOG.info("dataset %s: %s, %d rows -> train %d, validation %d, test %d", dataset.name, dataset.shape, len(chats), *(len(rows) for rows in parts.values()))

    import torch

    from jobs.finetuning import batches as B
    from jobs.finetuning import training

    device = _device(bool(params.get("force_cpu")))
    torch.manual_seed(int(params.get("seed", 0)))
    tokenizer = _tokenizer(model_dir, params)
    template = B.ensure_chat_template(tokenizer, str(params.get("chat_template") or "plain"))
    max_length = int(params["max_length"])
    stats = B.EncodeStats()
    encoded = {name: B.encode_all(tokenizer, rows, max_length, stats) for name, rows in parts.items()}
    if not encoded["train"]:
        raise UserError(f"{dataset.name}: no training example keeps a completion within max_length {max_length}; raise max_length")

    qlora = _use_qlora(params, device)
    model = _load_for_training(model_dir, device, qlora, params)
    _check_target_modules(model, params["target_modules"])
    model = _with_lora(model, params, qlora)
    _warn_if_tight(model_dir, params, device, qlora)

    batch_size = int(params["batch_size"])
    accumulation = int(params["gradient_accumulation"])
    seed = int(params.get("seed", 0))
    packing = max_length if params.get("packing") else None

    def epoch_batches(epoch: int) -> list[list[B.Example]]:
        return B.epoch_batches(encoded["train"], batch_size, seed, epoch, packing=packing)

    per_epoch = len(epoch_batches(0))
    total = int(params.get("max_steps") or math.ceil(float(params["epochs"]) * per_epoch / accumulation))
    every = int(params.get("eval_every") or max(1, total // EVALUATIONS))
    schedule = training.Schedule(
        learning_rate=float(params["learning_rate"]), total_steps=total, gradient_accumulation=accumulation,
        warmup_steps=max(1, round(total * WARMUP_SHARE)), eval_every=every, checkpoint_every=int(params.get("checkpoint_every") or every),
    )
    checkpoints = training.Checkpoints(_checkpoint_dir(spec))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    LOG.info(
        "training %d steps on %s (%s): %d examples%s, batch %d x %d, lr %g", total, device, "QLoRA" if qlora else "LoRA",
        len(encoded["train"]), f" packed into rows of {max_length} tokens" if packing else "", batch_size, accumulation, schedule.learning_rate,
    )
    outcome = training.train(
        model, encoded["validation"], epoch_batches, schedule,
        pad_id=pad_id, device=device, eval_batch_size=batch_size, checkpoints=checkpoints,
    )
    test_loss = training.evaluate(model, encoded["test"], batch_size, pad_id, device) if encoded["test"] else None

    out.mkdir(parents=True, exist_ok=True)
    _save_adapter(model, out / ADAPTER_FOLDER, spec)
    del model
    _merge(model_dir, out, tokenizer, params)
    _write_split(out, parts)
    (out / LOG_FILE).write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in outcome.records))
    _plot_losses(outcome.records, out / PLOT_FILE, title=f"{spec.recipe} {spec.key}")
    validation_losses = [record["val_loss"] for record in outcome.records if "val_loss" in record]
    report = {
        "preset": params.get("preset"),
        "settings": {name: params.get(name) for name in SETTINGS_REPORTED},
        "method": "qlora" if qlora else "lora",
        "chat_template": template,
        "dataset": {"location": dataset.name, "shape": dataset.shape, "rows": len(chats), **{name: len(rows) for name, rows in parts.items()}, "truncated": stats.truncated, "dropped": stats.dropped},
        "steps": total,
        "initial_val_loss": validation_losses[0] if validation_losses else None,
        "final_val_loss": validation_losses[-1] if validation_losses else None,
        "test_loss": round(test_loss, 6) if test_loss is not None else None,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    checkpoints.remove()
    # Device, timings and resuming go to the marker only: the files are the same bytes on a re-run.
    return {
        **report, "device": str(device), "resumed_from_step": outcome.resumed_from_step,
        "train_seconds": round(outcome.seconds, 3), "trained_tokens": outcome.tokens,
        "tokens_per_second": round(outcome.tokens / outcome.seconds, 1) if outcome.seconds else None,
        "peak_gpu_memory_bytes": outcome.peak_gpu_memory_bytes, "peak_rss_bytes": outcome.peak_rss_bytes,
    }


def _device(force_cpu: bool) -> Any:
    import torch

    if not force_cpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _tokenizer(model_dir: Path, params: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=bool(params.get("trust_remote_code")))
    except (OSError, ValueError) as error:
        raise UserError(f"model folder {model_dir}: its tokenizer cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"model folder {model_dir}: fine-tuning needs a fast tokenizer (tokenizer.json), to tell completions from prompts by character offsets")
    return tokenizer


def _use_qlora(params: dict[str, Any], device: Any) -> bool:
    """QLoRA when asked and possible: CUDA and bitsandbytes. Asked by the preset, it falls
    back to LoRA elsewhere; the planner's hardware check already warned if that matters."""
    if not params.get("qlora"):
        return False
    if device.type != "cuda":
        LOG.info("qlora: no CUDA device here, training plain LoRA")
        return False
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        LOG.warning("qlora: bitsandbytes is not installed, training plain LoRA")
        return False
    return True


def _load_for_training(model_dir: Path, device: Any, qlora: bool, params: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"trust_remote_code": bool(params.get("trust_remote_code"))}
    if device.type == "cuda":
        # bf16 where the GPU has it (no loss scaling needed); fp32 otherwise, and on a CPU.
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        options["dtype"] = compute
        if qlora:
            from transformers import BitsAndBytesConfig

            options["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
            options["device_map"] = {"": device.index or 0}
    else:
        options["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, **options)
    if not qlora:
        model.to(device)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(params.get("gradient_checkpointing")))
    elif params.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def linear_module_names(model: Any) -> list[str]:
    """The last name part of every linear layer but the output head: what target_modules match."""
    import torch

    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is output:
            names.discard(name.rsplit(".", 1)[-1])
    return sorted(names)


def _check_target_modules(model: Any, target_modules: Any) -> None:
    if target_modules == "all-linear":
        return
    available = linear_module_names(model)
    missing = [name for name in target_modules if name not in available]
    if missing:
        raise UserError(f"target_modules: this model ({model.config.model_type}) has no linear module {', '.join(repr(name) for name in missing)}; its linear modules are {', '.join(available)}")


def _with_lora(model: Any, params: dict[str, Any], qlora: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(params["rank"]), lora_alpha=float(params["alpha"]), lora_dropout=float(params["dropout"]),
        target_modules=params["target_modules"], task_type="CAUSAL_LM", bias="none",
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    LOG.info("LoRA rank %s on %s: %d trainable parameters", params["rank"], params["target_modules"], trainable)
    return model


def _warn_if_tight(model_dir: Path, params: dict[str, Any], device: Any, qlora: bool) -> None:
    """The registry's estimate against this machine's memory: a warning in the log."""
    from foundry.registry.fit import training_workload
    from foundry.registry.memory import GIB, estimate, shape_from_config, verdict
    from foundry.registry.schema import FinetuneDefaults

    try:
        shape = shape_from_config(json.loads((model_dir / "config.json").read_text()))
    except (OSError, ValueError):
        return
    settings = FinetuneDefaults.model_validate({name: params[name] for name in FinetuneDefaults.model_fields})
    if device.type == "cuda":
        import torch

        available, kind = torch.cuda.get_device_properties(device).total_memory / GIB, "gpu"
    else:
        from foundry.registry.hardware import ram_gib

        available, kind = ram_gib(), "cpu"
    needed = estimate(shape, training_workload(settings, kind, "qlora" if qlora else "lora"))
    judged = verdict(needed.total, available)
    if judged != "fits":
        LOG.warning("memory: training needs about %.1f GiB and this %s has %.1f GiB (%s); lower batch_size or max_length if it runs out", needed.total_gib, kind.upper(), available, judged)


def _checkpoint_dir(spec: StageSpec) -> Path:
    folder = os.environ.get(CHECKPOINTS_ENV)
    if folder:
        return Path(folder).expanduser() / spec.recipe / spec.key
    if "://" not in spec.store or spec.store.startswith("file://"):
        return Path(spec.store.removeprefix("file://")).expanduser() / "_checkpoints" / spec.recipe / spec.key
    return Path(os.environ.get("FOUNDRY_CACHE") or "~/.cache/foundry").expanduser() / "checkpoints" / spec.recipe / spec.key


def _save_adapter(model: Any, folder: Path, spec: StageSpec) -> None:
    """The adapter names its base as the recipe does (a key or a reference), not by this
    machine's cache path; peft's generated model card, which repeats that path, is left out."""
    source = spec.inputs["model"]
    model.peft_config["default"].base_model_name_or_path = source.key or source.model
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)


def _merge(model_dir: Path, out: Path, tokenizer: Any, params: dict[str, Any]) -> None:
    """The base reloaded on the CPU in its own dtype (never 4-bit), the adapter folded in,
    saved with the tokenizer and generation config beside it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((model_dir / "config.json").read_text())
    dtype = getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"), torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=bool(params.get("trust_remote_code")))
    merged = PeftModel.from_pretrained(base, out / ADAPTER_FOLDER).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    _mark_dtype(out / "config.json", str(dtype).removeprefix("torch."))
    tokenizer.save_pretrained(out, save_jinja_files=False)
    if (model_dir / "generation_config.json").exists() and not (out / "generation_config.json").exists():
        shutil.copy2(model_dir / "generation_config.json", out / "generation_config.json")


def _mark_dtype(config_json: Path, dtype: str) -> None:
    """transformers writes `dtype`; readers built on transformers before 4.56 read `torch_dtype`."""
    config = json.loads(config_json.read_text())
    config["torch_dtype"] = config["dtype"] = dtype
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_split(out: Path, parts: dict[str, list[Chat]]) -> None:
    folder = out / "data"
    folder.mkdir()
    for name, chats in parts.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"messages": chat}, ensure_ascii=False) + "\n" for chat in chats))


def _plot_losses(records: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Training loss per step and validation loss at each evaluation, on one chart a person
    can glance at (the same log gives the same bytes)."""
    from foundry.plots import line_chart

    curves = {
        "training loss": [(record["step"], record["loss"]) for record in records if "loss" in record],
        "validation loss": [(record["step"], record["val_loss"]) for record in records if "val_loss" in record],
    }
    line_chart("step", "loss per completion token", {name: points for name, points in curves.items() if points}, path, title=title)
