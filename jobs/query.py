"""Generate from a model folder (PyTorch) or a published/quantized variant (ONNX Runtime).

For a quick look at a result: the prompt goes through the model's chat template (unless
`raw`), decoding is greedy, and it stops at the model's end-of-turn tokens. The ONNX path
feeds the graph exactly as transformers.js does (input_ids, attention_mask, position_ids
where the graph has them, past_key_values.N.key/value in, present.N.* out), so what it
answers is what a browser running that variant answers.
"""

import json
import time
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
    chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_ids(folder: Path, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    path = folder / "generation_config.json"
    if path.exists():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


class TorchGenerator:
    def __init__(self, folder: Path, *, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from jobs.onnx_export import quiet_loaders

        self.tokenizer = _tokenizer(folder, trust_remote_code)
        with quiet_loaders():
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust_remote_code)
        self.model.eval()
        self.stops = stop_ids(folder, self.tokenizer)

    def generate(self, prompt: str, *, max_new_tokens: int, system: str | None = None, raw: bool = False) -> Answer:
        import torch

        ids = prompt_ids(self.tokenizer, prompt, system=system, raw=raw)
        started = time.perf_counter()
        tensor = torch.tensor([ids])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.stops), 0)
        with torch.no_grad():
            output = self.model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(self.stops) or None, pad_token_id=pad)
        new = [token for token in output[0, len(ids):].tolist()]
        new = new[: next((index for index, token in enumerate(new) if token in self.stops), len(new))]
        return Answer(self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids), len(new), time.perf_counter() - started)


class OnnxGenerator:
    def __init__(self, folder: Path, variant: str) -> None:
        from jobs.quantize import decoder_session

        if variant not in VARIANT_FILES:
            raise UserError(f"--variant {variant}: unknown; expected one of {', '.join(VARIANT_FILES)}")
        path = folder / ONNX_FOLDER / VARIANT_FILES[variant]
        if not path.exists():
            present = [name for name, file in VARIANT_FILES.items() if (folder / ONNX_FOLDER / file).exists()]
            raise UserError(f"{folder}: no {variant} variant ({ONNX_FOLDER}/{VARIANT_FILES[variant]}); it has {', '.join(present) or 'none'}")
        self.tokenizer = _tokenizer(folder, False)
        self.session = decoder_session(path)
        self.inputs = {spec.name for spec in self.session.get_inputs()}
        self.outputs = [spec.name for spec in self.session.get_outputs()]
        self.stops = stop_ids(folder, self.tokenizer)

    def generate(self, prompt: str, *, max_new_tokens: int, system: str | None = None, raw: bool = False) -> Answer:
        import numpy as np

        from jobs.quantize import empty_past

        ids = prompt_ids(self.tokenizer, prompt, system=system, raw=raw)
        started = time.perf_counter()
        past = empty_past(self.session)
        fed, length, new = ids, 0, []
        for _ in range(max_new_tokens):
            feeds = {"input_ids": np.array([fed], dtype=np.int64), "attention_mask": np.ones((1, length + len(fed)), dtype=np.int64), **past}
            if "position_ids" in self.inputs:
                feeds["position_ids"] = np.arange(length, length + len(fed), dtype=np.int64)[None, :]
            results = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
            token = int(results["logits"][0, -1].argmax())
            if token in self.stops:
                break
            new.append(token)
            past = {"past_key_values." + name.removeprefix("present."): value for name, value in results.items() if name.startswith("present.")}
            length += len(fed)
            fed = [token]
        return Answer(self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids), len(new), time.perf_counter() - started)
