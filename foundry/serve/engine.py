"""Generation behind the API: a model's requests take turns, and each streams its text.

A request runs jobs/tools/query.py's OnnxGenerator, the generator `foundry query` uses, so the
server answers what the command line and a browser answer. Requests to one model take turns
in arrival order (a ticket lock): ONNX Runtime already spreads one request over every core,
so running two at once would only make both slower, and a burst of requests queues instead
of oversubscribing the machine. The request's own thread runs the model and turns each token
into text (incremental detokenizing over a window of the last tokens, never a partial UTF-8
character; stop strings held back until they cannot match any more) and writes it out, with
no hand-over to another thread per token. A request that ends early (a stop string, a client
gone) closes its stream, which ends the generation and passes the turn on.
"""

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from foundry.serve.openai_api import ApiError, GenerationRequest
from foundry.serve.target import ServedModel

DEFAULT_CONTEXT = 2048          # when config.json names no max_position_embeddings


class Turns:
    """A lock granted in the order it was asked for, so that no request waits behind later ones."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = self._serving = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self._changed:
            ticket, self._issued = self._issued, self._issued + 1
            self._changed.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._changed:
                self._serving += 1
                self._changed.notify_all()


class Model:
    """One served model: its tokenizer and ONNX Runtime session, and the turns of its requests."""

    def __init__(self, served: ServedModel) -> None:
        from jobs.tools.query import OnnxGenerator

        self.served = served
        self.generator = OnnxGenerator(served.folder, served.variant)
        self.tokenizer = self.generator.tokenizer
        config = _read_json(served.folder / "config.json")
        self.context = int(config.get("max_position_embeddings") or config.get("n_positions") or DEFAULT_CONTEXT)
        self.sampling = _read_json(served.folder / "generation_config.json")
        self.turns = Turns()

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids: a chat through the model's template, a completion's text as is."""
        from jinja2.exceptions import TemplateError

        from jobs.tools.query import chat_ids, prompt_ids

        if request.messages is None:
            return prompt_ids(self.tokenizer, request.prompt or "", system=None, raw=True)
        if not self.tokenizer.chat_template:
            raise ApiError(400, f"The model `{self.served.id}` has no chat template; send a prompt to /v1/completions instead.", param="messages")
        try:
            return chat_ids(self.tokenizer, request.messages)
        except TemplateError as error:
            raise ApiError(400, f"The chat template of `{self.served.id}` refused these messages: {error}", param="messages") from None

    def generate(self, request: GenerationRequest, ids: list[int]) -> "TextStream":
        """The request's answer, checked against the context; it runs as it is read."""
        from jobs.tools.query import sampler

        room = self.context - len(ids)
        max_tokens = request.max_tokens if request.max_tokens is not None else room
        if room < 1 or max_tokens > room:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens. However, you requested {len(ids) + max(max_tokens, 0)} tokens "
                                f"({len(ids)} in the prompt, {max(max_tokens, 0)} in the completion). Please reduce the length of the prompt or completion.",
                           param="messages" if request.chat else "prompt", code="context_length_exceeded")
        sample = bool(self.sampling.get("do_sample"))
        temperature = request.temperature if request.temperature is not None else float(self.sampling.get("temperature") or 1.0) if sample else 0.0
        top_p = request.top_p if request.top_p is not None else float(self.sampling.get("top_p") or 1.0) if sample else 1.0
        return TextStream(self, ids, max_tokens, sampler(temperature, top_p, request.seed), set() if request.ignore_eos else None, request.stop)


class TextStream:
    """One request's answer as it comes: iterate (once) for text deltas; then `finish_reason`
    ("stop": a stop token or string, "length": max_tokens) and `completion_tokens`."""

    def __init__(self, model: Model, ids: list[int], max_tokens: int, pick: Callable[[Any], int] | None, stop_ids: set[int] | None, stops: tuple[str, ...]) -> None:
        self._model, self._ids, self._max_tokens, self._pick, self._stop_ids, self._stops = model, ids, max_tokens, pick, stop_ids, stops
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        with self._model.turns.turn():
            tokens = self._model.generator.token_ids(self._ids, self._max_tokens, pick=self._pick, stops=self._stop_ids)
            with contextlib.closing(tokens):
                yield from self._deltas(tokens)

    def _deltas(self, tokens: Iterator[int]) -> Iterator[str]:
        decoder, pending = _Detokenizer(self._model.tokenizer), ""
        for token in tokens:
            self.completion_tokens += 1
            send, pending, stopped = split_at_stop(pending + decoder.push(token), self._stops, final=False)
            if send:
                yield send
            if stopped:
                self.finish_reason = "stop"
                return
        send, _, stopped = split_at_stop(pending + decoder.flush(), self._stops, final=True)
        if send:
            yield send
        self.finish_reason = "stop" if stopped or self.completion_tokens < self._max_tokens else "length"


def split_at_stop(text: str, stops: tuple[str, ...], *, final: bool) -> tuple[str, str, bool]:
    """(what can be sent now, what is held back, whether a stop string ended the answer).

    Text before the first stop string is sent and the rest dropped; otherwise the longest end
    of `text` that begins some stop string waits for the next delta (unless `final`)."""
    hits = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    if hits:
        return text[: min(hits)], "", True
    if final:
        return text, "", False
    keep = max((size for stop in stops for size in range(1, len(stop)) if text.endswith(stop[:size])), default=0)
    return text[: len(text) - keep], text[len(text) - keep:], False


class _Detokenizer:
    """The text of a growing list of tokens, one delta per token in constant time: each step
    decodes a short window of the last tokens twice (as text-generation-inference and vLLM
    do), so a token whose text depends on its neighbours comes out right; a window ending in
    an incomplete UTF-8 sequence waits for the next token."""

    def __init__(self, tokenizer: Any) -> None:
        # A fast tokenizer that cleans up no spaces decodes in its Rust backend exactly as
        # tokenizer.decode does, in a fifth of the time: this runs twice per token.
        fast = getattr(tokenizer, "is_fast", False) and not getattr(tokenizer, "clean_up_tokenization_spaces", True)
        self._decode = tokenizer.backend_tokenizer.decode if fast else tokenizer.decode
        self._ids: list[int] = []
        self._prefix = self._read = 0

    def push(self, token: int) -> str:
        self._ids.append(token)
        before, after = self._window()
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        before, after = self._window()
        return after[len(before):]

    def _window(self) -> tuple[str, str]:
        return self._decode(self._ids[self._prefix:self._read], skip_special_tokens=True), self._decode(self._ids[self._prefix:], skip_special_tokens=True)


def _read_json(path: Any) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
