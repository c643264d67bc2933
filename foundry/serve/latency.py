"""The client of `foundry bench-latency`: first-token latency and tokens per second, as a
streaming client sees them, over HTTP against any OpenAI-compatible server.

Each request is a greedy chat completion, streamed, with `ignore_eos` so that it generates
exactly the tokens asked for (a model that says goodbye early would otherwise make a short,
noisy measurement), and `stream_options.include_usage`, so that the token count is the
server's. One warm-up request runs first and is not counted. Stdlib only (http.client).
"""

import http.client
import json
import statistics
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from foundry.errors import UserError

DEFAULT_PROMPT = "Tell me a long story about a lighthouse keeper."


@dataclass(frozen=True)
class Sample:
    first_token_s: float      # request sent -> first text delta received
    tokens: int               # completion tokens, as the server counted them
    total_s: float            # request sent -> [DONE]
    tokens_per_s: float       # tokens / total_s: what a client gets, prefill included


def measure(url: str, *, model: str | None, requests: int, tokens: int, prompt: str = DEFAULT_PROMPT) -> dict[str, Any]:
    """`requests` timed streaming requests (after one warm-up) against the server at `url`."""
    base = url.rstrip("/").removesuffix("/v1")
    model = model or _first_model(base)
    stream_once(base, model, tokens, prompt)
    samples = [stream_once(base, model, tokens, prompt) for _ in range(requests)]
    return {"url": base, "model": model, "requests": requests, "max_tokens": tokens, "summary": summarize(samples), "samples": [asdict(sample) for sample in samples]}


def summarize(samples: list[Sample]) -> dict[str, float]:
    firsts = sorted(sample.first_token_s for sample in samples)
    return {
        "first_token_median_s": statistics.median(firsts),
        "first_token_p90_s": firsts[min(len(firsts) - 1, int(0.9 * len(firsts)))],
        "tokens_per_s_median": statistics.median(sample.tokens_per_s for sample in samples),
        "tokens_median": statistics.median(sample.tokens for sample in samples),
    }


def _connection(base: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{base}: expected an http:// or https:// URL of a server")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=600), parts.path.rstrip("/")


def _first_model(base: str) -> str:
    connection, prefix = _connection(base)
    try:
        connection.request("GET", f"{prefix}/v1/models")
        response = connection.getresponse()
        document = _json(response.read(), base)
    except OSError as error:
        raise UserError(f"{base}: no server answers there ({error}); start one with `foundry serve TARGET`") from None
    finally:
        connection.close()
    models = [entry.get("id") for entry in document.get("data") or [] if isinstance(entry, dict)]
    if response.status != 200 or not models:
        raise UserError(f"{base}/v1/models: lists no model (HTTP {response.status}); give --model")
    return str(models[0])


def stream_once(base: str, model: str, tokens: int, prompt: str = DEFAULT_PROMPT) -> Sample:
    """One timed request: `tokens` tokens streamed from the server at `base` (no /v1)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    connection, prefix = _connection(base)
    try:
        started = time.perf_counter()
        connection.request("POST", f"{prefix}/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            message = (_json(response.read(), base).get("error") or {}).get("message")
            raise UserError(f"{base}/v1/chat/completions: HTTP {response.status}: {message}")
        first, count = None, None
        for payload in _events(response):
            if payload == b"[DONE]":
                break
            # Parsing every event would make this client compete with the server for the CPU
            # (on a small machine, with ONNX Runtime's threads): only the first text and the
            # closing events are decoded.
            if first is not None and b'"usage"' not in payload and b'"error"' not in payload:
                continue
            event = _json(payload, base)
            if "error" in event:
                raise UserError(f"{base}: the stream failed: {event['error'].get('message')}")
            if first is None and any((choice.get("delta") or {}).get("content") for choice in event.get("choices") or []):
                first = time.perf_counter()
            if event.get("usage"):
                count = int(event["usage"]["completion_tokens"])
        total = time.perf_counter() - started
    except OSError as error:
        raise UserError(f"{base}: the request failed ({error})") from None
    finally:
        connection.close()
    if first is None or count is None:
        raise UserError(f"{base}: the stream ended without text or without usage; is it an OpenAI-compatible server with stream_options?")
    return Sample(first - started, count, total, count / total)


def _events(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The data of each server-sent event, as soon as it arrives (read1: whatever is there)."""
    buffer = b""
    while chunk := response.read1(65536):
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()


def _json(data: bytes, base: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise UserError(f"{base}: answered something that is not JSON: {data[:80]!r}") from None
    return value if isinstance(value, dict) else {}
