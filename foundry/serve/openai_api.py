"""The OpenAI API's shapes: request bodies checked, response, chunk and error bodies built.

Only the fields Foundry honours are accepted with meaning: `model`, `messages` (chat) or
`prompt` (completions), `max_tokens` (`max_completion_tokens` for chat), `temperature`,
`top_p`, `seed`, `stop`, `stream`, `stream_options.include_usage`, and vLLM's `ignore_eos`
(generate to the limit, for benchmarks). Fields that would change the answer in ways Foundry
cannot honour (`n` > 1, `logprobs`, `tools`) are refused; other fields are ignored, as
OpenAI-compatible servers do. Errors have OpenAI's body: {"error": {message, type, param, code}}.
"""

import functools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from foundry.serve.target import ServedModel

MAX_STOP_SEQUENCES = 4
MAX_SEED = 2**63 - 1  # OpenAI's seed is an int64; the sampler's generator takes seeds >= 0
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def unknown_model(name: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", param="model", code="model_not_found")


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    messages: list[dict[str, str]] | None     # a chat; None for a completion
    prompt: str | None                         # a completion's text; None for a chat
    max_tokens: int | None
    temperature: float | None                  # None: the model's generation_config
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignore_eos: bool

    @property
    def chat(self) -> bool:
        return self.messages is not None


def parse_chat(body: bytes) -> GenerationRequest:
    data = _object(body)
    messages = _required(data, "messages", list)
    if not messages:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1.", param="messages", code="empty_array")
    max_tokens = _optional(data, "max_completion_tokens", int)
    return _request(data, messages=[_message(message, index) for index, message in enumerate(messages)], prompt=None,
                    max_tokens=max_tokens if max_tokens is not None else _optional(data, "max_tokens", int))


def parse_completion(body: bytes) -> GenerationRequest:
    data = _object(body)
    prompt = _required(data, "prompt", (str, list))
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ApiError(400, "Invalid 'prompt': foundry serve takes one prompt, a string (or a list holding one string).", param="prompt", code="invalid_value")
        prompt = _text(prompt[0], "prompt")
    return _request(data, messages=None, prompt=prompt, max_tokens=_optional(data, "max_tokens", int))


def _request(data: dict[str, Any], *, messages: list[dict[str, str]] | None, prompt: str | None, max_tokens: int | None) -> GenerationRequest:
    model = _required(data, "model", str)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got {max_tokens} instead.", param="max_tokens", code="integer_below_min_value")
    temperature = _optional(data, "temperature", float)
    if temperature is not None and not 0 <= temperature <= 2:
        raise ApiError(400, f"Invalid 'temperature': expected a value between 0 and 2, but got {temperature} instead.", param="temperature", code="invalid_value")
    top_p = _optional(data, "top_p", float)
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(400, f"Invalid 'top_p': expected a value above 0 and at most 1, but got {top_p} instead.", param="top_p", code="invalid_value")
    n = _optional(data, "n", int)
    if n not in (None, 1):
        raise ApiError(400, f"Invalid 'n': foundry serve generates one choice per request, got {n}.", param="n", code="invalid_value")
    for name in ("logprobs", "tools", "functions"):
        if data.get(name):
            raise ApiError(400, f"Unsupported parameter: '{name}' is not supported by foundry serve.", param=name, code="unsupported_parameter")
    stream_options = _optional(data, "stream_options", dict) or {}
    return GenerationRequest(
        model=model, messages=messages, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        seed=_seed(data), stop=_stop(data.get("stop")), stream=bool(_optional(data, "stream", bool)),
        include_usage=bool(_field(stream_options, "include_usage", bool, "stream_options.include_usage")),
        ignore_eos=bool(_optional(data, "ignore_eos", bool)),
    )


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, "Invalid request body: JSON nested too deeply.", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. "
                            "The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"Invalid request body: expected a JSON object, but got {_json_type(data)} instead.", code="invalid_type")
    return data


def _message(message: Any, index: int) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"Invalid type for '{where}': expected an object, but got {_json_type(message)} instead.", param=where, code="invalid_type")
    role = _field(message, "role", str, f"{where}.role", required=True)
    if role not in ROLES:
        raise ApiError(400, f"Invalid value: '{role}'. Supported values are: {', '.join(repr(r) for r in ROLES)}.", param=f"{where}.role", code="invalid_value")
    content = _field(message, "content", (str, list), f"{where}.content", required=True)
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
            raise ApiError(400, f"Invalid '{where}.content': foundry serve takes text parts only ({{\"type\": \"text\", \"text\": ...}}).", param=f"{where}.content", code="invalid_value")
        content = "".join(_text(part["text"], f"{where}.content") for part in content)
    return {"role": "system" if role == "developer" else role, "content": content}


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise ApiError(400, f"Invalid type for 'stop': expected a string or an array of strings, but got {_json_type(value)} instead.", param="stop", code="invalid_type")
    for stop in stops:
        _text(stop, "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP_SEQUENCES}, but got {len(stops)} instead.", param="stop", code="array_above_max_length")
    return tuple(stop for stop in stops if stop)


def _required(data: dict[str, Any], name: str, kind: Any) -> Any:
    return _field(data, name, kind, name, required=True)


def _optional(data: dict[str, Any], name: str, kind: Any) -> Any:
    return _field(data, name, kind, name)


def _field(data: dict[str, Any], name: str, kind: Any, param: str, *, required: bool = False) -> Any:
    """data[name] of type `kind` (float accepts integers; bool is never a number), or None when absent."""
    value = data.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    number = float in kinds and isinstance(value, int)
    if (isinstance(value, bool) and bool not in kinds) or not (isinstance(value, kinds) or number):
        expected = " or ".join(_JSON_NAMES[k] for k in kinds)
        raise ApiError(400, f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.", param=param, code="invalid_type")
    if isinstance(value, str):
        _text(value, param)
    return float(value) if number else value


def _text(value: str, param: str) -> str:
    """A string that is text: JSON's escapes can make a lone surrogate (\\ud800), which no
    tokenizer, and no UTF-8 response quoting it, can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(400, f"Invalid '{param}': a lone surrogate (\\u{ord(value[error.start]):04x}) at character {error.start} is not text.", param=param, code="invalid_value") from None
    return value


def _seed(data: dict[str, Any]) -> int | None:
    seed = _optional(data, "seed", int)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"Invalid 'seed': expected a value from 0 to {MAX_SEED}, but got {seed} instead.", param="seed", code="invalid_value")
    return seed


_JSON_NAMES = {str: "a string", int: "an integer", float: "a decimal", bool: "a boolean", list: "an array", dict: "an object"}


def _json_type(value: Any) -> str:
    for kind in (bool, int, float, str, list, dict):
        if isinstance(value, kind):
            return _JSON_NAMES[kind]
    return "null"


# --- responses -----------------------------------------------------------------------------

def model_object(model: ServedModel) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": "foundry", "name": model.name, "variant": model.variant}


def models_list(models: list[ServedModel]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model) for model in models]}


@dataclass(frozen=True)
class Reply:
    """The fixed parts of one request's answer: every chunk and the final body carry them."""
    chat: bool
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, chat: bool, model: str) -> "Reply":
        return cls(chat, model, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, int(time.time()))

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion" + (".chunk" if chunk else "")) if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}

    def body(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
        return {**self._head(False), "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}

    def text_event(self, text: str) -> bytes:
        """The server-sent event of one text delta, `chunk(text)` as bytes, from a frame built
        once per reply: a stream sends one per token, and only the text differs."""
        head, tail = self._text_frame
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    @functools.cached_property
    def _text_frame(self) -> tuple[bytes, bytes]:
        marker = "\x00"
        head, tail = event(self.chunk(marker)).split(json.dumps(marker).encode())
        return head, tail

    def chunk(self, text: str | None = None, *, first: bool = False, finish_reason: str | None = None) -> dict[str, Any]:
        """One streamed event: the assistant's role first (chat), then text, then the finish reason."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return {**self._head(True), "choices": [choice]}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def event(value: dict[str, Any]) -> bytes:
    """One server-sent event carrying `value`."""
    return b"data: " + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
