"""The publish stage, on small ONNX models built here: real onnx, real onnxruntime, no mocks."""

import json
import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from foundry import catalog, manifest
from foundry.errors import UserError
from foundry.stagespec import StageInput, StageSpec
from jobs.onnx.external_data import (
    ALIGNMENT,
    MIB,
    all_tensors,
    check_chunks,
    chunk_name,
    external_info,
    plan_chunks,
    rechunk,
    uses_external_data,
)
from jobs.stages import publish

SHARD_MB = 0.25
SHARD = int(SHARD_MB * MIB)                        # 262144 bytes
# name -> shape of float32 weights: 64 KiB, exactly one shard, two shards (oversized), 128 KiB
WEIGHTS = {"w1": (64, 256), "w2": (256, 256), "w3": (256, 512), "w4": (512, 64)}
BIAS = (64,)                                        # 256 bytes: stays inline


def make_model(*, kv_fp16: bool = False, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array((rng.standard_normal(shape) / 16).astype(np.float32), name) for name, shape in WEIGHTS.items()]
    initializers.append(numpy_helper.from_array(rng.standard_normal(BIAS).astype(np.float32), "bias"))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w3"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w4"], ["h4"]),
        helper.make_node("Add", ["h4", "bias"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])]
    if kv_fp16:
        inputs.append(helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT16, [1, 2, "past", 4]))
        outputs.append(helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT16, [1, 2, "past", 4]))
        nodes.append(helper.make_node("Identity", ["past_key_values.0.key"], ["present.0.key"]))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + "_data", size_threshold=1024)
    return path


def run_model(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x": x}
    if any(item.name == "past_key_values.0.key" for item in session.get_inputs()):
        feeds["past_key_values.0.key"] = np.zeros((1, 2, 3, 4), dtype=np.float16)
    return session.run(["logits"], feeds)[0]


def tensor_arrays(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load_model(str(path), load_external_data=True)
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


@pytest.fixture
def quantized(tmp_path: Path) -> Path:
    """A folder shaped like the quantize stage's output, with two variants."""
    folder = tmp_path / "quantize"
    save_external(make_model(seed=1), folder / "onnx" / "model_q4.onnx")
    save_external(make_model(seed=2, kv_fp16=True), folder / "onnx" / "model_fp16.onnx")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 64, "transformers.js_config": {"keep_me": 1}}))
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 16}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "quantize.json").write_text(json.dumps({"variants": {
        "q4": {"file": "onnx/model_q4.onnx", "size_bytes": 1, "top1_agreement": 0.97, "max_logit_diff": 0.5},
        "fp16": {"file": "onnx/model_fp16.onnx", "size_bytes": 1, "top1_agreement": 1.0, "max_logit_diff": 0.01},
    }}))
    return folder


def make_spec(target: Path, **params) -> StageSpec:
    base = {
        "to": str(target), "shard_size_mb": SHARD_MB, "entry": {"id": "tiny-chat-q4", "name": "Tiny Chat"},
        "recipe_hash": "abc123", "fusion": {"method": "slerp", "sources": ["org/a", "org/b"]}, "variants": ["fp16", "q4", "q2"],
    }
    base.update(params)
    return StageSpec(stage="publish", recipe="tiny-chat", key="publish-0123456789ab", store="file:///unused",
                     inputs={"onnx": StageInput(key="quantize-0123456789ab")}, params=base)


def publish_once(quantized: Path, target: Path, tmp_path: Path, **params) -> dict:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    out.mkdir()
    return publish.run(make_spec(target, **params), {"onnx": quantized}, out)


# --- re-chunking -----------------------------------------------------------------------------

def test_plan_packs_in_order_never_splits_and_isolates_oversized():
    plan = plan_chunks([("a", 100), ("b", 100), ("c", 300), ("d", 50), ("e", 60), ("f", 200)], 256, align_threshold=10**9)
    assert [(p.name, p.chunk, p.offset) for p in plan.placements] == [
        ("a", 0, 0), ("b", 0, 100), ("c", 1, 0), ("d", 2, 0), ("e", 2, 50), ("f", 3, 0)]
    assert plan.chunk_sizes == [200, 300, 110, 200]
    assert plan.oversized == [("c", 300)]


def test_plan_aligns_large_tensors_and_counts_padding():
    big = 2 * MIB
    plan = plan_chunks([("small", 10), ("big", big), ("big2", big)], 5 * MIB)
    assert [(p.chunk, p.offset) for p in plan.placements] == [(0, 0), (0, ALIGNMENT), (0, ALIGNMENT + big)]
    assert all(p.offset % ALIGNMENT == 0 for p in plan.placements[1:])
    # the padding would push the second big tensor over the shard: it starts a new chunk
    plan = plan_chunks([("small", 10), ("big", big), ("big2", big)], 2 * MIB + ALIGNMENT + MIB)
    assert [(p.chunk, p.offset) for p in plan.placements] == [(0, 0), (0, ALIGNMENT), (1, 0)]
    assert max(plan.chunk_sizes) <= 2 * MIB + ALIGNMENT + MIB


def test_rechunk_respects_shard_size_and_warns_about_oversized(tmp_path, caplog):
    source = save_external(make_model(), tmp_path / "src" / "model_q4.onnx")
    with caplog.at_level(logging.WARNING, logger="foundry.publish"):
        result = rechunk(source, tmp_path / "dst", SHARD)
    assert [path.name for path in result.chunks] == [chunk_name("model_q4.onnx", i) for i in range(4)]
    assert [path.name for path in result.chunks][:3] == ["model_q4.onnx_data", "model_q4.onnx_data_1", "model_q4.onnx_data_2"]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "w3" in warnings[0] and str(256 * 512 * 4) in warnings[0]
    assert result.oversized == (("w3", 256 * 512 * 4),)

    model = onnx.load_model(str(result.model_file), load_external_data=False)
    by_chunk: dict[str, list[str]] = {}
    for tensor, _ in all_tensors(model):
        if tensor.name == "bias":
            assert not uses_external_data(tensor), "tiny initializers stay inline, as onnx saves them"
            continue
        info = external_info(tensor)
        assert "/" not in info["location"], "transformers.js passes chunks by bare file name"
        chunk = result.model_file.parent / info["location"]
        assert int(info["offset"]) + int(info["length"]) <= chunk.stat().st_size
        assert int(info["length"]) == np.prod(WEIGHTS[tensor.name]) * 4, "a tensor is never split"
        by_chunk.setdefault(info["location"], []).append(tensor.name)
    for path in result.chunks:
        size = path.stat().st_size
        assert size <= SHARD or by_chunk[path.name] == ["w3"], f"{path.name} is {size} bytes"
    assert check_chunks(result.model_file) == []
    assert not (tmp_path / "dst" / "model_q4.onnx_data_4").exists()


def test_rechunked_model_loads_in_onnxruntime_with_identical_outputs(tmp_path):
    source = save_external(make_model(seed=7), tmp_path / "src" / "model.onnx")
    result = rechunk(source, tmp_path / "dst", SHARD)
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    before, after = run_model(source, x), run_model(result.model_file, x)
    assert np.array_equal(before, after)
    original, rewritten = tensor_arrays(source), tensor_arrays(result.model_file)
    assert original.keys() == rewritten.keys()
    assert all(np.array_equal(original[name], rewritten[name]) for name in original)


def test_tensors_over_one_mib_are_aligned_and_still_load(tmp_path):
    rng = np.random.default_rng(11)
    shapes = {"a": (64, 7), "big1": (7, 40000), "big2": (40000, 8)}          # 1.1 MB tensors after a small one
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in shapes.items()]
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h1"]), helper.make_node("MatMul", ["h1", "big1"], ["h2"]),
             helper.make_node("MatMul", ["h2", "big2"], ["logits"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = save_external(model, tmp_path / "src" / "model.onnx")
    result = rechunk(source, tmp_path / "dst", 4 * MIB)
    assert len(result.chunks) == 1
    offsets = {tensor.name: int(external_info(tensor)["offset"]) for tensor, _ in all_tensors(onnx.load_model(str(result.model_file), load_external_data=False))}
    assert offsets["a"] == 0 and offsets["big1"] == ALIGNMENT and offsets["big2"] % ALIGNMENT == 0
    x = rng.standard_normal((1, 64)).astype(np.float32)
    assert np.array_equal(run_model(source, x), run_model(result.model_file, x))
    assert check_chunks(result.model_file) == []


def test_rechunk_moves_large_inline_initializers_out(tmp_path):
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(make_model(seed=5), str(source))          # every weight inline
    result = rechunk(source, tmp_path / "dst", SHARD)
    assert result.external_tensors == 4 and result.inline_tensors == 1 and len(result.chunks) == 4
    assert result.model_file.stat().st_size < 4096
    x = np.ones((1, 64), dtype=np.float32)
    assert np.array_equal(run_model(source, x), run_model(result.model_file, x))


def test_rechunk_with_one_big_shard_gives_one_chunk(tmp_path):
    source = save_external(make_model(), tmp_path / "src" / "model_q4.onnx")
    result = rechunk(source, tmp_path / "dst", 100 * MIB)
    assert [path.name for path in result.chunks] == ["model_q4.onnx_data"]
    x = np.ones((2, 64), dtype=np.float32)
    assert np.array_equal(run_model(source, x), run_model(result.model_file, x))


# --- the stage ------------------------------------------------------------------------------

def test_publish_lays_out_the_transformers_js_folder(quantized, tmp_path, caplog):
    to = tmp_path / "site" / "models"
    with caplog.at_level(logging.WARNING, logger="foundry.publish"):
        summary = publish_once(quantized, to, tmp_path)
    assert any("q2" in record.getMessage() for record in caplog.records), "a variant quantize skipped is reported"
    folder = to / "tiny-chat-q4"
    assert summary["published"] == str(folder) and summary["entry_key"] == "tiny-chat-q4"
    assert summary["chunks"] == {"fp16": 4, "q4": 4}
    names = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    expected_onnx = [f"onnx/{base}{suffix}" for base in ("model_fp16.onnx", "model_q4.onnx") for suffix in ("", "_data", "_data_1", "_data_2", "_data_3")]
    assert names == sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                            "special_tokens_map.json", "manifest.json", *expected_onnx])
    assert summary["files"] == len(names)
    assert summary["size_bytes"] == sum((folder / name).stat().st_size for name in names)

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["transformers.js_config"] == {
        "keep_me": 1,
        "use_external_data_format": {"model_fp16.onnx": 4, "model_q4.onnx": 4},
        "dtype": "q4",
        "kv_cache_dtype": {"fp16": "float16"},
    }
    assert "chat_template" in json.loads((folder / "tokenizer_config.json").read_text())

    # every published variant loads from the published folder and computes what it did before
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    for name in ("model_q4.onnx", "model_fp16.onnx"):
        assert np.array_equal(run_model(quantized / "onnx" / name, x), run_model(folder / "onnx" / name, x))

    # the staging folder holds the same layout, and no temporary folder is left beside the model
    assert manifest.verify(tmp_path / "out-0") == []
    assert sorted(path.name for path in to.iterdir()) == ["foundry-catalogue.css", "foundry-catalogue.js", "index.html", "models.json", "models.json.lock", "tiny-chat-q4"]


def test_manifest_verifies_and_names_the_corrupted_or_missing_file(quantized, tmp_path):
    to = tmp_path / "models"
    publish_once(quantized, to, tmp_path)
    folder = to / "tiny-chat-q4"
    assert manifest.verify(folder) == []
    record = manifest.read(folder)
    assert record["recipe_hash"] == "abc123"
    assert record["variants"]["q4"]["top1_agreement"] == 0.97
    assert record["variants"]["q4"]["max_logit_diff"] == 0.5
    assert record["variants"]["q4"]["chunks"] == ["model_q4.onnx_data", "model_q4.onnx_data_1", "model_q4.onnx_data_2", "model_q4.onnx_data_3"]
    q4_bytes = sum((folder / "onnx" / name).stat().st_size for name in ["model_q4.onnx", *record["variants"]["q4"]["chunks"]])
    assert record["variants"]["q4"]["size_bytes"] == q4_bytes
    listed = {entry["path"] for entry in record["files"]}
    assert listed == {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()} - {"manifest.json"}

    chunk = folder / "onnx" / "model_q4.onnx_data_2"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    (folder / "onnx" / "model_fp16.onnx_data_1").unlink()
    problems = manifest.verify(folder)
    assert len(problems) == 2
    assert any(problem.startswith("onnx/model_q4.onnx_data_2:") and "corrupted" in problem for problem in problems)
    assert any(problem.startswith("onnx/model_fp16.onnx_data_1:") and "missing" in problem for problem in problems)

    (folder / "stray.bin").write_bytes(b"x")
    assert "stray.bin: not listed in manifest.json" in manifest.verify(folder)
    assert "stray.bin: not listed in manifest.json" not in manifest.verify(folder, strict=False)
    (folder / "manifest.json").unlink()
    assert manifest.verify(folder) == [f"manifest.json: missing from {folder}"]


def test_catalog_entry_and_other_entries_kept(quantized, tmp_path):
    to = tmp_path / "models"
    to.mkdir()
    other = {"my-custom-agent": {"id": "my-model-v1-q4", "name": "My Custom Model", "size_mb": 1200, "urls": {"base": "/models/my-model-v1-q4/"}}}
    (to / "models.json").write_text(json.dumps(other, indent=2))
    summary = publish_once(quantized, to, tmp_path, entry={"id": "tiny-chat-q4", "key": "dev-agent", "name": "Tiny Chat", "description": "test"})
    models = json.loads((to / "models.json").read_text())
    assert list(models) == ["my-custom-agent", "dev-agent"]
    assert models["my-custom-agent"] == other["my-custom-agent"]
    entry = models["dev-agent"]
    assert summary["entry_key"] == "dev-agent" and summary["catalog"] == str(to / "models.json")
    assert entry["id"] == "tiny-chat-q4" and entry["name"] == "Tiny Chat" and entry["description"] == "test"
    assert entry["urls"] == {"base": "/models/tiny-chat-q4/"}
    assert entry["metadata"]["fusion"]["method"] == "slerp"
    assert entry["metadata"]["fusion"]["sources"] == ["org/a", "org/b"]
    assert entry["metadata"]["fusion"]["created_by"].startswith("Foundry ")
    assert entry["recipe_hash"] == "abc123" and entry["published"].endswith("Z")
    assert entry["default_variant"] == "q4"
    q4 = entry["variants"]["q4"]
    folder = to / "tiny-chat-q4"
    assert q4["file"] == "onnx/model_q4.onnx" and q4["chunks"] == 4 and q4["top1_agreement"] == 0.97
    assert q4["sha256"] == manifest.read(folder)["variants"]["q4"]["sha256"]
    assert entry["size_mb"] == q4["size_mb"] == round(
        (manifest.read(folder)["variants"]["q4"]["size_bytes"] + sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != "manifest.json")) / MIB, 1)
    assert set(entry["variants"]) == {"q4", "fp16"}
    # Where each runs, for web clients to choose without probing: fp16 needs shader-f16 on WebGPU.
    assert q4["devices"] == {"webgpu": {"features": []}, "wasm": {"features": []}}
    assert entry["variants"]["fp16"]["devices"] == {"webgpu": {"features": ["shader-f16"]}, "wasm": {"features": []}}


def test_republish_replaces_the_folder_whole(quantized, tmp_path):
    to = tmp_path / "models"
    publish_once(quantized, to, tmp_path)
    stale = to / "tiny-chat-q4" / "onnx" / "model_q8_leftover.onnx"
    stale.write_bytes(b"old")
    publish_once(quantized, to, tmp_path, shard_size_mb=10)
    assert not stale.exists()
    assert manifest.verify(to / "tiny-chat-q4") == []
    config = json.loads((to / "tiny-chat-q4" / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"] == {"model_fp16.onnx": 1, "model_q4.onnx": 1}
    assert sorted(path.name for path in to.iterdir()) == ["foundry-catalogue.css", "foundry-catalogue.js", "index.html", "models.json", "models.json.lock", "tiny-chat-q4"]
    assert list(json.loads((to / "models.json").read_text())) == ["tiny-chat-q4"]


def test_concurrent_publishers_keep_every_entry(quantized, tmp_path):
    to = tmp_path / "models"
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            out = tmp_path / f"concurrent-{index}"
            out.mkdir()
            publish.run(make_spec(to, entry={"id": f"model-{index}"}, variants=["q4"]), {"onnx": quantized}, out)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    models = json.loads((to / "models.json").read_text())
    assert sorted(models) == sorted(f"model-{index}" for index in range(6))
    assert all(manifest.verify(to / f"model-{index}") == [] for index in range(6))


def test_invalid_catalog_is_refused_before_anything_is_published(quantized, tmp_path):
    to = tmp_path / "models"
    to.mkdir()
    (to / "models.json").write_text("{not json")
    with pytest.raises(UserError, match="models.json"):
        publish_once(quantized, to, tmp_path)
    assert not (to / "tiny-chat-q4").exists()
    assert (to / "models.json").read_text() == "{not json"


@pytest.mark.parametrize("model_id", ["../escape", "a/b", ".hidden", "x..y", "back\\slash"])
def test_ids_that_would_escape_are_refused(quantized, tmp_path, model_id):
    with pytest.raises(UserError, match="publish.entry.id"):
        publish_once(quantized, tmp_path / "models", tmp_path, entry={"id": model_id})
    assert not (tmp_path / "escape").exists()


def test_file_url_and_defaults(quantized, tmp_path):
    site = tmp_path / "www"
    summary = publish_once(quantized, site, tmp_path, to=(site / "llm").as_uri(), catalog=str(site / "models.json"),
                           entry=None, fusion=None, variants=None)
    assert summary["id"] == "tiny-chat" and summary["entry_key"] == "tiny-chat"     # id defaults to the recipe name
    models = json.loads((site / "models.json").read_text())
    assert models["tiny-chat"]["urls"]["base"] == "llm/tiny-chat/"                  # relative to the catalogue's folder
    assert models["tiny-chat"]["name"] == "tiny-chat"
    assert models["tiny-chat"]["metadata"] == {"created_by": models["tiny-chat"]["metadata"]["created_by"]}
    assert set(models["tiny-chat"]["variants"]) == {"q4", "fp16"}                    # all that quantize built


def test_missing_variant_listed_by_quantize_is_an_error(quantized, tmp_path):
    (quantized / "onnx" / "model_fp16.onnx").unlink()
    with pytest.raises(UserError, match="fp16"):
        publish_once(quantized, tmp_path / "models", tmp_path)


def test_too_many_chunks_for_transformers_js_is_refused(quantized, tmp_path):
    # 101 initializers of 2 KiB with a 2 KiB shard: 101 chunks, one more than transformers.js loads
    names = [f"w{index}" for index in range(101)]
    initializers = [numpy_helper.from_array(np.full(512, index, dtype=np.float32), name) for index, name in enumerate(names)]
    nodes = [helper.make_node("Add", ["x" if index == 0 else names[index - 1] + "_out", name], [name + "_out"]) for index, name in enumerate(names)]
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])],
                              [helper.make_tensor_value_info(names[-1] + "_out", TensorProto.FLOAT, [512])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (quantized / "onnx" / "model_q4.onnx_data").unlink()
    save_external(model, quantized / "onnx" / "model_q4.onnx")
    with pytest.raises(UserError, match="101 chunks .* at most 100"):
        publish_once(quantized, tmp_path / "models", tmp_path, shard_size_mb=2048 / MIB, variants=["q4"])
    assert not list((tmp_path / "out-0" / "onnx").glob("model_q4.onnx_data*")), "refused before writing"


def test_chat_template_from_jinja_is_folded_into_tokenizer_config(quantized, tmp_path):
    (quantized / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (quantized / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    publish_once(quantized, tmp_path / "models", tmp_path)
    config = json.loads((tmp_path / "models" / "tiny-chat-q4" / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{{ bos_token }}") and config["eos_token"] == "</s>"


def test_catalog_module_stays_light():
    import subprocess
    import sys

    code = "import sys, foundry.catalog, foundry.manifest; print(any(m in sys.modules for m in ('onnx', 'torch', 'numpy')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert result.stdout.strip() == "False"


def test_bad_shard_size_is_a_user_error(quantized, tmp_path):
    for value in (0, -1, "100", True):
        with pytest.raises(UserError, match="shard_size_mb"):
            publish_once(quantized, tmp_path / "models", tmp_path, shard_size_mb=value)


def test_the_stage_is_reachable_by_name():
    from jobs.entry import stage_function

    assert stage_function("publish") is publish.run
    assert catalog.MAX_EXTERNAL_DATA_CHUNKS == 100
