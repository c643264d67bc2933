"""The finetune stage against a plain script of transformers' Trainer with peft: training
tokens per second and peak memory, on the same model, data and settings.

The model is a randomly initialised ~22M-parameter Llama built here (no hub) with the tiny
Llama tokenizer; the data are chats of ragged lengths (from a dozen tokens to past the
128-token cut, log-uniform), so padding matters, and the longest batches of either side
reach the cut. Both sides: LoRA rank 16 on every linear, batch 8, no accumulation,
AdamW at 2e-4 with a linear schedule, gradient clipping at 1, one epoch (50 steps), fp32
on a CPU and bf16 on a GPU, no validation. The Trainer pads each batch to its longest row
(DataCollatorForSeq2Seq); the stage is run once as is and once with packing. Tokens are
real tokens (padding not counted), over the time of the training steps only.

Each run is a fresh process. Peak memory is judged up to the end of training: the process's
maximum RSS when the last step is done (imports, tokenizing, loading the model and training
on both sides; and, on CUDA, the peak of torch.cuda.max_memory_allocated over the steps).
The whole process's maximum RSS is reported beside it: the stage then goes on to reload the
base and fold the adapter in, which the plain script does not do at all. Runs alternate,
REPS times each; medians are reported, with the spread of the training peaks.
Runs unchanged on a CUDA machine: `python -m bench bench_finetune`.
"""

import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.report import measured, write

REPS = 3  # peak RSS differs by up to ±4% between identical runs: medians of three
STEPS = 50  # one epoch of ROWS / BATCH: both sides train on every example once
BATCH = 8
MAX_LENGTH = 128
ROWS = 400
SHAPE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 256}
SETTINGS = {
    "rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "learning_rate": 2e-4, "batch_size": BATCH, "gradient_accumulation": 1, "max_length": MAX_LENGTH, "epochs": 1, "qlora": False,
    "gradient_checkpointing": False, "max_steps": STEPS, "seed": 0, "eval_every": None, "checkpoint_every": STEPS,
    "split": {"validation": 0.0, "test": 0.0, "seed": 0}, "chat_template": "llama3", "preset": None, "force_cpu": False,
}
TRAINER, STAGE, PACKED = "transformers Trainer + peft", "foundry finetune stage", "foundry finetune stage, packing"
SPEED_GOALS = {STAGE: 1.0, PACKED: 1.5}  # times the Trainer's tokens per second
WORDS = "the cat dog bird fish horse river tree house garden book window door table road city forest mountain child teacher farmer small big old young red green".split()


def make_model(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.tiny.models import build

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=False)).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (build("llama-a") / name).exists():
            shutil.copy2(build("llama-a") / name, folder / name)
    return folder


def make_data(path: Path) -> Path:
    """Chats whose lengths spread from a dozen tokens to the cut, log-uniformly."""
    rng = random.Random(0)
    rows = []
    for _ in range(ROWS):
        words = max(2, int(math.exp(rng.uniform(math.log(2), math.log(110)))))
        question = " ".join(rng.choice(WORDS) for _ in range(max(1, words // 4)))
        answer = " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append({"prompt": question, "completion": answer})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_measured(command: list[str], result_file: Path) -> dict[str, Any]:
    """Run `command` under bench.report's peak-RSS probe; merge the JSON it wrote."""
    _, rss_kib = measured(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return {**json.loads(result_file.read_text()), "process_rss_mib": round(rss_kib / 1024, 1)}


def foundry_stage(model: Path, data: Path, work: Path, *, packing: bool) -> list[str]:
    from foundry.stagespec import StageSpec

    store = work / f"store-{packing}"
    shutil.rmtree(store, ignore_errors=True)
    spec = StageSpec(stage="finetune", recipe="bench", key="finetune-bench", store=str(store), inputs={"model": {"model": str(model)}}, params={**SETTINGS, "dataset": str(data), "packing": packing})
    path = spec.write(work / f"spec-{packing}.json")
    return [sys.executable, "-m", "bench.bench_finetune", "--stage", str(path), str(work / f"result-{packing}.json")]


def stage_child(spec_path: str, result_path: str) -> None:
    """The stage through its container entry; the result is what its marker records."""
    from foundry.stagespec import StageSpec
    from jobs.entry import run_stage

    record = run_stage(StageSpec.read(Path(spec_path)))["result"]
    measured = {"tokens": record["trained_tokens"], "seconds": record["train_seconds"], "train_rss_mib": _mib(record["peak_rss_bytes"]), "peak_gpu_mib": _mib(record["peak_gpu_memory_bytes"])}
    Path(result_path).write_text(json.dumps(measured))


def trainer_child(model_dir: str, data_path: str, result_path: str) -> None:
    """The plain script: the same tokenized examples, peft's LoRA, transformers' Trainer."""
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from jobs.finetuning.batches import EncodeStats, encode_all
    from jobs.finetuning.datasets import read_dataset
    from jobs.steps import peak_rss_bytes

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = encode_all(tokenizer, read_dataset(data_path).chats(), MAX_LENGTH, EncodeStats())
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples]
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(r=SETTINGS["rank"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0, target_modules=SETTINGS["target_modules"], task_type="CAUSAL_LM"))
    counted = {"tokens": 0}
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        counted["tokens"] += sum(len(row["input_ids"]) for row in batch)
        return collator(batch)

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.began = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds = time.perf_counter() - self.began
            self.rss = peak_rss_bytes()

    clock = Clock()
    arguments = TrainingArguments(
        output_dir=str(Path(result_path).parent / "trainer-out"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_steps=STEPS,
        learning_rate=SETTINGS["learning_rate"], lr_scheduler_type="linear", warmup_steps=1, weight_decay=0.0, max_grad_norm=1.0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], seed=0, bf16=bf16, use_cpu=not cuda,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=rows, data_collator=collate, callbacks=[clock]).train()
    measured = {"tokens": counted["tokens"], "seconds": clock.seconds, "train_rss_mib": _mib(clock.rss), "peak_gpu_mib": _mib(torch.cuda.max_memory_allocated()) if cuda else None}
    Path(result_path).write_text(json.dumps(measured))


def _mib(value: int | None) -> float | None:
    return round(value / 2**20, 1) if value else None


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's runs: median speed and peaks, and how far apart its training peaks were."""
    peaks = [sample["train_rss_mib"] for sample in samples]
    return {
        "tokens_per_s": round(statistics.median(sample["tokens"] / sample["seconds"] for sample in samples), 1),
        "train_rss_mib": statistics.median(peaks),
        "train_rss_spread_mib": round(max(peaks) - min(peaks), 1),
        "process_rss_mib": statistics.median(sample["process_rss_mib"] for sample in samples),
        "peak_gpu_mib": statistics.median((sample["peak_gpu_mib"] or 0) for sample in samples) or None,
    }


def judge(label: str, summary: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """A row of the table: the side against the Trainer, and its goal (none for the Trainer)."""
    row = {
        "run": label, **summary,
        "speed_vs_trainer": round(summary["tokens_per_s"] / reference["tokens_per_s"], 3),
        "train_rss_vs_trainer": round(summary["train_rss_mib"] / reference["train_rss_mib"], 3),
    }
    if label not in SPEED_GOALS:
        return {**row, "goal": "reference", "meets_goal": None}
    goal = SPEED_GOALS[label]
    fast = summary["tokens_per_s"] >= goal * reference["tokens_per_s"]
    lean = summary["train_rss_mib"] <= reference["train_rss_mib"] and (summary["peak_gpu_mib"] or 0) <= (reference["peak_gpu_mib"] or 0)
    return {**row, "goal": f">= {goal}x speed, <= 1x memory", "meets_goal": fast and lean}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="foundry-bench-finetune-"))
    try:
        model, data = make_model(work / "model"), make_data(work / "data.jsonl")
        commands = {
            TRAINER: ([sys.executable, "-m", "bench.bench_finetune", "--trainer", str(model), str(data), str(work / "result-trainer.json")], work / "result-trainer.json"),
            STAGE: (foundry_stage(model, data, work, packing=False), work / "result-False.json"),
            PACKED: (foundry_stage(model, data, work, packing=True), work / "result-True.json"),
        }
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in commands}
        for _ in range(REPS):
            for label, (command, result) in commands.items():
                runs[label].append(run_measured(command, result))
        summaries = {label: summarize(samples) for label, samples in runs.items()}
        rows = [judge(label, summary, summaries[TRAINER]) for label, summary in summaries.items()]
        write("finetune", rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stage"]:
        stage_child(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--trainer"]:
        trainer_child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
