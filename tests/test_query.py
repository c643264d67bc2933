"""`foundry query`: answers from a model folder (PyTorch), a stage key in the store, and a
quantized variant (ONNX Runtime, fed as transformers.js feeds it), through the chat template."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from foundry.store import build_record, open_store

HELLO = "Hello! How can I help you today?"  # what the tiny models learned to answer "Hello!"


@pytest.fixture(scope="module")
def tiny() -> Path:
    from jobs.tiny.models import build

    return build("llama-a")


@pytest.fixture(scope="module")
def variants(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny:llama-a through the quantize stage: fp32 and q4 ONNX graphs with the tokenizer."""
    from jobs.stages import quantize

    out = tmp_path_factory.mktemp("variants")
    spec = StageSpec(stage="quantize", recipe="q", key="quantize-000000000000", store=str(out.parent / "store"), params={"variants": ["fp32", "q4"]})
    quantize.run(spec, {"model": tiny}, out)
    return out


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pytorch_answers_through_the_chat_template(tiny: Path) -> None:
    from transformers import AutoTokenizer

    from jobs.tools.query import open_generator, prompt_ids

    answer = open_generator(tiny).generate("Hello!", max_new_tokens=20)
    assert answer.text == HELLO and answer.new_tokens > 0
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    templated = prompt_ids(tokenizer, "Hello!", system=None, raw=False)
    assert tokenizer.decode(templated).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt_ids(tokenizer, "Hello!", system=None, raw=True) != templated


def test_onnx_variants_answer_as_pytorch_does(tiny: Path, variants: Path) -> None:
    from jobs.tools.query import open_generator

    torch_model = open_generator(tiny)
    fp32 = open_generator(variants, variant="fp32")
    for prompt in ("Hello!", "What is 12+7?", "Reverse the word garden."):
        assert fp32.generate(prompt, max_new_tokens=20).text == torch_model.generate(prompt, max_new_tokens=20).text
    assert open_generator(variants).generate("Hello!", max_new_tokens=20).text == HELLO  # no weights: ONNX, q4 by default
    with pytest.raises(UserError, match="no q8 variant"):
        open_generator(variants, variant="q8")
    with pytest.raises(UserError, match="needs a published or quantized model"):
        open_generator(tiny, variant="q4")


def test_query_command_reads_a_stage_key_from_the_store(tiny: Path, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    staging = store.new_staging("demo", "merge-0123456789ab")
    shutil.copytree(tiny, staging, dirs_exist_ok=True)
    store.commit("demo", "merge-0123456789ab", staging, build_record(staging, key="merge-0123456789ab", stage="merge", recipe="demo", started=0.0, extra={}))
    env = {**os.environ, "FOUNDRY_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "foundry", "query", "demo/merge-0123456789ab", "Hello!"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == HELLO and "tokens/s" in result.stderr
    assert "Loading weights" not in result.stderr  # transformers 5's progress bar
    missing = subprocess.run([sys.executable, "-m", "foundry", "query", "demo/merge-ffffffffffff", "Hello!"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no committed key 'merge-ffffffffffff' of recipe 'demo'" in missing.stderr
