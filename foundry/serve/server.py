"""The HTTP server of `foundry serve`: static files and the OpenAI API on one port.

Python's own ThreadingHTTPServer, on purpose: the submitter's dependencies stay as they are
(no web framework, no ASGI server, nothing to pin for it), and a thread per connection is all
this needs, since the model work is queued per model anyway (engine.py). It speaks HTTP/1.1
with keep-alive; streams use chunked transfer encoding.

Every response carries the headers a browser needs to load a model from here, from this
origin or another: COOP same-origin and COEP require-corp (cross-origin isolation, which
threaded WebAssembly needs), CORP cross-origin, and CORS.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from foundry import __version__
from foundry.errors import UserError
from foundry.serve import files, openai_api
from foundry.serve.openai_api import ApiError, GenerationRequest, Reply
from foundry.serve.target import Site, open_site

LOG = logging.getLogger("foundry.serve")
MAX_BODY_BYTES = 4 * 1024 * 1024
INDEX = "index.html"
BROWSER_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag",
    "X-Content-Type-Options": "nosniff",
}


class FoundryServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128          # a burst of clients queues in the kernel instead of being refused

    def __init__(self, address: tuple[str, int], site: Site) -> None:
        super().__init__(address, Handler)
        self.site = site
        self.mounts: dict[str, Path] = dict(site.mounts)
        self.node_modules = _local_dirs()
        self.mounts.update(self.node_modules or {})
        self.integrity = files.Integrity(site.recorded)
        self.models: dict[str, Any] = {}          # id and catalogue key -> engine.Model
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def load_models(self) -> None:
        """Open an ONNX Runtime session per served model (the heavy imports happen here)."""
        from foundry.serve.engine import Model

        for served in self.site.models:
            model = Model(served)
            self.models[served.id] = self.models[served.key] = model

    def start_background(self) -> "FoundryServer":
        self._thread = threading.Thread(target=self.serve_forever, name="foundry-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):      # a client gone is no error of ours
            super().handle_error(request, client_address)


def bind(site: Site, host: str, port: int) -> FoundryServer:
    """The server listening on host:port (0: any free port), models not loaded yet."""
    server_class = FoundryServer
    if ":" in host:
        server_class = type("FoundryServer6", (FoundryServer,), {"address_family": socket.AF_INET6})
    try:
        return server_class((host, port), site)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: already in use on {host}; pick another (--port 0 picks a free one)") from None
        raise UserError(f"--host {host}: cannot listen there ({error.strerror or error})") from None


def start_server(target: Path, *, host: str = "127.0.0.1", port: int = 0, model: str | None = None, variant: str | None = None) -> FoundryServer:
    """A server on TARGET in a background thread, models loaded; `.url`, and `.stop()` when done."""
    server = bind(open_site(target, model=model, variant=variant), host, port)
    try:
        server.load_models()
    except BaseException:
        server.stop()
        raise
    return server.start_background()


def _local_dirs() -> dict[str, Path] | None:
    from foundry.web import assets

    return assets.local_dirs()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"foundry-serve/{__version__}"
    # Seconds a socket may block: an idle keep-alive connection is closed after it, and a client
    # that stops reading a stream (without closing) loses it instead of holding its model's turn.
    timeout = 60
    server: FoundryServer

    def setup(self) -> None:
        super().setup()
        # A stream writes one small event per token: send each at once (no Nagle delay).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- routing -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_OPTIONS(self) -> None:
        """CORS preflight: any origin may call the API (a browser page on another port, say)."""
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", self.headers.get("Access-Control-Request-Headers") or "*")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _route(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/v1" or path.startswith("/v1/"):
            try:
                self._api(method, path, self._read_body() if method == "POST" else b"")
            except ApiError as error:
                self._send_json(error.status, error.body())
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception as error:  # noqa: BLE001 - a bug answers 500 in OpenAI's shape, and the server goes on
                LOG.exception("%s %s failed", method, path)
                self._send_json(500, ApiError(500, f"{type(error).__name__}: {error}", type="server_error").body())
        elif method == "POST":
            self.close_connection = True           # its body is not read
            self._send_text(405, "Files here are read-only; the API is under /v1/.\n", {"Allow": "GET, HEAD, OPTIONS"})
        else:
            self._file(path, head=method == "HEAD")

    def end_headers(self) -> None:
        for name, value in BROWSER_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        LOG.info("%s %s", self.address_string(), format % args)

    # --- the API -------------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: bytes) -> None:
        routes: dict[str, tuple[str, Callable[[bytes], None]]] = {
            "/v1/models": ("GET", lambda _: self._send_json(200, openai_api.models_list(self.server.site.models))),
            "/v1/chat/completions": ("POST", lambda data: self._generate(openai_api.parse_chat(data))),
            "/v1/completions": ("POST", lambda data: self._generate(openai_api.parse_completion(data))),
        }
        if path.startswith("/v1/models/") and method == "GET":
            name = urllib.parse.unquote(path.removeprefix("/v1/models/"))
            served = self.server.site.model(name)
            if served is None:
                raise openai_api.unknown_model(name)
            self._send_json(200, openai_api.model_object(served))
            return
        if path not in routes:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        allowed, handle = routes[path]
        if method != allowed:
            raise ApiError(405, f"Method {method} is not allowed for {path}; use {allowed}.", code="method_not_allowed")
        handle(body)

    def _read_body(self) -> bytes:
        """The request body, read whole so that the connection can carry the next request."""
        length = self.headers.get("Content-Length")
        # isdigit() alone takes "²" and "١٢", which int() then refuses.
        if length is None or not (length.isascii() and length.isdigit()) or "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise ApiError(411, "A request body needs a Content-Length header.", code="length_required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"The request body is {length} bytes; foundry serve takes at most {MAX_BODY_BYTES}.", code="request_too_large")
        return self.rfile.read(int(length))

    def _generate(self, request: GenerationRequest) -> None:
        model = self.server.models.get(request.model)
        if model is None:
            raise openai_api.unknown_model(request.model)
        stream = model.generate(request, model.prompt_ids(request))
        reply = Reply.new(request.chat, model.served.id)
        if request.stream:
            self._stream(reply, stream, include_usage=request.include_usage)
            return
        try:
            text = "".join(stream)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's failure, reported to the client as OpenAI reports its own
            LOG.exception("generation failed")
            raise ApiError(500, f"The model failed while generating: {type(error).__name__}: {error}", type="server_error") from None
        self._send_json(200, reply.body(text, stream.finish_reason or "stop", stream.prompt_tokens, stream.completion_tokens))

    def _stream(self, reply: Reply, stream: Any, *, include_usage: bool) -> None:
        """Server-sent events, one per text delta, then the finish reason, usage if asked, [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        held: list[bytes] = []
        try:
            if reply.chat:
                self._chunk(openai_api.event(reply.chunk(first=True)))      # at once, even while waiting for its turn
            with contextlib.closing(iter(stream)) as deltas:
                try:
                    for delta in deltas:
                        self._chunk(reply.text_event(delta))
                except (ConnectionError, TimeoutError):
                    raise
                except Exception as error:  # noqa: BLE001 - headers are sent: the failure goes in the stream
                    LOG.exception("generation failed")
                    held.append(openai_api.event(ApiError(500, f"The model failed while generating: {type(error).__name__}: {error}", type="server_error").body()))
                else:
                    held.append(openai_api.event(reply.chunk(finish_reason=stream.finish_reason)))
                    if include_usage:
                        held.append(openai_api.event(reply.usage_chunk(stream.prompt_tokens, stream.completion_tokens)))
            self._chunk(b"".join(held) + b"data: [DONE]\n\n")
            self._chunk(b"")
        except (ConnectionError, TimeoutError):
            self.close_connection = True           # the client left (or stopped reading); closing the stream ended its turn

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    # --- files ---------------------------------------------------------------------------------

    def _file(self, path: str, *, head: bool) -> None:
        found = files.resolve(self.server.mounts, path)
        if not path.endswith("/") and (found is not None and found.is_dir() or urllib.parse.unquote(path) + "/" in self.server.mounts):
            # So that a page's relative URLs resolve inside the folder; one leading slash, never "//host".
            self._send_text(301, "", {"Location": "/" + path.lstrip("/") + "/"})
            return
        if found is not None and found.is_dir():
            found = found / INDEX if (found / INDEX).is_file() else None
        if found is None:
            self._not_found(path)
            return
        with open(found, "rb") as handle:
            stat = os.fstat(handle.fileno())
            damage = self.server.integrity.problem(found, stat)
            if damage is not None:
                LOG.error("%s: %s; refused (republish the model; `foundry verify` lists every problem)", found, damage)
                self._send_text(500, f"{urllib.parse.unquote(path)}: {damage}; foundry serve does not send a damaged file: republish the model\n")
                return
            data = self._page(found, handle)
            validators = files.Validators.of(stat)
            if data is not None:
                validators = files.Validators(f'"{hashlib.sha256(data).hexdigest()[:32]}"', validators.last_modified, validators.mtime)
            size = stat.st_size if data is None else len(data)
            headers = {"ETag": validators.etag, "Last-Modified": validators.last_modified, "Cache-Control": "no-cache", "Accept-Ranges": "bytes"}
            if validators.not_modified(self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")):
                self._send_head(304, headers)
                return
            span = files.byte_range(self.headers.get("Range"), size) if validators.range_applies(self.headers.get("If-Range")) else None
            if span == files.UNSATISFIABLE:
                self._send_head(416, {**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"})
                return
            first, last = span or (0, size - 1)
            if span is not None:
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            self._send_head(206 if span else 200, {**headers, "Content-Type": files.content_type(found.name), "Content-Length": str(last - first + 1)})
            if head or last < first:
                return
            if data is not None:
                self.wfile.write(data[first:last + 1])
            else:
                self.connection.sendfile(handle, first, last - first + 1)

    def _page(self, found: Path, handle: Any) -> bytes | None:
        """Foundry's catalogue page, pointed at the local transformers.js when it is installed;
        None for any other file (served from disk as it is)."""
        if found.name != INDEX:
            return None
        from foundry.web import assets

        if self.server.node_modules is None:
            return None
        content = handle.read()
        handle.seek(0)
        return assets.render_index(local=True) if assets.is_foundry_page(content) else None

    def _not_found(self, path: str) -> None:
        if any(path.startswith(route) for route in _local_routes()) and self.server.node_modules is None:
            self._send_text(404, "transformers.js and onnxruntime-web are not installed here: run `make web` in the Foundry checkout "
                                 "(npm ci), or set FOUNDRY_NODE_MODULES to a node_modules folder holding them.\n")
            return
        self._send_text(404, f"Not found: {path}\n")

    # --- responses -----------------------------------------------------------------------------

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, status: int, value: dict[str, Any]) -> None:
        # backslashreplace writes a lone surrogate as its JSON escape: the body stays valid JSON.
        self._send_body(status, json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace"), "application/json")

    def _send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send_body(status, text.encode(), "text/plain; charset=utf-8", headers)

    def _send_body(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._send_head(status, {**(headers or {}), "Content-Type": content_type, "Content-Length": str(len(data))})
        if self.command != "HEAD":
            self.wfile.write(data)


def _local_routes() -> tuple[str, ...]:
    from foundry.web import assets

    return tuple(assets.LOCAL_ROUTES)
