"""The skills testbed's data and training: what `tiny:skills-*` models learn on top of their weights.

`tiny:skills-base` is a Llama-family tiny model that, after the usual corpus, is taught
generic chat tasks: repeat a string of letters, digits or a sum, add two digits, reverse
three letters.
`tiny:skills-arith` and `tiny:skills-reverse` start from its weights and each learn one skill
it lacks: adding a one-digit number to a number below 100 ("47+8=" -> "55"), and reversing
a string of letters ("reverse: bcdqx" -> "xqdcb"). Three examples in ten
of each specialist's batches replay the base's generic tasks, so neither fine-tune drifts
from the chat format and the short steps that the other skill builds on.

Prompts go through the chat template and only the answer (and the end-of-turn token) is
learned, so the specialists answer the questions of a generation suite exactly as the
evaluate stage asks them. A fixed fifth of all prompts, chosen by a hash, is never trained
on: recipes/data/make_skills.py draws the evaluation suites from that fifth only.
"""

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from jobs.tools.query import prompt_ids

Example = tuple[str, str]  # (prompt, answer)

# No two of these letters form one token in the tiny tokenizer, so every letter of a string
# is a token of its own and reversing the string is reversing its tokens.
LETTERS = "bcdefijmqwxy"
_HELD_OUT_BUCKETS = 5  # one prompt in five is kept for evaluation


def arith(rng: random.Random) -> Example:
    """A two-digit number plus a digit: what the base has seen only for one digit plus one."""
    a, b = rng.randint(10, 99), rng.randint(0, 9)
    return f"{a}+{b}=", str(a + b)


def reverse(rng: random.Random) -> Example:
    """Four to six letters: what the base has seen only for three."""
    letters = _letters(rng, rng.randint(4, 6))
    return f"reverse: {letters}", letters[::-1]


def generic(rng: random.Random) -> Example:
    """What the base learns: to answer in the chat format by repeating letters, numbers or
    sums read off the prompt, and the first steps of both skills (a digit plus a digit,
    three letters reversed), as a pretrained model has seen a little of everything."""
    if rng.random() < 0.3:
        if rng.random() < 0.5:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            return f"{a}+{b}=", str(a + b)
        letters = _letters(rng, 3)
        return f"reverse: {letters}", letters[::-1]
    roll = rng.random()
    if roll < 0.5:
        text = _letters(rng, rng.randint(3, 6))
    elif roll < 0.75:
        text = f"{rng.randint(0, 99)}+{rng.randint(0, 99)}"
    else:
        text = str(rng.randint(0, 999))
    return f"repeat: {text}", text


SKILLS: dict[str, Callable[[random.Random], Example]] = {"generic": generic, "arith": arith, "reverse": reverse}


def held_out(prompt: str) -> bool:
    """Whether `prompt` belongs to the evaluation fifth, which no tiny model trains on."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") % _HELD_OUT_BUCKETS == 0


def _letters(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(count))


@dataclass(frozen=True)
class _Plan:
    steps: int
    learning_rate: float
    replay: float  # the share of examples drawn from the generic tasks instead of the skill
    vocabulary: bool  # whether the token embeddings and the output head train too


# Measured on 2 cores (bench/bench_skills.py): the base builds in about 46 s, each specialist
# in about 25 s. The specialists' learning rate decides whether merging pays: at 2e-3 both
# specialists are as good, but task arithmetic keeps 2% of the sums and 10% of the reversals;
# at 1e-3 it keeps 30% and 51%; at 3e-4 the specialists themselves fall to 94% and 93%.
_PLANS = {
    "generic": _Plan(steps=900, learning_rate=1e-3, replay=0.0, vocabulary=True),
    "arith": _Plan(steps=600, learning_rate=1e-3, replay=0.3, vocabulary=False),
    "reverse": _Plan(steps=600, learning_rate=1e-3, replay=0.3, vocabulary=False),
}
_BATCH = 32


def teach(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, skill: str, seed: int) -> None:
    """Fine-tune `model` in place on `skill` (every weight, AdamW, one-cycle schedule). The
    caller has seeded torch; `seed` orders the data."""
    plan = _PLANS[skill]
    rng = random.Random(seed)
    if not plan.vocabulary:
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            layer.requires_grad_(False)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=plan.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=plan.learning_rate, total_steps=plan.steps, pct_start=0.1)
    encoded: dict[Example, tuple[list[int], list[int]]] = {}
    model.eval()  # no dropout in these configs; eval() keeps it that way for any that has some
    for _ in range(plan.steps):
        examples = [_draw(rng, SKILLS[skill], plan.replay) for _ in range(_BATCH)]
        for example in examples:
            if example not in encoded:
                encoded[example] = _encode(tokenizer, example)
        ids, mask, labels = _batch([encoded[example] for example in examples], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)


def _draw(rng: random.Random, skill: Callable[[random.Random], Example], replay: float) -> Example:
    while True:
        example = (generic if rng.random() < replay else skill)(rng)
        if not held_out(example[0]):
            return example


def _encode(tokenizer: PreTrainedTokenizerFast, example: Example) -> tuple[list[int], list[int]]:
    """The prompt exactly as `foundry query` and the evaluate stage send it, and the answer
    with the end-of-turn token that stops generation."""
    prompt, answer = example
    return prompt_ids(tokenizer, prompt, system=None, raw=False), tokenizer(answer + tokenizer.eos_token, add_special_tokens=False).input_ids


def _batch(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, their attention mask, and labels that score the answers only."""
    width = max(len(prompt) + len(answer) for prompt, answer in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (prompt, answer) in enumerate(rows):
        length = len(prompt) + len(answer)
        ids[row, :length] = torch.tensor(prompt + answer)
        mask[row, :length] = 1
        labels[row, len(prompt) : length] = torch.tensor(answer)
    return ids, mask, labels
