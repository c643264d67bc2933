"""From chats to training batches: the chat template, labels on completions only, packing.

Each chat is rendered with the model's chat template (or, for a model without one, the
preset's template family) and tokenized once; tokens of the assistant turns carry labels,
every other token -100, so the loss is on completions only.

Packing puts several examples in one row of at most max_length tokens with position ids
that restart at each example and no attention mask. transformers (5.25) reads the restarts
as sequence boundaries in a forward without a KV cache (training passes use_cache=False):
with SDPA or eager attention it builds a block-diagonal causal mask
(masking_utils.find_packed_sequence_indices), with flash-attention it runs variable-length
kernels; either way no token attends across examples. Rows are bounded by max_length rather
than one flattened row per batch (as transformers' DataCollatorWithFlattening makes), since
masked attention costs the square of the row's length on a CPU. Rows are packed anew each
epoch from that epoch's shuffled order, so no two examples share every row they appear in.

Batches are drawn at random, not grouped by length: grouping clusters examples whose
lengths (and so, often, contents) are alike, and on small datasets that stalls learning;
packing is the way to waste no compute on padding.
"""

import bisect
import random
from dataclasses import dataclass
from typing import Any

import torch

from foundry.errors import UserError
from jobs.finetuning.datasets import Chat

IGNORE = -100

# For models whose tokenizer has no chat template: the preset's family, written out.
TEMPLATES = {
    "plain": (
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None  # set on packed rows only

    @property
    def label_count(self) -> int:
        return sum(label != IGNORE for label in self.labels[1:])  # the first token has nothing before it


def ensure_chat_template(tokenizer: Any, family: str) -> str:
    """The template the tokenizer will use: its own, or the family's (set on it, so it is
    saved with the fine-tuned model and `foundry query` formats prompts the same way)."""
    if tokenizer.chat_template:
        return "model"
    tokenizer.chat_template = TEMPLATES.get(family, TEMPLATES["plain"])
    return family if family in TEMPLATES else "plain"


@dataclass
class EncodeStats:
    truncated: int = 0
    dropped: int = 0


def encode_all(tokenizer: Any, chats: list[Chat], max_length: int, stats: EncodeStats) -> list[Example]:
    examples = []
    for chat in chats:
        example = encode(tokenizer, chat, max_length, stats)
        if example is not None:
            examples.append(example)
    return examples


def encode(tokenizer: Any, chat: Chat, max_length: int, stats: EncodeStats) -> Example | None:
    """One chat as tokens with labels on its assistant turns; cut at max_length, and None
    when the cut leaves no label (the example then teaches nothing)."""
    full = _render(tokenizer, chat, generation_prompt=False)
    spans = []
    for index, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, chat[:index], generation_prompt=True) if index else ""
        through = _render(tokenizer, chat[: index + 1], generation_prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise UserError("the chat template renders a conversation differently from its beginning, so completions cannot be told from prompts; use a model or template family whose turns append")
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [token if any(start <= offset < end for start, end in spans) else IGNORE for token, (offset, _) in zip(ids, encoded["offset_mapping"], strict=True)]
    if len(ids) > max_length:
        stats.truncated += 1
        ids, labels = ids[:max_length], labels[:max_length]
    example = Example(ids, labels)
    if example.label_count == 0:
        stats.dropped += 1
        return None
    return example


def _render(tokenizer: Any, chat: Chat, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Best-fit packing, in the order given, into rows of at most max_length tokens; each
    example keeps its own positions, and its first token no label (it would otherwise be
    predicted from the end of the example before it)."""
    rows: list[list[Example]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for example in examples:
        size = len(example.input_ids)
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, row = free.pop(slot)
        else:
            room, row = max_length, len(rows)
            rows.append([])
        rows[row].append(example)
        if room > size:
            bisect.insort(free, (room - size, row))
    packed = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for example in members:
            ids += example.input_ids
            labels += [IGNORE] + example.labels[1:]
            positions += list(range(len(example.input_ids)))
        packed.append(Example(ids, labels, positions))
    return packed


def epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int, *, packing: int | None = None) -> list[list[Example]]:
    """The batches of one epoch: the examples shuffled by (seed, epoch), packed into rows of
    `packing` tokens when it is set, and cut into batches."""
    order = list(examples)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    rows = pack(order, packing) if packing else order
    return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]


def sorted_batches(examples: list[Example], batch_size: int) -> list[list[int]]:
    """Evaluation batches: by length, for the least padding; the order does not matter."""
    order = sorted(range(len(examples)), key=lambda index: len(examples[index].input_ids))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors. Unpacked rows get an attention mask; packed rows get position
    ids instead (their padding forms one more block that attends only to itself)."""
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    packed = examples[0].position_ids is not None
    extra = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        if packed:
            assert example.position_ids is not None
            extra[row, :length] = torch.tensor(example.position_ids)
            extra[row, length:] = torch.arange(width - length)
        else:
            extra[row, :length] = 1
    return {"input_ids": ids, "labels": labels, "position_ids" if packed else "attention_mask": extra}
