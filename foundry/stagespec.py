"""The contract between the submitter and a stage: one JSON document per stage run.

The local runner writes it to a file and the cluster puts it in a ConfigMap; either way
`foundry-stage SPEC.json` (jobs/entry.py) reads it, so what runs locally is what runs in a
pod.
"""

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from foundry.errors import UserError
from foundry.smallfile import UnreadableFile, read_small

StageName = Literal["merge", "finetune", "evaluate", "quantize", "publish"]
MAX_SPEC_BYTES = 16 * 1024 * 1024  # a ConfigMap holds at most 1 MiB
STAGE_ORDER: tuple[StageName, ...] = ("merge", "finetune", "evaluate", "quantize", "publish")


class StageInput(BaseModel):
    """Either a committed key of the same recipe, or a model reference resolved by the stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "StageInput":
        if (self.key is None) == (self.model is None):
            raise ValueError("a stage input names exactly one of `key` or `model`")
        return self


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: StageName
    recipe: str
    key: str
    store: str
    inputs: dict[str, StageInput] = {}
    params: dict[str, Any] = {}

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.model_dump(exclude_none=True), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, path: Path) -> "StageSpec":
        """The spec in `path`; a UserError (exit 2: the cluster fails the pod at once instead
        of retrying it) naming the first wrong field when the file is not a stage spec."""
        try:
            return cls.model_validate_json(read_small(path, MAX_SPEC_BYTES))
        except FileNotFoundError:
            raise UserError(f"stage spec {path}: no such file") from None
        except UnreadableFile as error:
            raise UserError(f"stage spec {path}: {error}") from None
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            problem = first["msg"].removeprefix("Value error, ")
            more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
            raise UserError(f"stage spec {path}: {where + ': ' if where else ''}{problem}{more}; specs are written by foundry run and submit from a recipe") from None
