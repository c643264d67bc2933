"""The contract between the submitter and a stage: one JSON document per stage run.

The local runner writes it to a file and the cluster puts it in a ConfigMap; either way
`foundry-stage SPEC.json` (jobs/entry.py) reads it, so what runs locally is what runs in a
pod.
"""

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

StageName = Literal["merge", "finetune", "evaluate", "quantize", "publish"]
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
        return cls.model_validate_json(path.read_text())
