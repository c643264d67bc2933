"""Fixtures of the image tests: the CPU image of this checkout, and a cluster whose node runs pods in it.

`make test-images` installs podman and buildah and makes the Debian base first; run alone,
`pytest tests/images` needs those already (see docs/images.md).
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_fake import FakeApiServer
from kubelet import PodmanNode

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("CONTAINERS_CONF", str(REPO / "images" / "containers.conf"))
os.environ.setdefault("PYTHON_IMAGE", "localhost/foundry-base:bookworm")  # `make base-image`


@pytest.fixture(scope="session")
def image() -> str:
    """The CPU image built from this checkout: images/build.sh reuses it while its inputs are
    unchanged (its tag is their digest) and rebuilds, with buildah, when any changed."""
    missing = [tool for tool in ("podman", "buildah") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make test-images`, which installs them from Debian")
    built = subprocess.run([str(REPO / "images" / "build.sh"), "cpu"], cwd=REPO, env={**os.environ, "ENGINE": "buildah"}, capture_output=True, text=True)
    assert built.returncode == 0, f"images/build.sh cpu failed:\n{built.stderr[-6000:]}"
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_env_module: str) -> Iterator[FakeApiServer]:
    """The API server fake with a podman node, and KUBECONFIG pointing at it."""
    folder = tmp_path_factory.mktemp("cluster")
    with FakeApiServer.running(folder, node=PodmanNode(folder)) as fake, pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(fake.kubeconfig))
        yield fake
