"""A hub model whose download breaks off gets the one-line download error, not a traceback.

huggingface_hub 2 moved to its own HTTP transport (httpx2), whose errors are not OSError: a
connection lost mid-download used to escape as a traceback. The "hub" here is a loopback
socket that answers every request badly; nothing leaves the machine.
"""

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROGRAM = """
from foundry.errors import UserError
from jobs.sources.resolve import materialize
try:
    materialize("someone/some-model")
except UserError as error:
    print("USER ERROR:", error)
"""


def _broken_hub(answer: bytes) -> Iterator[str]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.fixture(params=["disconnects", "truncates"])
def hub(request: pytest.FixtureRequest) -> Iterator[str]:
    answer = b"" if request.param == "disconnects" else b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\": "
    yield from _broken_hub(answer)


def test_a_broken_download_is_one_line(hub: str, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub, HF_HOME=str(tmp_path / "hf"), HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == (
        "USER ERROR: model someone/some-model: could not be downloaded from the Hugging Face hub (RemoteProtocolError); "
        "check the network or pre-fill the cache"
    )
