"""The quantize stage: real ONNX exports and quantizations of tiny models, run with ONNX Runtime.

One llama-a run (onnxruntime-genai's builder) with every level is shared by most tests; a
gpt2-a run (optimum-onnx in its own environment: tied embeddings, Conv1D exported as
Gemm) proves the second exporter and is repeated in a fresh process to show the files
are byte-identical.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from foundry.variants import VARIANT_FILES
from jobs.onnx.decoder import decoder_feeds, decoder_session, empty_past
from jobs.onnx.reference import PROMPTS_PER_PASS, lift_to_float32_while_running
from jobs.onnx.slices import held_bytes, plan_slices, prepacking_pays
from jobs.stages.quantize import REFERENCE, onnx_logits, run
from jobs.tiny.models import build

LEVELS = list(VARIANT_FILES)
# Top-1 agreement with PyTorch fp32 over the default prompts (181 positions for llama-a).
# Measured with torch 2.13.0, onnxruntime-genai 0.18.0's builder, onnxruntime 1.31.1:
# fp16 1.000, q8 0.994, q4 0.934, q4f16 0.934, q2 0.757 (optimum-onnx 0.1.0's export gave
# the same but for fp16's max diff); the floors leave room for other CPUs, library patch
# releases and retrained tiny models.
AGREEMENT_FLOORS = {"fp32": 1.0, "fp16": 0.99, "q8": 0.93, "q4": 0.80, "q4f16": 0.80}
# Measured: fp32 4.8e-6, fp16 0.0091 (float16 all through, cache and logits included).
MAX_LOGIT_DIFF_CEILINGS = {"fp32": 1e-4, "fp16": 0.05}
FLOAT16_LEVELS = {"fp16", "q4f16"}
REPO = Path(__file__).resolve().parent.parent


def _spec(**params: Any) -> StageSpec:
    return StageSpec(stage="quantize", recipe="test", key="quantize-test", store="file:///unused", params=params)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    model = build("llama-a")
    out = tmp_path_factory.mktemp("quantize-llama")
    report = run(_spec(variants=LEVELS), {"model": model}, out)
    return out, report, model


# --- layout and report ---------------------------------------------------------------------

def test_layout_is_what_publish_reads(llama: tuple[Path, dict[str, Any], Path]) -> None:
    out, report, model = llama
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (model / name).read_bytes()
    assert not list(out.glob("*.safetensors"))
    expected = {name for level in LEVELS for name in (VARIANT_FILES[level], VARIANT_FILES[level] + "_data")}
    assert {path.name for path in (out / "onnx").iterdir()} == expected
    written = json.loads((out / "quantize.json").read_text())
    assert written == {key: value for key, value in report.items() if key not in ("seconds", "peak_rss_bytes")}
    assert set(report["seconds"]) == {"export", "total", *LEVELS}
    # The builder's process computed the PyTorch reference too: one step, measured.
    assert set(report["peak_rss_bytes"]) == {"stage", "export"}
    assert all(peak > 50 * 2**20 for peak in report["peak_rss_bytes"].values())


def test_genai_config_runs_the_q4_graph_natively(llama: tuple[Path, dict[str, Any], Path]) -> None:
    import onnxruntime_genai as og

    out, report, _ = llama
    assert report["genai_config"] == "q4"
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["decoder"]["filename"] == "onnx/model_q4.onnx"
    prompt = [5, 6, 7, 8]
    eos = set(config["model"]["eos_token_id"])
    expected, _ = _greedy_onnx(decoder_session(out / "onnx" / "model_q4.onnx"), prompt, steps=16, eos=eos)
    assert len(expected) >= 4
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + 16)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    generated = []
    while not generator.is_done():
        generator.generate_next_token()
        generated.append(int(generator.get_next_tokens()[0]))
    assert generated == expected


def test_report(llama: tuple[Path, dict[str, Any], Path]) -> None:
    _, report, _ = llama
    assert report["reference"] == REFERENCE == "pytorch-fp32"
    assert report["onnxruntime"] == ort.__version__
    assert report["exporter"] == {"name": "onnxruntime-genai", "version": "0.18.0"}
    assert report["prompts"] == 8 and report["positions"] > 8 * 5
    assert list(report["variants"]) == LEVELS
    for level, record in report["variants"].items():
        assert record["file"] == f"onnx/{VARIANT_FILES[level]}"
        assert record["kv_cache_dtype"] == ("float16" if level in FLOAT16_LEVELS else "float32")
        assert 0.0 <= record["top1_agreement"] <= 1.0 and record["max_logit_diff"] >= 0.0
        settings = record["quantization"]
        assert settings["float_type"] == ("float16" if level in FLOAT16_LEVELS else "float32")
        assert settings["weight_bits"] == {"q8": 8, "q4": 4, "q4f16": 4, "q2": 2}.get(level)
        if settings["weight_bits"]:
            assert settings["block_size"] == 32 and settings["symmetric"] is True and settings["embeddings"] == "int8-per-row"


@pytest.mark.parametrize("level", list(VARIANT_FILES))
def test_every_variant_loads_with_past_key_values(llama: tuple[Path, dict[str, Any], Path], level: str) -> None:
    out, report, _ = llama
    path = out / "onnx" / VARIANT_FILES[level]
    # onnx.checker cannot judge these graphs: the builder uses ONNX Runtime's own operators
    # (SimplifiedLayerNormalization, GroupQueryAttention, MatMulNBits), which ONNX Runtime,
    # the runtime every client uses, validates when it loads them here.
    session = decoder_session(path)
    past = [f"past_key_values.{layer}.{kind}" for layer in range(2) for kind in ("key", "value")]
    assert sorted(i.name for i in session.get_inputs()) == sorted(["input_ids", "attention_mask", *past])
    assert sorted(o.name for o in session.get_outputs()) == sorted(["logits", *(name.replace("past_key_values", "present") for name in past)])
    float_type = "tensor(float16)" if level in FLOAT16_LEVELS else "tensor(float)"
    assert {i.type for i in session.get_inputs() if i.name.startswith("past_key_values.")} == {float_type}
    # The cache's last dimension is the head size, not a symbol transformers.js would zero.
    assert {tuple(i.shape[1:]) for i in session.get_inputs() if i.name.startswith("past_key_values.")} == {(2, "past_sequence_length", 16)}

    # Every weight lives in the one sibling file the publish stage re-chunks; only constants
    # under a kilobyte (shapes a Reshape reads, norms of a tiny model) stay in the graph.
    graph = onnx.load(str(path), load_external_data=False).graph
    locations = {entry.value for tensor in graph.initializer for entry in tensor.external_data if entry.key == "location"}
    inline = [tensor for tensor in graph.initializer if tensor.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(tensor.raw_data) < 1024 for tensor in inline)
    assert len(inline) < len(graph.initializer)
    assert locations == {VARIANT_FILES[level] + "_data"}
    assert report["variants"][level]["size_bytes"] == path.stat().st_size + path.with_name(path.name + "_data").stat().st_size

    # Two cached steps run and extend the cache.
    tokens, _ = _greedy_onnx(session, [5, 6, 7], steps=2, eos=set())
    assert len(tokens) == 2


def test_agreement_above_floors(llama: tuple[Path, dict[str, Any], Path]) -> None:
    variants = llama[1]["variants"]
    for level, floor in AGREEMENT_FLOORS.items():
        assert variants[level]["top1_agreement"] >= floor, (level, variants[level])
    for level, ceiling in MAX_LOGIT_DIFF_CEILINGS.items():
        assert variants[level]["max_logit_diff"] <= ceiling, (level, variants[level])
    assert variants["q8"]["max_logit_diff"] < variants["q4"]["max_logit_diff"]


def test_sizes_shrink_with_the_level(llama: tuple[Path, dict[str, Any], Path]) -> None:
    sizes = [record["size_bytes"] for record in llama[1]["variants"].values()]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes


def test_fp32_greedy_with_cache_equals_pytorch_generate(llama: tuple[Path, dict[str, Any], Path]) -> None:
    out, _, model_dir = llama
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for prompt in ("A horse is", "for x in range(5):\n", "Anna went to"):
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            expected = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=16, do_sample=False)
        expected_new = expected[0, len(ids):].tolist()
        got, steps_with_past = _greedy_onnx(decoder_session(out / "onnx" / "model.onnx"), ids, steps=16, eos=eos)
        assert got == expected_new, (prompt, tokenizer.decode(got), tokenizer.decode(expected_new))
        assert steps_with_past >= 10  # the cache path was really exercised


def _greedy_onnx(session: ort.InferenceSession, ids: list[int], *, steps: int, eos: set[int]) -> tuple[list[int], int]:
    """Greedy decoding as transformers.js does it: the prompt once, then one token a step
    with the previous step's `present.*` fed back as `past_key_values.*`."""
    feeds_past = empty_past(session)
    outputs = [o.name for o in session.get_outputs()]
    tokens: list[int] = []
    current, past_length, with_past = list(ids), 0, 0
    for _ in range(steps):
        input_ids = np.array([current], dtype=np.int64)
        length = past_length + len(current)
        feeds = decoder_feeds(session, input_ids, np.ones((1, length), dtype=np.int64), feeds_past)
        with_past += past_length > 0
        result = dict(zip(outputs, session.run(None, feeds), strict=True))
        token = int(result["logits"][0, -1].argmax())
        tokens.append(token)
        if token in eos:
            break
        feeds_past = {name.replace("present", "past_key_values"): value for name, value in result.items() if name.startswith("present.")}
        assert all(value.shape[2] == length for value in feeds_past.values())
        current, past_length = [token], length
    return tokens, with_past


# --- the check's memory: slices and the lifted reference -------------------------------------

@pytest.mark.parametrize("level", ["fp32", "q4", "q4f16"])
def test_a_graph_run_in_slices_gives_the_whole_graphs_logits(llama: tuple[Path, dict[str, Any], Path], level: str) -> None:
    out, _, _ = llama
    path = out / "onnx" / VARIANT_FILES[level]
    # A 4-bit graph's slices run from prepacked weights, as a client's session does; a
    # float graph's stay lean (prepacking would copy every float weight).
    assert prepacking_pays(onnx.load(str(path), load_external_data=False).graph) == (level != "fp32")
    _assert_slices_give_the_whole_graphs_logits(path, atol=1e-5 if level == "fp32" else 2e-3)


def _assert_slices_give_the_whole_graphs_logits(path: Path, atol: float) -> None:
    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {tensor.name: held_bytes(tensor) for tensor in graph.initializer}
    budget = max(sizes.values()) // 2
    slices = plan_slices(graph, budget)
    # Every node in a slice, in graph order; a node in two only when it computes from
    # constants alone (it goes with each slice that reads what it makes), so what crosses a
    # cut is activations, never a computed weight (a tied table's Transpose); a slice over
    # budget has one node that reads more alone.
    assert sorted({index for nodes in slices for index in nodes}) == list(range(len(graph.node)))
    assert all(nodes == sorted(nodes) for nodes in slices) and len(slices) >= 4
    computed, constant_outputs = set(sizes), set()
    for node in graph.node:
        if all(not name or name in computed for name in node.input):
            computed.update(node.output)
            constant_outputs.update(node.output)
    for nodes in slices:
        members = [graph.node[index] for index in nodes]
        produced = {name for node in members for name in node.output}
        assert not {name for node in members for name in node.input} - produced & constant_outputs
        readers = [node for node in members if any(name in sizes for name in node.input)]
        read = {name for node in readers for name in node.input if name in sizes}
        assert sum(sizes[name] for name in read) <= budget or len(readers) == 1
    # More prompts than one pass takes (PROMPTS_PER_PASS), of different lengths.
    token_ids = [[5 + prompt, 6, 7 + 2 * prompt, 8, 9][: 1 + prompt % 5] for prompt in range(PROMPTS_PER_PASS + 3)]
    whole = list(onnx_logits(path, token_ids))
    sliced = list(onnx_logits(path, token_ids, weight_budget=budget))
    session = decoder_session(path)
    for ids, expected, got in zip(token_ids, whole, sliced, strict=True):
        alone = session.run(["logits"], decoder_feeds(session, np.array([ids]), np.ones((1, len(ids)), dtype=np.int64), empty_past(session)))[0][0]
        assert got.shape == expected.shape == alone.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
        np.testing.assert_allclose(expected, alone, rtol=0, atol=atol)
        assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_the_reference_lifts_weights_and_puts_the_checkpoints_own_back(llama: tuple[Path, dict[str, Any], Path]) -> None:
    _, _, model_dir = llama
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).float().eval()(input_ids=ids).logits
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
        before = {name: (parameter.data_ptr(), parameter.dtype) for name, parameter in model.named_parameters()}
        lift_to_float32_while_running(model)
        got = model(input_ids=ids).logits
    # The same numbers as the model's float32 copy, and the very tensors loaded (no second copy).
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert {name: (parameter.data_ptr(), parameter.dtype) for name, parameter in model.named_parameters()} == before


# --- a second family, and determinism --------------------------------------------------------

GPT2_LEVELS = LEVELS
GPT2_PROMPTS = ["The old dog finds the", "def add(a, b):", "Anna went to the park with a"]


def _hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted((folder / "onnx").iterdir())}


def test_gpt2_exports_and_two_runs_are_byte_identical(tmp_path: Path) -> None:
    model = build("gpt2-a")
    first = tmp_path / "first"
    report = run(_spec(variants=GPT2_LEVELS, prompts=GPT2_PROMPTS), {"model": model}, first)
    assert report["prompts"] == 3 and list(report["variants"]) == GPT2_LEVELS
    assert report["exporter"]["name"] == "optimum-onnx" and report["genai_config"] is None
    # optimum exports in its own environment: the reference is a step of its own.
    assert set(report["peak_rss_bytes"]) == {"stage", "export", "reference"}
    assert report["variants"]["fp32"]["top1_agreement"] == 1.0
    assert report["variants"]["q4"]["top1_agreement"] >= 0.8, report["variants"]["q4"]
    # GPT-2's Conv1D layers are Gemm nodes and its lm_head reads the tied embedding through a
    # Transpose: all 2 x 4 projections and the lm_head must still become MatMulNBits.
    q4 = onnx.load(str(first / "onnx" / "model_q4.onnx"), load_external_data=False)
    assert sum(node.op_type == "MatMulNBits" for node in q4.graph.node) == 2 * 4 + 1
    assert not any(node.op_type == "Gemm" for node in q4.graph.node)
    # The fp32 graph's Transpose of the tied table stays on its reader's side of every cut.
    _assert_slices_give_the_whole_graphs_logits(first / "onnx" / "model.onnx", atol=1e-5)

    # The second run in a fresh interpreter with another hash seed: nothing may depend on
    # set order, time, temporary paths or the process.
    second = tmp_path / "second"
    script = (
        "import sys, json; from pathlib import Path; from foundry.stagespec import StageSpec; "
        "from jobs.stages.quantize import run; from jobs.tiny.models import build; "
        "spec = StageSpec.model_validate_json(sys.argv[1]); run(spec, {'model': build('gpt2-a')}, Path(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    spec = _spec(variants=GPT2_LEVELS, prompts=GPT2_PROMPTS).model_dump_json()
    subprocess.run([sys.executable, "-c", script, spec, str(second)], check=True, cwd=REPO, env=env, capture_output=True)
    assert _hashes(first) == _hashes(second)


def test_same_process_rerun_into_a_used_folder_is_byte_identical(llama: tuple[Path, dict[str, Any], Path], tmp_path: Path) -> None:
    out, _, model = llama
    again = tmp_path / "again"
    shutil.copytree(out, again)  # stale files of the same names must be replaced, not appended to
    run(_spec(variants=["fp32", "q4"]), {"model": model}, again)
    hashes = _hashes(again)
    reference = _hashes(out)
    assert {name: hashes[name] for name in ("model.onnx", "model.onnx_data", "model_q4.onnx", "model_q4.onnx_data")} == {
        name: reference[name] for name in ("model.onnx", "model.onnx_data", "model_q4.onnx", "model_q4.onnx_data")
    }


def test_q4_alone_is_the_same_bytes_as_q4_beside_fp32(llama: tuple[Path, dict[str, Any], Path], tmp_path: Path) -> None:
    # Alone, q4 is derived from the builder's graph in memory; beside fp32 (the fixture's
    # six variants), from the fp32 variant's file: two sources, one graph.
    out, report, model = llama
    alone = run(_spec(variants=["q4"]), {"model": model}, tmp_path / "alone")
    assert sorted(path.name for path in (tmp_path / "alone" / "onnx").iterdir()) == ["model_q4.onnx", "model_q4.onnx_data"]
    assert {name: digest for name, digest in _hashes(out).items() if name.startswith("model_q4.")} == _hashes(tmp_path / "alone")
    assert alone["variants"]["q4"] == report["variants"]["q4"]


# --- errors a user can cause ---------------------------------------------------------------

def _copy_model(tmp_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    source = build("llama-a")
    folder = tmp_path / "model"
    folder.mkdir()
    for path in source.iterdir():
        if path.name not in without:
            shutil.copyfile(path, folder / path.name)
    return folder


@pytest.mark.parametrize(
    ("without", "message"),
    [
        (("config.json",), "no config.json"),
        (("model.safetensors",), "no weights"),
        (("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"), "no tokenizer files"),
    ],
)
def test_missing_model_files(tmp_path: Path, without: tuple[str, ...], message: str) -> None:
    with pytest.raises(UserError, match=message):
        run(_spec(variants=["q4"]), {"model": _copy_model(tmp_path, without=without)}, tmp_path / "out")


def test_slow_tokenizer_files_get_a_tokenizer_json(tmp_path: Path) -> None:
    source = build("gpt2-a")
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(source / name, model / name)
    # The slow files only (vocab.json + merges.txt), as older GPT-2 checkpoints ship them;
    # transformers 5 no longer writes them, so they come out of tokenizer.json's BPE model.
    bpe = json.loads((source / "tokenizer.json").read_text())["model"]
    (model / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in bpe["merges"]]
    (model / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    shutil.copyfile(source / "tokenizer_config.json", model / "tokenizer_config.json")
    assert (model / "vocab.json").is_file() and not (model / "tokenizer.json").exists()
    report = run(_spec(variants=["fp32"], prompts=["The old dog"]), {"model": model}, tmp_path / "out")
    assert "tokenizer.json (converted)" in report["copied"]
    converted = AutoTokenizer.from_pretrained(tmp_path / "out")
    original = AutoTokenizer.from_pretrained(model)  # what transformers makes of the slow files
    text = "Anna went to the park with a small cat. 12+7=19"
    assert converted(text)["input_ids"] == original(text)["input_ids"]


def test_unsupported_architecture(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UserError, match=r"bert \(BertForMaskedLM\) cannot be exported to ONNX for the web; supported: onnxruntime-genai: .*llama.*; optimum-onnx: .*gpt2") as error:
        run(_spec(variants=["q4"]), {"model": model}, tmp_path / "out")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"variants": ["q3"]}, "unknown variant"),
        ({"variants": []}, "non-empty list"),
        ({"variants": "q4"}, "non-empty list"),
        ({"variants": ["q4"], "prompts": [""]}, "prompts"),
        ({"variants": ["q4"], "trust_remote_code": "yes"}, "trust_remote_code"),
    ],
)
def test_bad_params(tmp_path: Path, params: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        run(_spec(**params), {"model": build("llama-a")}, tmp_path / "out")
