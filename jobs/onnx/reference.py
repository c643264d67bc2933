"""The PyTorch reference every exported variant is checked against: the prompts' token ids
and float32 logits at every position, in one `.npz` file.

It is computed where a loaded model already is. For the builder's families that is the
export's own process (jobs/onnx/builder_run.py), from the very model the builder loaded,
after the graph is written: no second process, import or load (measured at 0.5B: a step of
its own took 7.2 s, the forward alone 2 s). For optimum's families, whose exporter runs in
another environment, `from_checkpoint` runs as a step of its own (jobs/steps.py).

The model keeps the checkpoint's dtype and lifts each module's weights to float32 only
while it runs: the same numbers as a float32 model (a bfloat16 weight is exact in float32)
at half the memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from foundry.errors import UserError

MAX_PROMPT_TOKENS = 128
# Prompts run as one padded batch through the PyTorch model or a graph (every slice of it):
# their logits are held together, at most 8 x 128 positions x the vocabulary. One batch, not
# several: a MatMulNBits kernel without prepacked weights (8- and 2-bit) dequantizes them
# on every run (measured at 0.5B: q8's check 2.9 s in batches of 2 prompts, 1.3 s in one of 8).
PROMPTS_PER_PASS = 8


def tokenize(model_dir: Path, prompts: list[str], *, trust_remote_code: bool) -> list[list[int]]:
    """Each prompt's token ids, as the model's own tokenizer gives them, at most MAX_PROMPT_TOKENS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    token_ids = []
    for prompt in prompts:
        ids = list(tokenizer(prompt)["input_ids"])[:MAX_PROMPT_TOKENS]
        if not ids:
            raise UserError(f"quantize: the prompt {prompt!r} tokenizes to no tokens; give prompts in the model's language")
        token_ids.append(ids)
    return token_ids


def write(model: Any, model_dir: Path, prompts: list[str], target: Path, *, trust_remote_code: bool) -> None:
    """The reference of `model` (a loaded causal LM in eval mode) over `prompts`, saved to `target`."""
    import torch

    token_ids = tokenize(model_dir, prompts, trust_remote_code=trust_remote_code)
    if model.dtype != torch.float32:
        lift_to_float32_while_running(model)
    arrays = {f"ids_{index}": np.array(ids, dtype=np.int64) for index, ids in enumerate(token_ids)}
    with torch.no_grad():
        for first, ids, mask in padded_passes(token_ids):
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=False).logits.float().numpy()
            for row, prompt in enumerate(token_ids[first:first + len(ids)]):
                arrays[f"logits_{first + row}"] = logits[row, :len(prompt)]
    temporary = target.with_name(f".{target.name}.tmp.npz")
    np.savez(temporary, **arrays)
    temporary.replace(target)


def from_checkpoint(model_dir: Path, prompts: list[str], target: Path, trust_remote_code: bool) -> None:
    """`write` for a model loaded here from its folder, in its own dtype; run as a step of its own."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", trust_remote_code=trust_remote_code)
    write(model.eval(), model_dir, prompts, target, trust_remote_code=trust_remote_code)


def token_ids(reference: Path) -> list[list[int]]:
    """The prompts' token ids a reference was computed on."""
    with np.load(reference) as saved:
        count = sum(1 for name in saved.files if name.startswith("ids_"))
        return [saved[f"ids_{index}"].tolist() for index in range(count)]


def logits(reference: Path) -> Iterator[np.ndarray]:
    """The reference logits, one prompt at a time (read from the file as they are asked for)."""
    with np.load(reference) as saved:
        index = 0
        while f"logits_{index}" in saved.files:
            yield saved[f"logits_{index}"]
            index += 1


def padded_passes(token_ids: list[list[int]]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index of the first prompt, input ids, attention mask) for each pass of
    PROMPTS_PER_PASS prompts, padded on the right: a causal model's logits at the real
    positions are those of each prompt alone, and a pass reads each weight once, which is
    what makes the check cheap."""
    for first in range(0, len(token_ids), PROMPTS_PER_PASS):
        batch = token_ids[first:first + PROMPTS_PER_PASS]
        ids = np.zeros((len(batch), max(map(len, batch))), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, prompt in enumerate(batch):
            ids[row, :len(prompt)] = prompt
            mask[row, :len(prompt)] = 1
        yield first, ids, mask


def lift_to_float32_while_running(model: Any) -> None:
    """Each module's own weights in float32 for its forward only, then back to the checkpoint's dtype.

    Activations then flow in float32 from the embedding on, so the model computes what its
    float32 copy would, holding one module's float32 weights at a time.

    The checkpoint's own tensors are put back after the forward, not converted back: they
    are views of the memory-mapped safetensors file, and a converted copy would hold every
    weight twice (the mapped pages and the copy; 6.6 GiB instead of 4.3 at 1.5B).
    """
    import torch

    stored: dict[int, list[Any]] = {}

    def lift(module: Any, _inputs: Any) -> None:
        stored[id(module)] = [parameter.data for parameter in module.parameters(recurse=False)]
        for parameter in module.parameters(recurse=False):
            parameter.data = parameter.data.to(torch.float32)

    def lower(module: Any, _inputs: Any, _output: Any) -> None:
        for parameter, data in zip(module.parameters(recurse=False), stored.pop(id(module)), strict=True):
            parameter.data = data

    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_pre_hook(lift)
            module.register_forward_hook(lower)
