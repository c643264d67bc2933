"""Shared fixtures. Tiny models are cached under .foundry/test-cache so a second run is fast."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FOUNDRY_CACHE", str(REPO / ".foundry" / "test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def repo() -> Path:
    return REPO


# --- S3: a real S3 HTTP endpoint on loopback (moto's server); AWS is never contacted --------

@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's ThreadedMotoServer on 127.0.0.1 and a free port, for the whole session.

    moto 5.2.1 checks If-Match / If-None-Match on PutObject and then writes in a second step,
    without a lock, so two conditional writes can both pass; S3 (and MinIO) evaluate the
    condition atomically. The server's handler is serialised for conditional PUTs only, so
    the endpoint keeps S3's compare-and-swap semantics that the catalogue relies on.
    """
    import logging
    import threading

    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    original = S3Response.put_object
    lock = threading.Lock()

    def put_object(self):  # noqa: ANN001, ANN202 - moto's own signature
        if "If-Match" in self.headers or "If-None-Match" in self.headers:
            with lock:
                return original(self)
        return original(self)

    S3Response.put_object = put_object
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        S3Response.put_object = original


def use_endpoint(patch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The environment of a user pointed at `endpoint` with made-up credentials; nothing from
    the real environment (profiles, config files, endpoints) leaks in."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "FOUNDRY_S3_")):
            patch.delenv(name)
    patch.setenv("AWS_ENDPOINT_URL", endpoint)
    patch.setenv("AWS_ACCESS_KEY_ID", "foundry-test")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "foundry-test-secret")
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_CONFIG_FILE", os.devnull)
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch, tmp_path):
    use_endpoint(monkeypatch, moto_endpoint)
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))     # fetched keys, not the shared test cache
    return moto_endpoint


@pytest.fixture(scope="module")
def s3_env_module(moto_endpoint):
    """s3_env for a module's fixtures (an end-to-end run shared by its tests)."""
    with pytest.MonkeyPatch.context() as patch:
        use_endpoint(patch, moto_endpoint)
        yield moto_endpoint


@pytest.fixture
def bucket(s3_env):
    """A new, empty bucket on the loopback endpoint."""
    import uuid

    from foundry.s3.client import client

    name = f"foundry-test-{uuid.uuid4().hex[:12]}"
    client().create_bucket(Bucket=name)
    return name


# --- Kubernetes: the API server fake (tests/k8s_fake.py), through the official client ------

@pytest.fixture
def k8s(tmp_path, monkeypatch):
    """The fake API server on loopback, KUBECONFIG pointing at it; status tables printed wide,
    so that no cell a test reads is folded."""
    from k8s_fake import FakeApiServer
    from rich.console import Console

    from foundry.commands import status as status_command

    monkeypatch.setattr(status_command, "console", Console(highlight=False, width=250))
    with FakeApiServer.running(tmp_path) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig))
        yield fake


@pytest.fixture
def store(tmp_path):
    """An empty local store of the test's own."""
    from foundry.store import open_store

    return open_store(str(tmp_path / "store"))
