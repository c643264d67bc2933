"""The training loop: AdamW on the trainable parameters, validation loss, checkpoints, resume.

Written out rather than borrowed from transformers' Trainer for three reasons: batches may
be packed (the throughput bench/bench_finetune.py measures), the loss is
normalised by the label tokens of the whole accumulation window (so accumulation changes
nothing but memory), and a checkpoint holds everything that decides what comes next (the
adapter, Adam's state, the step, the random state; the data order is a function of the
seed and the epoch), so a run resumed after a kill continues exactly where it stopped.

Checkpoints are written to `<dir>/.step-N.tmp` and renamed to `<dir>/step-N` when whole;
only the newest is kept. They are loaded with torch.load(weights_only=True): tensors and
plain containers only, never arbitrary pickled objects.
"""

import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.finetuning.batches import IGNORE, Example, collate, sorted_batches
from jobs.steps import peak_rss_bytes

LOG = logging.getLogger("foundry.finetune")
# Kill the process right after writing the checkpoint of this step (or a later one): a
# crash at a known point, for tests of resuming.
FAULT_AFTER_CHECKPOINT = "FOUNDRY_FAULT_AFTER_CHECKPOINT"
_STATE = "state.pt"
_LOG = "log.json"


@dataclass(frozen=True)
class Schedule:
    learning_rate: float
    total_steps: int
    gradient_accumulation: int
    warmup_steps: int
    eval_every: int
    checkpoint_every: int
    max_grad_norm: float = 1.0

    def rate(self, step: int) -> float:
        """Linear warm-up, then linear decay to zero (transformers' "linear" schedule)."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        remaining = self.total_steps - self.warmup_steps
        return self.learning_rate * max(0.0, (self.total_steps - step) / remaining) if remaining > 0 else self.learning_rate


@dataclass
class Outcome:
    records: list[dict[str, Any]]
    resumed_from_step: int | None
    seconds: float = 0.0
    tokens: int = 0  # real (non-padding) tokens trained on in this process
    peak_gpu_memory_bytes: int | None = None
    peak_rss_bytes: int = 0  # the process's peak resident memory up to the end of training


class Checkpoints:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def latest(self) -> Path | None:
        found = sorted(self.folder.glob("step-*")) if self.folder.is_dir() else []
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any], records: list[dict[str, Any]]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"step-{step:08d}"
        temporary = self.folder / f".step-{step:08d}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        torch.save(state, temporary / _STATE)
        (temporary / _LOG).write_text(json.dumps(records))
        os.replace(temporary, final)
        for older in self.folder.glob("step-*"):
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
        return final

    def load(self, path: Path, device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        state = torch.load(path / _STATE, map_location=device, weights_only=True)
        return state, json.loads((path / _LOG).read_text())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def micro_batches(epoch_batches: Callable[[int], list[list[Example]]], start: int) -> Iterator[tuple[float, list[Example]]]:
    """(epoch position, batch) from micro-batch number `start` on, epoch after epoch."""
    epoch, batches = 0, epoch_batches(0)
    while start >= len(batches):
        start -= len(batches)
        epoch += 1
        batches = epoch_batches(epoch)
    while True:
        for index in range(start, len(batches)):
            yield epoch + (index + 1) / len(batches), batches[index]
        epoch, start = epoch + 1, 0
        batches = epoch_batches(epoch)


def train(
    model: Any,
    validation: list[Example],
    epoch_batches: Callable[[int], list[list[Example]]],
    schedule: Schedule,
    *,
    pad_id: int,
    device: torch.device,
    eval_batch_size: int,
    checkpoints: Checkpoints,
) -> Outcome:
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=schedule.learning_rate, weight_decay=0.0, **({"fused": True} if device.type == "cuda" else {}))
    records: list[dict[str, Any]] = []
    start, resumed = 0, None
    latest = checkpoints.latest()
    if latest is not None:
        state, records = checkpoints.load(latest, device)
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                trainable[name].copy_(tensor)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        start = resumed = int(state["step"])
        LOG.info("resuming from the checkpoint of step %d (%s)", start, latest)
    stream = micro_batches(epoch_batches, start * schedule.gradient_accumulation)
    fault_step = int(os.environ.get(FAULT_AFTER_CHECKPOINT) or 0)
    outcome = Outcome(records, resumed)
    if start == 0 and validation:
        records.append({"step": 0, "epoch": 0.0, "tokens": 0, "val_loss": round(evaluate(model, validation, eval_batch_size, pad_id, device), 6)})
        LOG.info("step 0 val_loss %.4f", records[0]["val_loss"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    tokens = records[-1]["tokens"] if records else 0
    for step in range(start, schedule.total_steps):
        model.train()
        window = [next(stream) for _ in range(schedule.gradient_accumulation)]
        batches = [batch for _, batch in window]
        targets = sum(example.label_count for batch in batches for example in batch)
        for group in optimizer.param_groups:
            group["lr"] = schedule.rate(step)
        loss_sum = 0.0
        for batch in batches:
            loss = _loss_sum(model, collate(batch, pad_id), device) / targets
            loss.backward()
            loss_sum += float(loss.detach())
            tokens += sum(len(example.input_ids) for example in batch)
            outcome.tokens += sum(len(example.input_ids) for example in batch)
        torch.nn.utils.clip_grad_norm_(trainable.values(), schedule.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        record: dict[str, Any] = {"step": done, "epoch": round(window[-1][0], 4), "loss": round(loss_sum, 6), "learning_rate": schedule.rate(step), "tokens": tokens}
        if validation and (done % schedule.eval_every == 0 or done == schedule.total_steps):
            record["val_loss"] = round(evaluate(model, validation, eval_batch_size, pad_id, device), 6)
        records.append(record)
        if done % 10 == 0 or "val_loss" in record:
            LOG.info("step %d/%d loss %.4f%s lr %.2e", done, schedule.total_steps, loss_sum, f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else "", record["learning_rate"])
        if done % schedule.checkpoint_every == 0 and done < schedule.total_steps:
            state = {"step": done, "trainable": {name: p.detach() for name, p in trainable.items()}, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state()
            saved = checkpoints.save(done, state, records)
            LOG.info("checkpoint %s", saved)
            if fault_step and done >= fault_step:
                os.kill(os.getpid(), signal.SIGKILL)
    outcome.seconds = time.perf_counter() - began
    if device.type == "cuda":
        outcome.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated(device)
    outcome.peak_rss_bytes = peak_rss_bytes()
    return outcome


def _loss_sum(model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The summed cross-entropy over label tokens (the caller divides by the window's count)."""
    # Shift the labels, not the logits: slicing the logits would copy batch x length x vocab.
    labels = torch.nn.functional.pad(batch.pop("labels"), (0, 1), value=IGNORE)[:, 1:].to(device)
    inputs = {name: tensor.to(device) for name, tensor in batch.items()}
    logits = model(**inputs, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")


def evaluate(model: Any, examples: list[Example], batch_size: int, pad_id: int, device: torch.device) -> float:
    """Mean loss per label token over `examples` (dropout off)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in sorted_batches(examples, batch_size):
            members = [examples[index] for index in batch]
            total += float(_loss_sum(model, collate(members, pad_id), device))
            count += sum(example.label_count for example in members)
    return total / count if count else math.nan
