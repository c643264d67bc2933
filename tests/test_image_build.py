"""images/build.sh's refusals, which need no container engine (tests/images builds for real)."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "images" / "build.sh"


def build(*args: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(BUILD), *args], env={"PATH": str(path)}, capture_output=True, text=True, timeout=60)


def test_without_docker_or_buildah_it_says_what_to_install(tmp_path: Path) -> None:
    tools = tmp_path / "bin"  # what the script needs before it looks for an engine, and no engine
    tools.mkdir()
    (tools / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    result = build("cpu", path=tools)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("images/build.sh: no container engine: no Docker engine answers (docker info) and buildah is not installed;")
    assert "make container-tools" in line and "apt-get install buildah podman runc" in line


def test_an_unknown_image_is_refused_with_exit_2(tmp_path: Path) -> None:
    result = build("tpu", path=Path("/usr/bin"))
    assert result.returncode == 2
    assert result.stderr.strip() == "images/build.sh: unknown image 'tpu'; expected cpu or gpu"
