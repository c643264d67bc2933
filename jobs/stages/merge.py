"""The merge stage: mergekit's own `run_merge`, on CPU, safetensors out, tokenizer copied.

The recipe's mergekit part is handed over as written, except that every model reference
is first turned into a local folder (`tiny:` built, hub ids downloaded without pickles),
so mergekit never fetches or unpickles anything on its own.
"""

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from foundry.errors import UserError
from foundry.stagespec import StageSpec
from jobs.sources.resolve import materialize

LOG = logging.getLogger("foundry.merge")
MERGE_SEED = 0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def run(spec: StageSpec, inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from pydantic import ValidationError

    written = spec.params["mergekit"]
    resolve = _Resolver(bool(spec.params.get("allow_pickle")), bool(spec.params.get("trust_remote_code")))
    local = resolve.config(copy.deepcopy(written))
    try:
        config = MergeConfiguration.model_validate(local)
    except ValidationError as error:
        raise UserError(f"recipe {spec.recipe}: mergekit refused the configuration: {error.errors()[0]['msg']}") from None
    options = MergeOptions(
        copy_tokenizer=True,
        trust_remote_code=bool(spec.params.get("trust_remote_code")),
        safe_serialization=True,
        lazy_unpickle=False,
        quiet=True,
        device="cpu",
        # mergekit's card lists the models in set order and local paths; ours is stable.
        write_model_card=False,
    )
    # Content-addressed keys promise the same bytes for the same recipe: seed DARE's dropout.
    # (Seeding torch directly; mergekit's random_seed option imports transformers' trainer.)
    torch.manual_seed(MERGE_SEED)
    LOG.info("merging %s with %s", ", ".join(resolve.references), config.merge_method)
    run_merge(config, str(out), options=options)
    _complete_side_files(out, resolve.first_folder)
    _write_card(out, spec.recipe, written, resolve.references)
    return {"merge_method": config.merge_method, "sources": resolve.references}


class _Resolver:
    """Replaces references by local folders, remembering what was named."""

    def __init__(self, allow_pickle: bool, trust_remote_code: bool) -> None:
        self.allow_pickle = allow_pickle
        self.trust_remote_code = trust_remote_code
        self.references: list[str] = []
        self.folders: dict[str, Path] = {}

    @property
    def first_folder(self) -> Path:
        return next(iter(self.folders.values()))

    def reference(self, value: Any) -> Any:
        if isinstance(value, str):
            if value not in self.folders:
                self.references.append(value)
                self.folders[value] = materialize(value, allow_pickle=self.allow_pickle, trust_remote_code=self.trust_remote_code)
            return str(self.folders[value])
        if isinstance(value, dict):
            inner = value.get("model", value.get("path"))
            key = "model" if "model" in value else "path"
            if isinstance(inner, dict):
                return {**value, key: {**inner, "path": self.reference(inner["path"])}}
            return {**value, key: self.reference(inner)}
        return value

    def config(self, config: dict[str, Any]) -> dict[str, Any]:
        if "base_model" in config:
            config["base_model"] = self.reference(config["base_model"])
        for model in config.get("models") or []:
            model["model"] = self.reference(model["model"])
        for slice_ in config.get("slices") or []:
            if slice_.get("base_model"):
                slice_["base_model"] = self.reference(slice_["base_model"])
            for source in slice_.get("sources") or []:
                source["model"] = self.reference(source["model"])
        source = config.get("tokenizer_source")
        if isinstance(source, (str, dict)) and source not in ("union", "base"):
            config["tokenizer_source"] = self.reference(source)
        return config


def _write_card(out: Path, recipe: str, written: dict[str, Any], sources: list[str]) -> None:
    """The configuration as the recipe wrote it, and a model card naming the sources."""
    config_yaml = yaml.safe_dump(written, sort_keys=False)
    (out / "mergekit_config.yml").write_text(config_yaml)
    listed = "\n".join(f"* {source}" for source in sources)
    (out / "README.md").write_text(
        f"---\nlibrary_name: transformers\ntags: [mergekit, merge, foundry]\n---\n# {recipe}\n\n"
        f"Merged by Foundry with mergekit's `{written.get('merge_method')}` method from:\n\n{listed}\n\n"
        f"## Configuration\n\n```yaml\n{config_yaml}```\n"
    )


def _complete_side_files(out: Path, base: Path) -> None:
    """Stages after merge need the tokenizer and generation defaults; mergekit may skip them."""
    if not any((out / name).exists() for name in _TOKENIZER_FILES):
        raise UserError(f"merge: mergekit wrote no tokenizer (none found in {base}); set tokenizer_source in the recipe")
    for name in ("generation_config.json",):
        if not (out / name).exists() and (base / name).exists():
            shutil.copy2(base / name, out / name)
