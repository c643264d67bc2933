"""`foundry serve`: a published tiny model served on loopback, asked through the official
`openai` client and raw HTTP; its files fetched as browsers fetch them; a damaged variant
refused at start. Real ONNX Runtime, real sockets, no mocks."""

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from foundry.errors import UserError
from foundry.stagespec import StageSpec

MODEL_ID, KEY = "tiny-serve", "tiny-serve-key"
HELLO = "Hello! How can I help you today?"  # what the tiny models learned to answer "Hello!"
PROMPTS = ("Hello!", "What is 12+7?", "Reverse the word garden.")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny:llama-a quantized to q4 and published in small chunks into a folder named `models`
    (so its catalogue entry's base URL is /models/<id>/, as on ORION's web root)."""
    from jobs.stages import publish, quantize
    from jobs.tiny.models import build

    work = tmp_path_factory.mktemp("serve")
    quantized, staged = work / "quantized", work / "staged"
    quantized.mkdir()
    staged.mkdir()
    quantize.run(StageSpec(stage="quantize", recipe="s", key="quantize-000000000000", store=str(work / "store"), params={"variants": ["q4"]}), {"model": build("llama-a")}, quantized)
    params = {"to": str(work / "models"), "shard_size_mb": 0.05, "entry": {"id": MODEL_ID, "key": KEY, "name": "Tiny serve"}}
    result = publish.run(StageSpec(stage="publish", recipe="s", key="publish-000000000000", store=str(work / "store"), params=params), {"onnx": quantized}, staged)
    assert result["chunks"]["q4"] >= 3
    return work / "models"


@pytest.fixture(scope="module")
def server(published: Path):  # type: ignore[no-untyped-def]
    from foundry.serve.server import start_server

    running = start_server(published, port=0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(published: Path) -> Any:
    """Plain ONNX Runtime on the same variant: jobs/tools/query.py's generator, as `foundry query` runs it."""
    from jobs.tools.query import OnnxGenerator

    return OnnxGenerator(published / MODEL_ID, "q4")


def expected(reference: Any, messages: list[dict[str, str]] | None = None, prompt: str | None = None, max_tokens: int = 40) -> str:
    from jobs.tools.query import chat_ids, prompt_ids

    ids = chat_ids(reference.tokenizer, messages) if messages is not None else prompt_ids(reference.tokenizer, prompt or "", system=None, raw=True)
    return reference.tokenizer.decode(list(reference.token_ids(ids, max_tokens)), skip_special_tokens=True)


def request(server: Any, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- the API, through the official client ---------------------------------------------------

def test_openai_client_chats_and_streams_what_onnx_runtime_generates(client: Any, reference: Any) -> None:
    for prompt in PROMPTS:
        want = expected(reference, user(prompt))
        answer = client.chat.completions.create(model=MODEL_ID, messages=user(prompt), temperature=0, max_tokens=40)
        assert answer.choices[0].message.content == want
        assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason == "stop"
        chunks = list(client.chat.completions.create(model=MODEL_ID, messages=user(prompt), temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}))
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == want
        assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens > 0
        assert chunks[-1].usage.prompt_tokens == answer.usage.prompt_tokens
    assert expected(reference, user("Hello!")) == HELLO == reference.generate("Hello!", max_new_tokens=40).text


def test_max_tokens_stop_strings_and_seeded_sampling(client: Any, reference: Any) -> None:
    short = client.chat.completions.create(model=KEY, messages=user("Hello!"), temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert HELLO.startswith(short.choices[0].message.content) and short.choices[0].message.content
    cut = client.chat.completions.create(model=MODEL_ID, messages=user("Hello!"), temperature=0, stop=["help", "zzz"])
    assert cut.choices[0].message.content == "Hello! How can I " and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=MODEL_ID, messages=user("Hello!"), temperature=0, stop="help", stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == "Hello! How can I "
    sampled = [client.chat.completions.create(model=MODEL_ID, messages=user("Tell me a story."), temperature=1.5, seed=seed, max_tokens=20).choices[0].message.content
               for seed in (7, 7)]
    assert sampled[0] == sampled[1]
    system = [{"role": "system", "content": "You are terse."}, *user("Hello!")]
    assert client.chat.completions.create(model=MODEL_ID, messages=system, temperature=0).choices[0].message.content == expected(reference, system)


def test_text_streams_token_by_token_as_it_decodes_whole(reference: Any) -> None:
    """Incremental detokenizing: multi-byte characters split over tokens come out whole, never as U+FFFD."""
    from foundry.serve.engine import _Detokenizer, split_at_stop

    text = "Grüße, naïve café 🙂 — 日本語 and   spaces\n\ttabs"
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in reference.tokenizer.decode([token]) for token in ids)     # characters do span tokens
    decoder = _Detokenizer(reference.tokenizer)
    deltas = [decoder.push(token) for token in ids] + [decoder.flush()]
    assert "".join(deltas) == reference.tokenizer.decode(ids, skip_special_tokens=True) and not any("\ufffd" in delta for delta in deltas)
    assert split_at_stop("say STO", ("STOP",), final=False) == ("say ", "STO", False)
    assert split_at_stop("say STOP now", ("STOP", "say"), final=False) == ("", "", True)
    assert split_at_stop("say STO", ("STOP",), final=True) == ("say STO", "", False)


def test_completions_send_the_prompt_without_the_chat_template(client: Any, reference: Any) -> None:
    want = expected(reference, prompt="Hello!", max_tokens=12)
    answer = client.completions.create(model=MODEL_ID, prompt="Hello!", temperature=0, max_tokens=12)
    assert answer.choices[0].text == want and answer.object == "text_completion"
    streamed = client.completions.create(model=MODEL_ID, prompt="Hello!", temperature=0, max_tokens=12, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == want


def test_models_lists_the_catalogue_and_unknown_models_are_404(client: Any, server: Any, published: Path) -> None:
    listed = client.models.list()
    assert [model.id for model in listed.data] == [entry["id"] for entry in json.loads((published / "models.json").read_text()).values()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=user("Hello!"))
    assert raised.value.status_code == 404
    status, _, body = request(server, "POST", "/v1/chat/completions", json.dumps({"model": "no-such-model", "messages": user("Hi")}).encode(), {"Content-Type": "application/json"})
    assert status == 404 and json.loads(body) == {"error": {
        "message": "The model `no-such-model` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    status, _, body = request(server, "GET", "/v1/models/no-such-model")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), [
    ("/v1/chat/completions", b"{not json", 400, None, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None, "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID}).encode(), 400, "messages", "missing_required_parameter"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": "Hello!"}).encode(), 400, "messages", "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": []}).encode(), 400, "messages", "empty_array"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages[0].role", "invalid_value"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": [{"role": "user"}]}).encode(), 400, "messages[0].content", "missing_required_parameter"),
    ("/v1/chat/completions", json.dumps({"messages": user("Hi")}).encode(), 400, "model", "missing_required_parameter"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "max_tokens": "ten"}).encode(), 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "max_tokens": True}).encode(), 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "max_tokens": 0}).encode(), 400, "max_tokens", "integer_below_min_value"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "max_tokens": 100000}).encode(), 400, "messages", "context_length_exceeded"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "temperature": 3}).encode(), 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "stop": [1]}).encode(), 400, "stop", "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "n": 2}).encode(), 400, "n", "invalid_value"),
    ("/v1/completions", json.dumps({"model": MODEL_ID, "prompt": 12}).encode(), 400, "prompt", "invalid_type"),
    ("/v1/embeddings", json.dumps({"model": MODEL_ID, "input": "x"}).encode(), 404, None, None),
    # What an adversarial run found answered 500 with a traceback, and their neighbours.
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "seed": -1}).encode(), 400, "seed", "invalid_value"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "seed": 2**64}).encode(), 400, "seed", "invalid_value"),
    ("/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, 400, None, "invalid_json"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, "invalid_json"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": [{"role": "user", "content": "Hi \\ud800"}]}', 400, "messages[0].content", "invalid_value"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}', 400, "messages[0].content", "invalid_value"),
    ("/v1/chat/completions", b'{"model": "\\ud800", "messages": [{"role": "user", "content": "Hi"}]}', 400, "model", "invalid_value"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": [{"role": "user", "content": "Hi"}], "stop": ["\\ud800"]}', 400, "stop", "invalid_value"),
    ("/v1/completions", b'{"model": "tiny-serve", "prompt": ["\\ud800"]}', 400, "prompt", "invalid_value"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": [{"role": "user", "content": "Hi"}], "top_p": Infinity}', 400, "top_p", "invalid_value"),
    ("/v1/chat/completions", b'{"model": "tiny-serve", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1e999}', 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "max_tokens": 10**30}).encode(), 400, "messages", "context_length_exceeded"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": [["user", "Hi"]]}).encode(), 400, "messages[0]", "invalid_type"),
    ("/v1/chat/completions", json.dumps({"model": MODEL_ID, "messages": user("Hi"), "stream_options": []}).encode(), 400, "stream_options", "invalid_type"),
    ("/v1/chat/completions", "{}".encode("utf-16"), 400, "messages", "missing_required_parameter"),
    ("/v1/chat/completions", b"\xff\xfe\xfd", 400, None, None),
    ("/v1/chat/completions", b"", 400, None, None),
])
def test_malformed_requests_get_openai_error_bodies(server: Any, path: str, body: bytes, status: int, param: str | None, code: str | None) -> None:
    got, headers, data = request(server, "POST", path, body, {"Content-Type": "application/json"})
    error = json.loads(data)["error"]
    assert (got, error["param"], error["code"], error["type"]) == (status, param, code, "invalid_request_error")
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("length", ["²", "¹²", "-1", "1e3"])
def test_a_content_length_that_is_no_ascii_number_is_refused(server: Any, length: str) -> None:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=60) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length.encode("latin-1") + b"\r\n\r\n{}")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411 ") and json.loads(body)["error"]["code"] == "length_required"


def test_fifty_concurrent_requests_all_complete_with_the_right_answers(client: Any, reference: Any, server: Any) -> None:
    answers = {prompt: expected(reference, user(prompt)) for prompt in PROMPTS}
    # A client that leaves in the middle of a long stream must not hold up the others.
    host, port = server.server_address[:2]
    with socket.create_connection((host, port)) as leaving:
        body = json.dumps({"model": MODEL_ID, "messages": user("Hi"), "stream": True, "ignore_eos": True, "max_tokens": 200}).encode()
        leaving.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert leaving.recv(64).startswith(b"HTTP/1.1 200")

    def ask(index: int) -> tuple[str, str]:
        prompt = PROMPTS[index % len(PROMPTS)]
        if index % 2:
            chunks = client.chat.completions.create(model=MODEL_ID, messages=user(prompt), temperature=0, max_tokens=40, stream=True)
            return prompt, "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        return prompt, client.chat.completions.create(model=MODEL_ID, messages=user(prompt), temperature=0, max_tokens=40).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(ask, range(50)))
    assert len(results) == 50
    assert all(text == answers[prompt] for prompt, text in results)


def test_bench_latency_measures_a_running_server(server: Any) -> None:
    result = subprocess.run([sys.executable, "-m", "foundry", "bench-latency", server.url, "--requests", "2", "--tokens", "8", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == MODEL_ID and [sample["tokens"] for sample in report["samples"]] == [8, 8]
    assert all(0 < sample["first_token_s"] <= sample["total_s"] for sample in report["samples"]) and report["summary"]["tokens_per_s_median"] > 0
    unknown = subprocess.run([sys.executable, "-m", "foundry", "bench-latency", server.url, "--model", "nope"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "HTTP 404: The model `nope` does not exist" in unknown.stderr


# --- files, as browsers fetch them ----------------------------------------------------------

def test_files_are_served_with_ranges_validators_and_isolation_headers(server: Any, published: Path) -> None:
    chunk = published / MODEL_ID / "onnx" / "model_q4.onnx_data_1"
    data = chunk.read_bytes()
    for path in (f"/{MODEL_ID}/onnx/model_q4.onnx_data_1", f"/models/{MODEL_ID}/onnx/model_q4.onnx_data_1"):
        status, headers, body = request(server, "GET", path, headers={"Range": "bytes=100-199"})
        assert (status, body, headers["content-range"]) == (206, data[100:200], f"bytes 100-199/{len(data)}")
        assert headers["content-type"] == "application/octet-stream" and headers["accept-ranges"] == "bytes"
        assert headers["cross-origin-opener-policy"] == "same-origin" and headers["cross-origin-embedder-policy"] == "require-corp"
        assert headers["cross-origin-resource-policy"] == "cross-origin"
    assert request(server, "GET", f"/{MODEL_ID}/onnx/model_q4.onnx_data_1", headers={"Range": "bytes=-10"})[2] == data[-10:]
    assert request(server, "GET", f"/{MODEL_ID}/onnx/model_q4.onnx_data_1", headers={"Range": f"bytes={len(data) - 5}-"})[2] == data[-5:]
    status, headers, body = request(server, "GET", f"/{MODEL_ID}/onnx/model_q4.onnx_data_1", headers={"Range": f"bytes={len(data)}-"})
    assert (status, headers["content-range"], body) == (416, f"bytes */{len(data)}", b"")
    status, headers, body = request(server, "GET", f"/{MODEL_ID}/onnx/model_q4.onnx_data_1")
    assert (status, body, headers["content-length"]) == (200, data, str(len(data)))
    assert request(server, "GET", f"/{MODEL_ID}/onnx/model_q4.onnx_data_1", headers={"If-None-Match": headers["etag"]})[0] == 304
    assert request(server, "GET", f"/{MODEL_ID}/onnx/model_q4.onnx_data_1", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})[0] == 200
    head = request(server, "HEAD", f"/{MODEL_ID}/onnx/model_q4.onnx")
    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str((published / MODEL_ID / "onnx" / "model_q4.onnx").stat().st_size)
    status, headers, body = request(server, "GET", "/models.json")
    assert status == 200 and headers["content-type"] == "application/json" and json.loads(body)[KEY]["urls"]["base"] == f"/models/{MODEL_ID}/"
    (published / "probe.wasm").write_bytes(b"\0asm")
    (published / "probe.mjs").write_text("export {};")
    assert request(server, "GET", "/probe.wasm")[1]["content-type"] == "application/wasm"
    assert request(server, "GET", "/probe.mjs")[1]["content-type"].startswith("text/javascript")
    for escape in ("/../models/models.json", "/%2e%2e/models/models.json", f"/{MODEL_ID}/..%2f..%2fmodels.json", "/.models.json.lock", "/etc/passwd"):
        assert request(server, "GET", escape)[0] == 404, escape


def test_the_catalogue_page_and_the_local_transformers_js(server: Any, published: Path) -> None:
    from foundry.web import assets

    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and assets.is_foundry_page(body)
    assert request(server, "GET", "/models")[:2][0] == 301 and request(server, "GET", "/models/")[2] == body
    assert request(server, "GET", "/foundry-catalogue.js")[1]["content-type"] == "text/javascript; charset=utf-8"
    local = assets.local_dirs()
    module = assets.TRANSFORMERS_ROUTE + assets.TRANSFORMERS_MODULE
    if local is None:       # node_modules not installed (`make web`): the routes say so
        assert request(server, "GET", module)[0] == 404 and b"make web" in request(server, "GET", module)[2]
        assert b'content=""' in body
    else:                   # the page is pointed at the local copies, which are served with their types
        assert f'content="{module}"'.encode() in body
        assert request(server, "GET", module)[1]["content-type"] == "text/javascript; charset=utf-8"
        wasm = next(local[assets.ONNXRUNTIME_WEB_ROUTE].glob("*.wasm")).name
        status, headers, data = request(server, "GET", assets.ONNXRUNTIME_WEB_ROUTE + wasm, headers={"Range": "bytes=0-3"})
        assert (status, headers["content-type"], data) == (206, "application/wasm", b"\0asm")


# --- refusing a damaged variant at start ----------------------------------------------------

@pytest.mark.parametrize(("damage", "message"), [
    ("corrupt", "onnx/model_q4.onnx_data_1: sha256 differs from manifest.json (corrupted)"),
    ("missing", "onnx/model_q4.onnx_data_2: missing"),
])
def test_a_damaged_variant_is_refused_at_start_naming_the_file(published: Path, tmp_path: Path, damage: str, message: str) -> None:
    folder = tmp_path / MODEL_ID
    shutil.copytree(published / MODEL_ID, folder)
    if damage == "corrupt":
        chunk = folder / "onnx" / "model_q4.onnx_data_1"
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:
        (folder / "onnx" / "model_q4.onnx_data_2").unlink()
    result = subprocess.run([sys.executable, "-m", "foundry", "serve", str(folder), "--port", "0"], capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and str(folder) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_missing_variant_or_model_is_refused(published: Path) -> None:
    from foundry.serve.target import open_site

    with pytest.raises(UserError, match="no q8 variant .*it has q4"):
        open_site(published, variant="q8")
    with pytest.raises(UserError, match=f"--model nope: not published in .*it holds {MODEL_ID}"):
        open_site(published, model="nope")
    assert open_site(published / MODEL_ID).models[0].id == MODEL_ID


def test_a_file_damaged_after_start_is_refused_not_sent(server: Any, published: Path) -> None:
    """Each manifest-listed file is re-hashed when it changes, before it is sent again."""
    chunk = published / MODEL_ID / "onnx" / "model_q4.onnx_data_2"
    path = f"/models/{MODEL_ID}/onnx/model_q4.onnx_data_2"
    original = chunk.read_bytes()
    assert request(server, "GET", path)[0] == 200
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    chunk.write_bytes(bytes(damaged))
    try:
        status, _, body = request(server, "GET", path, headers={"Range": "bytes=0-9"})
        assert status == 500 and b"model_q4.onnx_data_2: sha256 differs from manifest.json (corrupted)" in body
    finally:
        chunk.write_bytes(original)
    status, _, body = request(server, "GET", path)
    assert (status, body) == (200, original), "restored: hashed again, and sent"
