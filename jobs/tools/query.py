"""Generate from a model folder (PyTorch) or a published/quantized variant (ONNX Runtime).

For a quick look at a result: the prompt goes through the model's chat template (unless
`raw`), decoding is greedy, and it stops at the model's end-of-turn tokens. The ONNX path
feeds the graph exactly as transformers.js does (input_ids, attention_mask, position_ids
where the graph has them, past_key_values.N.key/value in, present.N.* out), so what it
answers is what a browser running that variant answers.
"""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from foundry.errors import UserError
from foundry.variants import ONNX_FOLDER, VARIANT_FILES


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float


class Generator(Protocol):
    def generate(self, prompt: str, *, max_new_tokens: int, system: str | None = None, raw: bool = False) -> Answer: ...


def open_generator(folder: Path, *, variant: str | None = None, trust_remote_code: bool = False) -> Generator:
    """PyTorch for a folder with weights; ONNX Runtime for one with onnx/ variants (the
    variant named, else the folder's default from its transformers.js config, else q4)."""
    has_onnx = (folder / ONNX_FOLDER).is_dir()
    has_weights = any(folder.glob("*.safetensors"))
    if variant is not None or (has_onnx and not has_weights):
        if not has_onnx:
            raise UserError(f"{folder}: --variant needs a published or quantized model (an onnx/ folder); this folder has none")
        return OnnxGenerator(folder, variant or _default_variant(folder))
    if not has_weights:
        raise UserError(f"{folder}: no model weights (*.safetensors) and no onnx/ folder; give a model folder, a stage key or a published variant")
    return TorchGenerator(folder, trust_remote_code=trust_remote_code)


def _default_variant(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    chosen = (config.get("transformers.js_config") or {}).get("dtype")
    if isinstance(chosen, str) and chosen in VARIANT_FILES:
        return chosen
    present = [name for name, file in VARIANT_FILES.items() if (folder / ONNX_FOLDER / file).exists()]
    if not present:
        raise UserError(f"{folder}: the onnx/ folder holds none of {', '.join(VARIANT_FILES.values())}")
    return "q4" if "q4" in present else present[0]


def _tokenizer(folder: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: its tokenizer cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0]})") from None


def prompt_ids(tokenizer: Any, prompt: str, *, system: str | None, raw: bool) -> list[int]:
    """The prompt as the model saw prompts in training: through its chat template, with the
    assistant's turn opened. A tokenizer without a template gets the raw text."""
    if raw or not tokenizer.chat_template:
        return list(tokenizer(prompt)["input_ids"])
    return chat_ids(tokenizer, ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}])


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """A conversation ({role, content} each) through the chat template, the assistant's turn opened."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_ids(folder: Path, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    path = folder / "generation_config.json"
    if path.exists():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar on every load: noise before an answer in
    the user's terminal, and in every evaluate log."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


class TorchGenerator:
    def __init__(self, folder: Path, *, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = _tokenizer(folder, trust_remote_code)
        with _no_progress_bar():
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.model.eval()
        if torch.cuda.is_available():  # a GPU pod (finetune, evaluate): float32 still, so scores match a CPU's
            self.model.to("cuda")
        self.stops = stop_ids(folder, self.tokenizer)

    def generate(self, prompt: str, *, max_new_tokens: int, system: str | None = None, raw: bool = False) -> Answer:
        return self.generate_many([(prompt, system)], max_new_tokens=max_new_tokens, raw=raw)[0]

    def generate_many(self, prompts: list[tuple[str, str | None]], *, max_new_tokens: int, raw: bool = False) -> list[Answer]:
        """Greedy answers to (prompt, system) pairs in one batch, left-padded as generation
        needs; each Answer's seconds are the batch's (how long each answer took to come)."""
        import torch

        rows = [prompt_ids(self.tokenizer, prompt, system=system, raw=raw) for prompt, system in prompts]
        width = max(len(ids) for ids in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.stops), 0)
        tensor = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(tensor)
        for row, ids in enumerate(rows):
            tensor[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        started = time.perf_counter()
        with torch.no_grad():
            output = self.model.generate(
                tensor.to(self.model.device), attention_mask=mask.to(self.model.device), max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=sorted(self.stops) or None, pad_token_id=pad,
            )
        seconds = time.perf_counter() - started
        answers = []
        for row, ids in enumerate(rows):
            new = output[row, width:].tolist()
            new = new[: next((index for index, token in enumerate(new) if token in self.stops), len(new))]
            answers.append(Answer(self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids), len(new), seconds))
        return answers


class OnnxGenerator:
    def __init__(self, folder: Path, variant: str) -> None:
        from jobs.onnx.decoder import decoder_session

        if variant not in VARIANT_FILES:
            raise UserError(f"--variant {variant}: unknown; expected one of {', '.join(VARIANT_FILES)}")
        path = folder / ONNX_FOLDER / VARIANT_FILES[variant]
        if not path.exists():
            present = [name for name, file in VARIANT_FILES.items() if (folder / ONNX_FOLDER / file).exists()]
            raise UserError(f"{folder}: no {variant} variant ({ONNX_FOLDER}/{VARIANT_FILES[variant]}); it has {', '.join(present) or 'none'}")
        self.variant = variant
        self.tokenizer = _tokenizer(folder, False)
        started = time.perf_counter()
        self.session = decoder_session(path)
        self.load_seconds = time.perf_counter() - started     # ONNX Runtime's session creation: what bench-variants reports
        self.outputs = [spec.name for spec in self.session.get_outputs()]
        self.stops = stop_ids(folder, self.tokenizer)

    def generate(self, prompt: str, *, max_new_tokens: int, system: str | None = None, raw: bool = False) -> Answer:
        ids = prompt_ids(self.tokenizer, prompt, system=system, raw=raw)
        started = time.perf_counter()
        new = list(self.token_ids(ids, max_new_tokens))
        return Answer(self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids), len(new), time.perf_counter() - started)

    def token_ids(self, ids: list[int], max_new_tokens: int, *, pick: Callable[[Any], int] | None = None, stops: set[int] | None = None) -> Iterator[int]:
        """Greedy tokens after the prompt `ids`, one at a time (for streaming, and for comparing
        token for token with a web client), until a stop token (not yielded) or the limit.

        `pick` chooses the token from the last position's logits instead of argmax (sampling,
        see `sampler`); `stops` replaces the model's stop tokens (empty: run to the limit)."""
        import numpy as np

        from jobs.onnx.decoder import decoder_feeds, empty_past, next_past

        past = empty_past(self.session)
        fed, length = ids, 0
        for _ in range(max_new_tokens):
            feeds = decoder_feeds(self.session, np.array([fed], dtype=np.int64), np.ones((1, length + len(fed)), dtype=np.int64), past)
            results = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
            logits = results["logits"][0, -1]
            token = int(logits.argmax()) if pick is None else pick(logits)
            if token in (self.stops if stops is None else stops):
                return
            yield token
            past = next_past(results)
            length += len(fed)
            fed = [token]


def sampler(temperature: float, top_p: float = 1.0, seed: int | None = None) -> Callable[[Any], int] | None:
    """How a server picks tokens: None (greedy, argmax) at temperature 0; else a draw from the
    softmax of logits/temperature, within the smallest set of tokens whose probability reaches
    `top_p`, from a generator seeded with `seed` so that a seeded request is reproducible."""
    if temperature == 0:
        return None
    import numpy as np

    rng = np.random.default_rng(seed)

    def pick(logits: Any) -> int:
        scaled = logits.astype(np.float64) / temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
            nucleus = np.zeros_like(probs)
            nucleus[keep] = probs[keep]
            probs = nucleus / nucleus.sum()
        return int(rng.choice(len(probs), p=probs))

    return pick
