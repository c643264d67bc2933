"""Model references as recipes write them, and what can be known of them offline.

A reference is `tiny:NAME`, `s3://bucket/key`, a local path (absolute, or starting with
`./`, `../` or `~`, or any existing folder), or a Hugging Face id `org/name`. mergekit's
suffixes `@revision` and `+lora` are accepted and kept.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from foundry import tiny_catalog

RefKind = Literal["tiny", "local", "hub", "s3"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelRef:
    raw: str
    kind: RefKind
    path: str
    revision: str | None = None
    lora: str | None = None

    @property
    def local_path(self) -> Path:
        return Path(self.path).expanduser()

    def config(self) -> dict[str, Any] | None:
        """The model's config.json when it can be read without the network, else None."""
        if self.kind == "tiny":
            spec = tiny_catalog.lookup(self.path)
            return {**spec.config, "architectures": [spec.architecture]} if spec else None
        if self.kind == "local":
            return _read_json(self.local_path / "config.json")
        if self.kind == "hub":
            return _cached_hub_config(self.path)
        return None


def parse(reference: str) -> ModelRef:
    if tiny_catalog.is_tiny(reference):
        return ModelRef(reference, "tiny", reference)
    if reference.startswith("s3://"):
        return ModelRef(reference, "s3", reference)
    base, _, lora = reference.partition("+")
    path, _, revision = base.partition("@")
    local = path.startswith(("/", "./", "../", "~", "file://")) or os.path.isdir(os.path.expanduser(path))
    kind: RefKind = "local" if local or not _HUB_ID.match(path) else "hub"
    return ModelRef(reference, kind, path.removeprefix("file://"), revision or None, lora or None)


def is_valid_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path))


def hidden_size(config: dict[str, Any]) -> int | None:
    for name in ("hidden_size", "n_embd", "d_model"):
        if name in config:
            return int(config[name])
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cached_hub_config(repo_id: str) -> dict[str, Any] | None:
    """A config.json already in the Hugging Face cache; lint never downloads."""
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")
    snapshots = hub_cache.expanduser() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    for config in sorted(snapshots.glob("*/config.json")):
        return _read_json(config)
    return None
