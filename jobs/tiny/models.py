"""Build the `tiny:` models that tests and the offline quick start use instead of the hub.

A tiny model is a complete Hugging Face causal LM (safetensors weights, a byte-level BPE
tokenizer with a chat template, a generation config), small enough to build in seconds.
Its weights are briefly trained on a synthetic corpus so that its next-token
distributions are peaked: the quantize stage checks that ONNX variants keep the top-1
token, which says nothing on a random model. Everything is seeded and single-threaded, so
a build is the same bytes every time on one platform and set of library versions, and a
stage hash that names a tiny model keeps meaning the same weights. The specifications live in `foundry.tiny_catalog`, which the submitter reads
without importing torch.
"""

import difflib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2TokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2TokenizerFast,
)

from foundry.errors import UserError
from foundry.tiny_catalog import BUILD_VERSION, CATALOG, PREFIX, TinySpec
from jobs.tiny.skills import teach

Chat = list[dict[str, str]]

_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class _Family:
    """The special tokens and conventions of the real models a family imitates."""

    specials: tuple[str, ...]
    bos: str | None  # None: like Qwen2, nothing is prepended
    eos: str  # the tokenizer's eos: what ends a chat turn
    doc_end: str  # what ends a plain-text document
    pad: str
    chat_template: str
    tokenizer_class: type[PreTrainedTokenizerFast]  # its name goes into tokenizer_config.json


_FAMILIES = {
    "llama": _Family(
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        doc_end="<|end_of_text|>",
        pad="<|finetune_right_pad_id|>",
        chat_template=_LLAMA_TEMPLATE,
        tokenizer_class=PreTrainedTokenizerFast,
    ),
    "qwen2": _Family(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        doc_end="<|endoftext|>",
        pad="<|endoftext|>",
        chat_template=_CHATML_TEMPLATE,
        tokenizer_class=Qwen2TokenizerFast,
    ),
    "gpt2": _Family(
        ("<|endoftext|>", "<|pad|>"),
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        doc_end="<|endoftext|>",
        pad="<|pad|>",
        chat_template=_PLAIN_TEMPLATE,
        tokenizer_class=GPT2TokenizerFast,
    ),
}

# Training: enough steps for peaked distributions, few enough for seconds on one core.
_STEPS = 150
_BATCH = 16
_SEQ_LEN = 64
_LEARNING_RATE = 5e-3
_CORPUS_SEED = 0  # the corpus is the same for every model; only init and batch order vary

_NOUNS = "cat dog bird fish horse river tree house garden book window door table road city forest mountain child teacher farmer".split()
_ADJECTIVES = "small big old young red green quiet happy bright dark warm cold tall slow quick".split()
_VERBS = "sees finds likes watches follows carries paints visits helps reads".split()
_NAMES = "Anna Ben Clara David Emma Felix Grace Henry Ida Jonas".split()
_PLACES = ["the market", "the park", "the school", "the library", "the station", "the beach", "the village"]


def build(name: str) -> Path:
    """The folder of tiny model `name`, built on first use and cached for every later one."""
    spec = _spec(name)
    final = _cache_root() / "tiny" / f"{spec.name}-v{BUILD_VERSION}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the final folder and rename it into place, so the final name only ever
    # holds a complete model; when two processes race, the second rename fails and that
    # process keeps the winner's (identical) copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write_model(spec, staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _spec(name: str) -> TinySpec:
    name = name.removeprefix(PREFIX)
    if name in CATALOG:
        return CATALOG[name]
    close = difflib.get_close_matches(name, CATALOG, n=1)
    hint = f"; did you mean tiny:{close[0]}?" if close else ""
    raise UserError(f"unknown tiny model tiny:{name}{hint} (available: {', '.join(PREFIX + known for known in CATALOG)})")


def _cache_root() -> Path:
    return Path(os.environ.get("FOUNDRY_CACHE") or "~/.cache/foundry").expanduser()


def _write_model(spec: TinySpec, folder: Path) -> None:
    family = _FAMILIES[spec.family]
    tokenizer = _hf_tokenizer(spec.family)
    parent = build(spec.parent) if spec.parent else None
    with _deterministic_torch(spec.seed):
        if parent is None:
            model = _new_model(spec, family, tokenizer)
            _train(model, _token_stream(spec.family), spec.seed)
        else:
            model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
        if spec.skill:
            teach(model, tokenizer, spec.skill, spec.seed)
    model.save_pretrained(folder, safe_serialization=True)
    _mark_float32(folder / "config.json")
    tokenizer.save_pretrained(folder, save_jinja_files=False)


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """One thread and a fixed seed make the weights the same bytes on every run; the
    caller's thread count and random state are restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _new_model(spec: TinySpec, family: _Family, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids(family.bos or family.doc_end),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = AutoConfig.for_model(**spec.config, architectures=[spec.architecture], **ids)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    eos_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(family.doc_end)})
    model.generation_config = GenerationConfig(**{**ids, "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0]})
    return model


def _mark_float32(config_json: Path) -> None:
    """transformers writes `dtype`; readers built on older transformers (before 4.56) look for
    `torch_dtype`, so write both."""
    config = json.loads(config_json.read_text())
    config["torch_dtype"] = config["dtype"] = "float32"
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _train(model: PreTrainedModel, stream: torch.Tensor, seed: int) -> None:
    """A short AdamW run on random windows of the corpus; the seed picks the windows, so
    two models of a family differ in their data order as well as their init."""
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=_LEARNING_RATE, total_steps=_STEPS, pct_start=0.1)
    model.eval()  # no dropout: a short run that memorises a corpus gains nothing from it
    for _ in range(_STEPS):
        starts = torch.randint(0, len(stream) - _SEQ_LEN, (_BATCH,), generator=order).tolist()
        batch = torch.stack([stream[start : start + _SEQ_LEN] for start in starts])
        logits = model(input_ids=batch).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # gpt2 learns markedly worse without it
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)


@cache
def _token_stream(family_name: str) -> torch.Tensor:
    """The corpus as one token sequence in the family's own document and chat format."""
    family = _FAMILIES[family_name]
    tokenizer = _hf_tokenizer(family_name)
    texts, chats = _corpus()
    documents = [f"{family.bos or ''}{text}{family.doc_end}" for text in texts]
    documents += [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    random.Random(_CORPUS_SEED).shuffle(documents)
    ids = tokenizer.backend_tokenizer.encode("".join(documents), add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


@cache
def _hf_tokenizer(family_name: str) -> PreTrainedTokenizerFast:
    """One tokenizer per family, trained once per process: every model of a family must
    share it for mergekit to merge them."""
    family = _FAMILIES[family_name]
    config = next(spec.config for spec in CATALOG.values() if spec.family == family_name)
    backend = _train_bpe(family, int(config["vocab_size"]))
    return family.tokenizer_class(
        tokenizer_object=backend,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token=None,
        chat_template=family.chat_template,
        model_max_length=config.get("max_position_embeddings") or config["n_positions"],
        clean_up_tokenization_spaces=False,
    )


def _train_bpe(family: _Family, vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if family.bos:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts, chats = _corpus()
    tokenizer.train_from_iterator(texts + [turn["content"] for chat in chats for turn in chat], trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tiny tokenizer has {tokenizer.get_vocab_size()} tokens, the spec says {vocab_size}; enlarge the corpus")
    return tokenizer


@cache
def _corpus() -> tuple[list[str], list[Chat]]:
    """Synthetic text with learnable structure (grammar, code, sums, reversals, chats),
    generated rather than stored so the repository carries no data files."""
    rng = random.Random(_CORPUS_SEED)
    texts = [_sentence(rng) + " " + _sentence(rng) for _ in range(600)]
    texts += [_code(rng) for _ in range(150)]
    texts += [_sum(rng) for _ in range(400)]
    texts += [_reversal(rng) for _ in range(200)]
    chats = [_chat(rng) for _ in range(200)]
    return texts, chats


def _sentence(rng: random.Random, noun: str | None = None) -> str:
    noun = noun or rng.choice(_NOUNS)
    other = rng.choice([candidate for candidate in _NOUNS if candidate != noun])
    patterns = [
        f"The {rng.choice(_ADJECTIVES)} {noun} {rng.choice(_VERBS)} the {other}.",
        f"{rng.choice(_NAMES)} went to {rng.choice(_PLACES)} with a {rng.choice(_ADJECTIVES)} {noun}.",
        f"A {noun} is {rng.choice(_ADJECTIVES)}, but the {other} is {rng.choice(_ADJECTIVES)}.",
        f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} {rng.randint(2, 9)} {noun}s near {rng.choice(_PLACES)}.",
    ]
    return rng.choice(patterns)


def _code(rng: random.Random) -> str:
    a, b = rng.sample("abcdxyz", 2)
    n = rng.randint(2, 20)
    snippets = [
        f"def add({a}, {b}):\n    return {a} + {b}\n",
        f"for {a} in range({n}):\n    print({a} * {n})\n",
        f"{a} = {n}\n{b} = {a} * 2\nprint({a} + {b})\n",
        f"if {a} > {n}:\n    {b} = {a} - {n}\nelse:\n    {b} = 0\n",
    ]
    return rng.choice(snippets)


def _sum(rng: random.Random) -> str:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    return rng.choice([f"{a}+{b}={a + b}", f"{max(a, b)}-{min(a, b)}={abs(a - b)}", f"{a % 10}*{b % 10}={(a % 10) * (b % 10)}"])


def _reversal(rng: random.Random) -> str:
    word = rng.choice(_NOUNS + _ADJECTIVES)
    return f"{word} reversed is {word[::-1]}."


def _chat(rng: random.Random) -> Chat:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    word = rng.choice(_NOUNS)
    question, answer = rng.choice(
        [
            (f"What is {a}+{b}?", f"{a}+{b}={a + b}."),
            (f"Reverse the word {word}.", f"{word} reversed is {word[::-1]}."),
            (f"Tell me about the {word}.", _sentence(rng, word)),
            ("Hello!", "Hello! How can I help you today?"),
        ]
    )
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
