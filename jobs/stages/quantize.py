"""The quantize stage: one fp32 ONNX export, then the requested variants derived from it,
each checked against the unquantized model.

Parameters (`spec.params`):
    variants           list of fp32, fp16, q8, q4, q4f16, q2
    prompts            optional list of strings to measure agreement on (default: 8 short ones)
    trust_remote_code  bool, default false; passed to every loader
    allow_pickle       bool, default false; accept `.bin` weights (as the merge stage does)

Input `model`: a local Hugging Face causal LM folder. Output (`out`):

    config.json, generation_config.json, tokenizer files   copied from the input
    genai_config.json                                      onnxruntime-genai's, pointing at the
                                                           q4 graph (else the most native one)
    onnx/<file>, onnx/<file>_data                           one pair per requested variant
                                                           (names from foundry.variants)
    quantize.json                                          the report this returns

The export (jobs/onnx/export.py) makes every requested variant, through one fp32 graph, and
the PyTorch reference they are checked against, in processes of their own (jobs/steps.py):
a loaded PyTorch model's memory only goes back to the system when its process exits. For
the builder's families that is one process, which derives each variant from the graph in
memory (jobs/onnx/derive.py, tensor by tensor) and computes the reference from the model it
loaded; for optimum's, the reference is a step of its own and the variants are derived from
the fp32 graph's file. Then each variant's agreement is measured here, one after another.

Agreement is measured against PyTorch in float32 (`reference: "pytorch-fp32"`,
jobs/onnx/reference.py): every variant, fp32 ONNX included, runs the prompts as one
full-sequence forward with an empty past, and its logits at every position are compared
with PyTorch's: the share of positions whose arg-max token is the same (`top1_agreement`)
and the largest absolute logit difference (`max_logit_diff`).
"""

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from foundry.variants import ONNX_FOLDER, VARIANT_FILES
from jobs.onnx.decoder import decoder_feeds, empty_past

LOG = logging.getLogger("foundry.quantize")

REPORT_FILE = "quantize.json"
REFERENCE = "pytorch-fp32"
# A variant's check runs its graph in slices of at most 1/CHECK_SLICES of the fp32 weights
# (half the fp16 bytes): the stage's peak then stays that of the export.
CHECK_SLICES = 4
# The graph onnxruntime-genai runs from a published folder: the first of these built.
GENAI_PREFERENCE = ("q4", "q8", "fp32", "q4f16", "fp16", "q2")

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "Question: Why is the sky blue?\nAnswer:",
    "1, 1, 2, 3, 5, 8, 13,",
    "Translate to German: Good morning, how are you?",
    "The quick brown fox jumps over the lazy dog.",
    "Les modèles de langage sont",
)

# What the publish stage needs besides the graphs. Weights are never copied.
METADATA_FILES = ("config.json", "generation_config.json")
# Files that carry a vocabulary; tokenizer_config.json alone is not a tokenizer.
VOCABULARY_PATTERNS = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece*.model", "vocab.json", "vocab.txt", "*.tiktoken")
TOKENIZER_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece*.model",
    "*.tiktoken", "chat_template.jinja", "chat_template.json",
)


def run(spec: StageSpec, inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    variants, prompts, trust_remote_code, allow_pickle = _params(spec.params)
    if "model" not in inputs:
        raise UserError(f"stage {spec.key}: quantize needs a `model` input")
    model_dir = Path(inputs["model"])

    from jobs.onnx import export
    from jobs.onnx import reference as pytorch_reference
    from jobs.steps import StepLog, give_back_freed_memory, peak_rss_bytes

    _check_model_folder(model_dir, allow_pickle=allow_pickle)
    exporter = export.exporter_for(model_dir)

    out.mkdir(parents=True, exist_ok=True)
    copied = _copy_metadata(model_dir, out, trust_remote_code=trust_remote_code)
    steps = StepLog("quantize")
    seconds: dict[str, float] = {}
    files: dict[str, dict[str, Any]] = {}
    onnx_dir = out / ONNX_FOLDER
    with tempfile.TemporaryDirectory(prefix="foundry-quantize-", dir=out.parent) as scratch:
        work = Path(scratch)
        tick = time.perf_counter()
        exported = exporter.export(steps, model_dir, work / "export", onnx_dir, variants=variants, prompts=prompts, trust_remote_code=trust_remote_code)
        token_ids = pytorch_reference.token_ids(exported.reference)
        weight_budget = exported.fp32_weight_bytes // CHECK_SLICES
        seconds["export"] = time.perf_counter() - tick

        for variant in variants:
            tick = time.perf_counter()
            io, files[variant] = check_variant(onnx_dir / VARIANT_FILES[variant], exported.variants[variant], token_ids, exported.reference, weight_budget)
            give_back_freed_memory()
            seconds[variant] = time.perf_counter() - tick
            entry = files[variant]
            LOG.info("quantize: %s written (%d bytes, checked in %.1fs, top-1 agreement %.3f)", VARIANT_FILES[variant], entry["size_bytes"], seconds[variant], entry["top1_agreement"])
        genai = _write_genai_config(work / "export", out, variants)
    seconds["total"] = time.perf_counter() - started

    report = {
        "reference": REFERENCE,
        "exporter": {"name": exporter.name, "version": exporter.version()},
        "onnxruntime": _ort_version(),
        "prompts": len(prompts),
        "prompt_set": "default" if spec.params.get("prompts") is None else "custom",
        "positions": sum(len(ids) for ids in token_ids),
        "graph": {
            "inputs": io["inputs"], "outputs": io["outputs"], "num_layers": io["num_layers"],
            "uses_position_ids": io["uses_position_ids"],
        },
        "genai_config": genai,
        "copied": copied,
        "variants": files,
    }
    # Timings and memory go to the marker only: the committed files must be the same bytes on a re-run.
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return {
        **report,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        # The checks run in the stage process itself, so "stage" is their peak.
        "peak_rss_bytes": {"stage": peak_rss_bytes(), **steps.peaks},
    }


def check_variant(path: Path, made: dict[str, Any], token_ids: list[list[int]], reference: Path, weight_budget: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A variant's graph checked for what transformers.js feeds and reads, and its agreement
    measured: (its inputs and outputs, its entry in quantize.json).

    In the stage's own process: what it holds (one slice of the graph in a lean ONNX Runtime
    session) is in buffers large enough that freeing them returns them to the system, so
    variants are checked one after another without adding up.
    """
    import onnx

    from jobs.onnx.export import check_decoder_io

    io = check_decoder_io(onnx.load(str(path), load_external_data=False))
    return io, {
        "file": f"{ONNX_FOLDER}/{path.name}",
        "size_bytes": made["size_bytes"],
        "kv_cache_dtype": io["past_dtype"],
        "quantization": made["settings"],
        **saved_agreement(reference, onnx_logits(path, token_ids, weight_budget)),
    }


def _write_genai_config(export_dir: Path, out: Path, variants: list[str]) -> str | None:
    """onnxruntime-genai's config, its decoder pointed at the most native published graph."""
    source = export_dir / "genai_config.json"
    if not source.is_file():
        return None
    graph = next(level for level in GENAI_PREFERENCE if level in variants)
    config = json.loads(source.read_text())
    config["model"]["decoder"]["filename"] = f"{ONNX_FOLDER}/{VARIANT_FILES[graph]}"
    (out / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    return graph


def _params(params: dict[str, Any]) -> tuple[list[str], list[str], bool, bool]:
    raw = params.get("variants")
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
        raise UserError(f"quantize: `variants` must be a non-empty list of {', '.join(VARIANT_FILES)}; got {raw!r}")
    unknown = sorted(set(raw) - set(VARIANT_FILES))
    if unknown:
        raise UserError(f"quantize: unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANT_FILES)}")
    variants = [v for v in VARIANT_FILES if v in raw]
    prompts = params.get("prompts")
    if prompts is None:
        prompts = list(DEFAULT_PROMPTS)
    elif not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError("quantize: `prompts` must be a non-empty list of non-empty strings")
    flags = []
    for name in ("trust_remote_code", "allow_pickle"):
        value = params.get(name, False)
        if not isinstance(value, bool):
            raise UserError(f"quantize: `{name}` must be true or false; got {value!r}")
        flags.append(value)
    return variants, list(prompts), flags[0], flags[1]


def _check_model_folder(model_dir: Path, *, allow_pickle: bool) -> None:
    from jobs.onnx.export import read_config
    from jobs.sources.resolve import check_weight_format

    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir}: no such folder")
    read_config(model_dir)
    check_weight_format(model_dir, str(model_dir), allow_pickle=allow_pickle)
    if not any(path.is_file() for pattern in VOCABULARY_PATTERNS for path in model_dir.glob(pattern)):
        raise UserError(f"model folder {model_dir}: no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, ...); copy the base model's tokenizer into it")


def _tokenizer_files(model_dir: Path) -> list[Path]:
    found = {path for pattern in TOKENIZER_PATTERNS for path in model_dir.glob(pattern) if path.is_file()}
    return sorted(found)


def _copy_metadata(model_dir: Path, out: Path, *, trust_remote_code: bool) -> list[str]:
    copied = []
    for path in [model_dir / name for name in METADATA_FILES] + _tokenizer_files(model_dir):
        if path.is_file():
            shutil.copyfile(path, out / path.name)
            copied.append(path.name)
    if "tokenizer.json" not in copied:
        # transformers.js reads tokenizer.json only: write it from the fast tokenizer that
        # transformers converts the slow files into.
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code, use_fast=True)
        except (OSError, ValueError, ImportError) as error:
            raise UserError(f"model folder {model_dir}: its tokenizer cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0]})") from None
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"model folder {model_dir}: no tokenizer.json and its tokenizer cannot be converted to one; browsers need tokenizer.json")
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
        copied.append("tokenizer.json (converted)")
    return sorted(copied)


def onnx_logits(path: Path, token_ids: list[list[int]], weight_budget: int | None = None) -> Iterator[Any]:
    """Logits at every position of each prompt, from full-sequence forwards with an empty
    past, the graph run in slices holding at most `weight_budget` bytes of weights each (the
    slices are opened again for each pass of PROMPTS_PER_PASS prompts)."""
    import numpy as np

    from jobs.onnx.reference import padded_passes
    from jobs.onnx.slices import SlicedDecoder

    decoder = SlicedDecoder(path, weight_budget)
    for first, ids, mask in padded_passes(token_ids):
        logits = decoder.run("logits", decoder_feeds(decoder, ids, mask, empty_past(decoder, batch=len(ids))))
        for row, prompt in enumerate(token_ids[first:first + len(ids)]):
            yield logits[row, :len(prompt)].astype(np.float32)


def saved_agreement(reference: Path, logits: Iterable[Any]) -> dict[str, Any]:
    """`agreement` against the saved reference (jobs/onnx/reference.py), one prompt in memory at a time."""
    from jobs.onnx import reference as pytorch_reference

    return agreement(zip(pytorch_reference.logits(reference), logits, strict=True))


def agreement(pairs: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """Over (reference, variant) logits per prompt: the share of positions with the same arg-max,
    and the largest and mean absolute logit difference."""
    import numpy as np

    same = positions = count = 0
    largest = total = 0.0
    for expected, got in pairs:
        same += int((expected.argmax(-1) == got.argmax(-1)).sum())
        positions += expected.shape[0]
        difference = np.abs(expected - got)
        largest = max(largest, float(difference.max()))
        total += float(difference.sum())
        count += difference.size
    return {
        "top1_agreement": round(same / positions, 6),
        "max_logit_diff": float(f"{largest:.6g}"),
        "mean_logit_diff": float(f"{total / count:.6g}"),
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
