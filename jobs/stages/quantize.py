"""The quantize stage: ONNX export with past key values, then the requested variants,
each checked against the unquantized model.

Parameters (`spec.params`):
    variants           list of fp32, fp16, q8, q4, q2 (q2 only where ONNX Runtime runs it)
    prompts            optional list of strings to measure agreement on (default: 8 short ones)
    trust_remote_code  bool, default false; passed to every loader
    allow_pickle       bool, default false; accept `.bin` weights (as the merge stage does)

Input `model`: a local Hugging Face causal LM folder. Output (`out`):

    config.json, generation_config.json, tokenizer files   copied from the input
    onnx/<file>, onnx/<file>_data                           one pair per requested variant
                                                           (names from foundry.variants)
    quantize.json                                          the report this returns

Agreement is measured against PyTorch in float32 (`reference: "pytorch-fp32"`): every
variant, fp32 ONNX included, runs the prompts as one full-sequence forward with an empty
past, and its logits at every position are compared with PyTorch's: the share of
positions whose arg-max token is the same (`top1_agreement`) and the largest absolute
logit difference (`max_logit_diff`).
"""

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from foundry.variants import ONNX_FOLDER, VARIANT_FILES
from jobs.onnx.decoder import decoder_feeds, decoder_session, empty_past

LOG = logging.getLogger("foundry.quantize")

REPORT_FILE = "quantize.json"
REFERENCE = "pytorch-fp32"
MAX_PROMPT_TOKENS = 128

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

    import onnx

    from jobs.onnx import export as onnx_export
    from jobs.onnx import quantize as onnx_quantize

    _check_model_folder(model_dir, allow_pickle=allow_pickle)
    if "q2" in variants and not onnx_quantize.q2_supported():
        raise UserError(f"q2 needs a 2-bit MatMulNBits, which ONNX Runtime {_ort_version()} cannot run; supported levels here: {', '.join(supported_levels())}")
    onnx_export.check_exportable(model_dir)

    out.mkdir(parents=True, exist_ok=True)
    copied = _copy_metadata(model_dir, out, trust_remote_code=trust_remote_code)
    seconds: dict[str, float] = {}
    files: dict[str, dict[str, Any]] = {}
    onnx_dir = out / ONNX_FOLDER
    with tempfile.TemporaryDirectory(prefix="foundry-quantize-") as scratch:
        work = Path(scratch)
        tick = time.perf_counter()
        exported = onnx_export.export_decoder(model_dir, work, trust_remote_code=trust_remote_code)
        fp32 = onnx_quantize.load(exported)
        io = onnx_export.check_decoder_io(fp32)
        fp32_path = work / "fp32" / VARIANT_FILES["fp32"]
        onnx_quantize.save_model(fp32, fp32_path)
        del fp32
        shutil.rmtree(exported.parent)
        seconds["export"] = time.perf_counter() - tick

        for variant in variants:
            tick = time.perf_counter()
            target = onnx_dir / VARIANT_FILES[variant]
            if variant == "fp32":
                _copy_pair(fp32_path, target)
            else:
                onnx_quantize.save_model(_convert(variant, fp32_path), target)
            graph = onnx.load(str(target), load_external_data=False)
            files[variant] = _describe(target, onnx_export.check_decoder_io(graph))
            seconds[variant] = time.perf_counter() - tick
            LOG.info("quantize: %s written (%d bytes, %.1fs)", target.name, files[variant]["size_bytes"], seconds[variant])

    tick = time.perf_counter()
    token_ids = tokenize_prompts(model_dir, prompts, trust_remote_code=trust_remote_code)
    reference = _pytorch_logits(model_dir, token_ids, trust_remote_code=trust_remote_code)
    for variant in variants:
        files[variant].update(agreement(reference, onnx_logits(decoder_session(onnx_dir / VARIANT_FILES[variant]), token_ids)))
    seconds["agreement"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    report = {
        "reference": REFERENCE,
        "onnxruntime": _ort_version(),
        "q2_supported": onnx_quantize.q2_supported(),
        "supported_levels": supported_levels(),
        "prompts": len(prompts),
        "prompt_set": "default" if spec.params.get("prompts") is None else "custom",
        "positions": sum(len(ids) for ids in token_ids),
        "graph": {
            "inputs": io["inputs"], "outputs": io["outputs"], "num_layers": io["num_layers"],
            "uses_position_ids": io["uses_position_ids"],
        },
        "copied": copied,
        "variants": files,
    }
    # Timings go to the marker only: the committed files must be the same bytes on a re-run.
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "seconds": {name: round(value, 3) for name, value in seconds.items()}}


def supported_levels() -> list[str]:
    from jobs.onnx.quantize import q2_supported

    return [v for v in VARIANT_FILES if v != "q2" or q2_supported()]


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


def _convert(variant: str, fp32_path: Path) -> Any:
    from jobs.onnx import quantize as onnx_quantize

    if variant == "fp16":
        return onnx_quantize.to_fp16(fp32_path)
    if variant == "q8":
        return onnx_quantize.to_q8(fp32_path)
    return onnx_quantize.to_nbits(fp32_path, {"q4": 4, "q2": 2}[variant])


def _copy_pair(source: Path, target: Path) -> None:
    from jobs.onnx.quantize import data_file_name

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    shutil.copyfile(source.with_name(data_file_name(source.name)), target.with_name(data_file_name(target.name)))


def _describe(path: Path, io: dict[str, Any]) -> dict[str, Any]:
    from jobs.onnx.quantize import data_file_name

    data = path.with_name(data_file_name(path.name))
    return {
        "file": f"{ONNX_FOLDER}/{path.name}",
        "size_bytes": path.stat().st_size + data.stat().st_size,
        "kv_cache_dtype": io["past_dtype"],
    }


def tokenize_prompts(model_dir: Path, prompts: list[str], *, trust_remote_code: bool) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    token_ids = []
    for prompt in prompts:
        ids = list(tokenizer(prompt)["input_ids"])[:MAX_PROMPT_TOKENS]
        if not ids:
            raise UserError(f"quantize: the prompt {prompt!r} tokenizes to no tokens")
        token_ids.append(ids)
    return token_ids


def _pytorch_logits(model_dir: Path, token_ids: list[list[int]], *, trust_remote_code: bool) -> list[Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from jobs.onnx.export import quiet_loaders

    with quiet_loaders():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.eval()
    logits = []
    with torch.no_grad():
        for ids in token_ids:
            tensor = torch.tensor([ids], dtype=torch.long)
            logits.append(model(input_ids=tensor, attention_mask=torch.ones_like(tensor), use_cache=False).logits[0].float().numpy())
    return logits


def onnx_logits(session: Any, token_ids: list[list[int]]) -> list[Any]:
    """Logits at every position of each prompt, from one full-sequence forward with an empty past."""
    import numpy as np

    logits = []
    for ids in token_ids:
        input_ids = np.array([ids], dtype=np.int64)
        feeds = decoder_feeds(session, input_ids, np.ones_like(input_ids), empty_past(session))
        logits.append(session.run(["logits"], feeds)[0][0].astype(np.float32))
    return logits


def agreement(reference: list[Any], logits: list[Any]) -> dict[str, Any]:
    import numpy as np

    pairs = list(zip(reference, logits, strict=True))
    same = sum(int((expected.argmax(-1) == got.argmax(-1)).sum()) for expected, got in pairs)
    positions = sum(expected.shape[0] for expected, _ in pairs)
    diffs = [np.abs(expected - got) for expected, got in pairs]
    return {
        "top1_agreement": round(same / positions, 6),
        "max_logit_diff": float(f"{max(float(d.max()) for d in diffs):.6g}"),
        "mean_logit_diff": float(f"{sum(float(d.sum()) for d in diffs) / sum(d.size for d in diffs):.6g}"),
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
