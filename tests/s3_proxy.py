"""A loopback HTTP proxy in front of the S3 endpoint that misbehaves on request.

Real faults over real sockets, for the transfer tests: `slow_down(n)` answers the next n
requests with S3's 503 SlowDown; `cut_after(n)` lets n more request-body bytes through and
then goes down like a stopped server: the request in flight loses its connection mid-body
and every later connection is refused; `respond(status, xml, headers)` answers everything
itself, as an S3 server with another configuration would (a bucket in another region).
"""

import http.client
import http.server
import socket
import threading
from urllib.parse import urlsplit

SLOW_DOWN = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>'


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.lock = threading.Lock()
        self.slow_downs = 0
        self.budget: int | None = None      # request-body bytes still let through; None: unlimited
        self.down = False
        self.canned: tuple[int, bytes, dict[str, str]] | None = None
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def slow_down(self, count: int) -> None:
        with self.lock:
            self.slow_downs = count

    def cut_after(self, body_bytes: int) -> None:
        with self.lock:
            self.budget = body_bytes

    def respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.canned = (status, body, headers or {})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the handler -------------------------------------------------------------------------

    def _go_down(self) -> None:
        """Stop like a killed server: no answer now, connections refused from now on."""
        self.down = True
        self.server.socket.close()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests += 1
            slow = self.slow_downs > 0
            self.slow_downs -= 1 if slow else 0
        if self.down:
            return _drop(handler)
        length = int(handler.headers.get("Content-Length") or 0)
        body = bytearray()
        while len(body) < length:
            with self.lock:
                allowed = length - len(body) if self.budget is None else min(length - len(body), self.budget)
                if allowed <= 0:
                    self._go_down()
                    return _drop(handler)
            block = handler.rfile.read(min(allowed, 64 * 1024))
            if not block:
                return _drop(handler)
            body += block
            with self.lock:
                if self.budget is not None:
                    self.budget -= len(block)
        if self.canned is not None:
            status, payload, headers = self.canned
            return _reply(handler, status, payload, {"Content-Type": "application/xml", **headers})
        if slow:
            return _reply(handler, 503, SLOW_DOWN, {"Content-Type": "application/xml"})
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {name: value for name, value in handler.headers.items() if name.lower() != "connection"}
            connection.request(handler.command, handler.path, body=bytes(body), headers=headers)
            response = connection.getresponse()
            payload = response.read()
            passed = {name: value for name, value in response.getheaders() if name.lower() not in ("connection", "transfer-encoding", "content-length")}
            _reply(handler, response.status, payload, passed, head=handler.command == "HEAD", length=response.getheader("Content-Length"))
        finally:
            connection.close()


def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str], *, head: bool = False, length: str | None = None) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", length if head and length is not None else str(len(payload)))
    handler.end_headers()
    if not head:
        handler.wfile.write(payload)


def _drop(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
