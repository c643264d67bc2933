"""Model references as recipes write them, and what can be known of them offline.

A reference is `tiny:NAME`, `s3://bucket/key`, a local path (absolute, or starting with
`./`, `../` or `~`, or any existing folder), or a Hugging Face id `org/name`. mergekit's
suffixes `@revision` and `+lora` are accepted and kept.

A local reference is a model folder as `save_pretrained` writes it, not a tree: what a
model loader (transformers' `from_pretrained`, mergekit) reads is the files at its top
level that `MODEL_FILES` and `PICKLE_SUFFIXES` match (config, weights, tokenizer). Those
are what a hub download fetches, and what a plan's key covers (foundry/plan.py).
"""

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from foundry import tiny_catalog
from foundry.smallfile import UnreadableFile, read_small

RefKind = Literal["tiny", "local", "hub", "s3"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Config, safetensors weights and their index, tokenizer files, chat template.
MODEL_FILES = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja")
# Size fields that, when a config has them, must be sizes: lint compares them across models.
SIZE_FIELDS = ("hidden_size", "n_embd", "d_model", "vocab_size")
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class BadModelConfig(ValueError):
    """A config.json that is there but is not a model config; the message says why."""


@dataclass(frozen=True)
class ModelRef:
    raw: str
    kind: RefKind
    path: str
    revision: str | None = None
    lora: str | None = None

    @property
    def local_path(self) -> Path:
        # os.path's expanduser leaves `~nosuchuser/x` as written; pathlib's raises.
        return Path(os.path.expanduser(self.path))

    def config(self) -> dict[str, Any] | None:
        """The model's config.json when it can be read without the network and is a model
        config, else None (lint names what is wrong with a local one: `folder_problem`)."""
        try:
            if self.kind == "tiny":
                spec = tiny_catalog.lookup(self.path)
                return {**spec.config, "architectures": [spec.architecture]} if spec else None
            if self.kind == "local":
                return read_config(self.local_path / "config.json")
            if self.kind == "hub":
                return _cached_hub_config(self.path)
        except (OSError, UnreadableFile, BadModelConfig):
            return None
        return None

    def folder_problem(self) -> str | None:
        """Why a local reference is not a model folder a stage can load, or None."""
        folder = self.local_path
        shown = repr(self.path)
        if not folder.is_dir():
            if folder.exists():
                return f"{shown} is a file; a model reference is a folder holding config.json and *.safetensors"
            unknown_user = " (no such user on this machine)" if self.path.startswith("~") and str(folder) == self.path else ""
            return f"model folder {shown} does not exist{unknown_user} (relative paths are read from the current directory); check the path, or write a hub id as org/name"
        try:
            read_config(folder / "config.json")
        except FileNotFoundError:
            return f"{shown} is not a model folder: it has no config.json; expected a folder as save_pretrained writes it (config.json and *.safetensors)"
        except (UnreadableFile, BadModelConfig) as error:
            return f"config.json of {shown}: {error}; expected the model's config as save_pretrained writes it"
        if not any(path.suffix in PICKLE_SUFFIXES or path.name.endswith(".safetensors") for path in model_files(folder)):
            return f"{shown} has no weights: expected *.safetensors files beside its config.json (or pickles, with allow_pickle: true)"
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
        if isinstance(config.get(name), int):
            return int(config[name])
    return None


def model_files(folder: Path) -> list[Path]:
    """The files at the folder's top level that a model loader reads, sorted; nothing below it."""
    patterns = (*MODEL_FILES, *(f"*{suffix}" for suffix in PICKLE_SUFFIXES))
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries if entry.is_file() and any(fnmatch.fnmatchcase(entry.name, p) for p in patterns)]
    return [folder / name for name in sorted(names)]


def read_config(path: Path) -> dict[str, Any]:
    """A config.json that is a JSON object whose size fields are sizes; FileNotFoundError
    when there is none, UnreadableFile or BadModelConfig (saying why) when it is not one."""
    try:
        config = json.loads(read_small(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except UnicodeDecodeError:
        raise BadModelConfig("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise BadModelConfig(f"not valid JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise BadModelConfig("JSON nested too deeply to be a model config") from None
    if not isinstance(config, dict):
        kinds = {"list": "an array", "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean"}
        raise BadModelConfig(f"expected a JSON object, got {kinds.get(type(config).__name__, 'null')}")
    for name in SIZE_FIELDS:
        value = config.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadModelConfig(f"{name} must be a positive whole number, got {value!r}")
    if not isinstance(config.get("model_type", ""), str):
        raise BadModelConfig(f"model_type must be a string, got {config['model_type']!r}")
    return config


def _cached_hub_config(repo_id: str) -> dict[str, Any] | None:
    """A config.json already in the Hugging Face cache; lint never downloads."""
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")
    snapshots = hub_cache.expanduser() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    for config in sorted(snapshots.glob("*/config.json")):
        return read_config(config)
    return None
