"""The small Python environment optimum-onnx runs in, beside the stage environment.

optimum-onnx 0.1.0 (the newest) requires transformers < 4.58, while mergekit 0.1.5 and
onnxruntime-genai's builder need transformers 5: the two cannot share one environment.
This one holds only what optimum's export needs on top of the stage environment, and
reads everything else, torch above all (the largest package by far), from the stage
environment's site-packages through a `.pth` line: its own packages come first on its
`sys.path`, so its transformers shadows the stage's and torch is shared.

It lives at `<stage environment>/optimum` (`FOUNDRY_OPTIMUM_ENV` overrides), so a
virtualenv, the container image and CI each carry their own. `python -m
jobs.onnx.optimum_env` creates it (the Makefile's install does; the CPU image runs this
file as a plain script, before Foundry is installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

OPTIMUM_ONNX_VERSION = "0.1.0"
REQUIREMENTS = (
    f"optimum-onnx=={OPTIMUM_ONNX_VERSION}",
    "optimum==2.1.0",
    "transformers==4.57.6",
    "tokenizers==0.22.2",
    "huggingface_hub==0.36.2",
    "safetensors==0.5.3",
)
ENV_VARIABLE = "FOUNDRY_OPTIMUM_ENV"


def location() -> Path:
    return Path(os.environ.get(ENV_VARIABLE) or Path(sys.prefix) / "optimum")


def python() -> Path:
    """The environment's interpreter; a UserError saying how to make it when it is missing."""
    from foundry.errors import UserError  # here: the image runs this file as a plain script

    interpreter = location() / "bin" / "python"
    if not interpreter.is_file():
        raise UserError(
            f"the optimum-onnx environment is missing ({location()}); GPT-2-like families are exported there: "
            f"create it with `{sys.executable} -m jobs.onnx.optimum_env`"
        )
    return interpreter


def create(target: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    shared = sysconfig.get_paths()["purelib"]
    (site_packages(target) / "_foundry_stage_env.pth").write_text(shared + "\n")
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)


def site_packages(target: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return target / "lib" / version / "site-packages"


if __name__ == "__main__":
    create(location())
    print(f"optimum-onnx environment ready at {location()}")
