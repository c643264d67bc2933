"""What this machine has to train on: the largest NVIDIA GPU's memory, else the RAM.

Read without torch (nvidia-smi, sysconf, the cgroup limit), so `foundry models select
--detect` stays as light as the rest of the submitter.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from foundry.registry.memory import GIB, Device

_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@dataclass(frozen=True)
class Hardware:
    device: Device
    memory_gib: float
    name: str


def detect() -> Hardware:
    return _largest_gpu() or Hardware("cpu", ram_gib(), "RAM")


def ram_gib() -> float:
    """Physical memory, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total / GIB


def _largest_gpu() -> Hardware | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        output = subprocess.run([smi, "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in output.splitlines():
        mib, _, name = line.partition(",")
        if mib.strip().isdigit():
            gpus.append(Hardware("gpu", int(mib) / 1024, name.strip()))
    return max(gpus, key=lambda gpu: gpu.memory_gib, default=None)
