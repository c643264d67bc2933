"""The `tiny:` models are what every other stage's tests run on, so they must load like hub
models, be the same bytes on every build, and be trained enough for top-1 checks to mean
something."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from foundry.errors import UserError
from foundry.tiny_catalog import BUILD_VERSION, CATALOG
from jobs.sources.resolve import PICKLE_SUFFIXES
from jobs.tiny import models as tiny_models
from jobs.tiny.models import build

FIRST_OF_EACH_FAMILY = ["llama-a", "qwen2-a", "gpt2-a"]
CORPUS_LIKE = [
    "The small cat sees the dog.",
    "Anna went to the park with a red book.",
    "def add(a, b):\n    return a + b\n",
    "tree reversed is eert.",
    "for x in range(10):\n    print(x * 10)\n",
]
# Mean top-1 probability over CORPUS_LIKE, measured at 0.57-0.61 for llama and qwen2 and
# 0.40-0.45 for gpt2 (all nine models); uniform over 512 tokens would be 0.002.
MEAN_TOP1_FLOOR = 0.3


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", FIRST_OF_EACH_FAMILY)
def test_loads_offline_as_a_complete_hub_model(name: str) -> None:
    folder = build(name)
    spec = CATALOG[name]
    assert folder.name == f"{name}-v{BUILD_VERSION}"
    # transformers 5 keeps the special tokens in tokenizer_config.json (no special_tokens_map.json).
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [spec.architecture]
    assert config["torch_dtype"] == "float32"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert {"bos_token_id", "eos_token_id", "pad_token_id"} <= set(generation)

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == spec.architecture
    assert model.dtype == torch.float32
    assert len(tokenizer) == spec.vocab_size == model.config.vocab_size
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.decode(tokenizer("def add(a, b): 12+7=19", add_special_tokens=False).input_ids) == "def add(a, b): 12+7=19"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama-a", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("qwen2-a", "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"),
        ("gpt2-a", "user: Hello!\nassistant:"),
    ],
    ids=FIRST_OF_EACH_FAMILY,
)
def test_chat_template_renders_and_the_model_answers_in_kind(name: str, expected: str) -> None:
    folder = build(name)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    messages = [{"role": "user", "content": "Hello!"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")  # input_ids and attention_mask
    answer = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert tokenizer.decode(answer[0, prompt.input_ids.shape[1] :], skip_special_tokens=True).strip() == "Hello! How can I help you today?"


@pytest.mark.parametrize("name", FIRST_OF_EACH_FAMILY)
def test_trained_model_is_peaked_on_corpus_like_text(name: str) -> None:
    folder = build(name)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    top1 = []
    with torch.no_grad():
        for text in CORPUS_LIKE:
            ids = tokenizer(text, return_tensors="pt").input_ids
            top1.append(model(ids).logits.softmax(-1).max(-1).values.mean().item())
    assert sum(top1) / len(top1) > MEAN_TOP1_FLOOR


def test_models_of_a_family_share_shape_and_tokenizer_but_not_weights() -> None:
    first, second = build("llama-a"), build("llama-b")
    assert _sha(first / "tokenizer.json") == _sha(second / "tokenizer.json")
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert {key: value.shape for key, value in a.items()} == {key: value.shape for key, value in b.items()}
    assert all(not torch.equal(a[key], b[key]) for key in a)
    # Different inits, not a nudge of one: mergekit's methods are only exercised by real differences.
    matrices = [key for key in a if a[key].dim() == 2]
    assert all((a[key] - b[key]).norm() > 0.5 * a[key].norm() for key in matrices)


def test_two_builds_are_byte_identical_and_leave_torch_as_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    folders = []
    for root in ("first", "second"):
        for cached in (tiny_models._corpus, tiny_models._hf_tokenizer, tiny_models._token_stream):
            cached.cache_clear()  # so the second build trains its own tokenizer too
        monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / root))
        folders.append(build("qwen2-b"))
    assert folders[0] != folders[1]
    for file in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert _sha(folders[0] / file) == _sha(folders[1] / file), file
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_a_racing_builder_keeps_the_winners_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path))
    final = tmp_path / "tiny" / f"gpt2-c-v{BUILD_VERSION}"

    def write_while_another_process_wins(spec: object, folder: Path) -> None:
        (folder / "model.safetensors").write_text("loser")
        final.mkdir()
        (final / "model.safetensors").write_text("winner")

    monkeypatch.setattr(tiny_models, "_write_model", write_while_another_process_wins)
    assert build("gpt2-c") == final
    assert (final / "model.safetensors").read_text() == "winner"
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_a_crashed_build_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path))

    def crash(spec: object, folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_models, "_write_model", crash)
    with pytest.raises(KeyboardInterrupt):
        build("gpt2-c")
    assert list((tmp_path / "tiny").iterdir()) == []


def test_unknown_name_lists_the_catalogue_and_suggests_the_closest() -> None:
    with pytest.raises(UserError) as caught:
        build("lama-a")
    message = str(caught.value)
    assert "did you mean tiny:llama-a?" in message
    assert all(f"tiny:{name}" in message for name in CATALOG)


def test_accepts_the_tiny_prefix() -> None:
    assert build("tiny:llama-a") == build("llama-a")
