"""What the tests that load published models in their real client share: a loopback web
server with the headers a cross-origin-isolated page needs, the Node harnesses in
tests/web, and ONNX Runtime's greedy answer to compare transformers.js with."""

import contextlib
import functools
import json
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from foundry import manifest
from foundry.web import assets

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "tests" / "web"


class Handler(SimpleHTTPRequestHandler):
    """Static files with COOP/COEP/CORP; /_foundry/ from node_modules (foundry.web.assets),
    /_harness/ from tests/web, the rest from the web root; every path asked for is noted."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **{suffix: kind.split(";")[0] for suffix, kind in assets.CONTENT_TYPES.items()}}
    mounts: dict[str, Path] = {}
    requested: list[str] = []

    def translate_path(self, path: str) -> str:
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        for route, folder in self.mounts.items():
            if url_path.startswith(route):
                return str(folder / url_path.removeprefix(route))
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def send_head(self):  # noqa: ANN201 - the base class's own signature
        self.requested.append(urllib.parse.urlsplit(self.path).path)
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(site: Path) -> Iterator[tuple[str, list[str]]]:
    """The web root `site` on a loopback port: its URL and the list of paths requested."""
    mounts = {**(assets.local_dirs() or {}), "/_harness/": WEB}
    handler = type("SiteHandler", (Handler,), {"mounts": mounts, "requested": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requested
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_node(script: str, job: dict, timeout: float = 240) -> dict:
    result = subprocess.run(["node", str(WEB / script), json.dumps(job)], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def greedy_answers(folder: Path, prompt: str, max_new_tokens: int) -> dict[str, dict[str, Any]]:
    """Per published variant: the chat prompt's ids and ONNX Runtime's greedy new tokens."""
    from jobs.tools.query import OnnxGenerator, prompt_ids

    answers = {}
    for level in manifest.read(folder)["variants"]:
        generator = OnnxGenerator(folder, level)
        ids = prompt_ids(generator.tokenizer, prompt, system=None, raw=False)
        new = list(generator.token_ids(ids, max_new_tokens))
        answers[level] = {"prompt_ids": ids, "new_ids": new, "text": generator.tokenizer.decode(new, skip_special_tokens=True).strip()}
    return answers


def variant_files(folder: Path, level: str) -> set[str]:
    """The files a client fetches for one published variant: its graph and every chunk."""
    variant = manifest.read(folder)["variants"][level]
    return {variant["file"], *(f"onnx/{name}" for name in variant["chunks"])}


def assert_same_tokens(results: dict, reference: dict, folder: Path, tokens: int | None = None) -> None:
    """transformers.js's results are ONNX Runtime's (their first `tokens`), variant by variant, every chunk fetched."""
    assert set(results) == set(reference)
    for level, expected in reference.items():
        expected = {**expected, "new_ids": expected["new_ids"][:tokens]}
        got = results[level]
        assert "error" not in got, f"{level}: {got.get('error')}"
        assert got["prompt_ids"] == expected["prompt_ids"], f"{level}: the chat template gives other ids"
        assert got["new_ids"] == expected["new_ids"], f"{level}: transformers.js generated {got['new_ids']}, ONNX Runtime {expected['new_ids']}"
        assert variant_files(folder, level) <= set(got["files"]), f"{level}: not every chunk was fetched"
