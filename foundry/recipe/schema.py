"""The recipe: mergekit's configuration with Foundry's keys beside it.

Foundry's keys are typed here and validated strictly. The mergekit keys are kept as the
user wrote them and handed to mergekit untouched; `checks.py` validates them against
what mergekit accepts, without importing mergekit.
"""

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A name that becomes a folder or an object key: no separators, no dot-dot, no hidden files.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

MERGEKIT_KEYS = (
    "models", "slices", "modules", "merge_method", "base_model", "dtype",
    "tokenizer_source", "tokenizer", "chat_template", "out_dtype", "parameters",
)

QUANT_LEVELS = ("fp32", "fp16", "q8", "q4", "q4f16", "q2")
QuantLevel = Literal["fp32", "fp16", "q8", "q4", "q4f16", "q2"]
DTYPES = ("float32", "float16", "bfloat16")

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
# A gate condition: an operator and a number (foundry/gate.py parses it with this too).
GATE_CONDITION = re.compile(r"^(>=|<=|>|<|==)\s*(-?[0-9]+(?:\.[0-9]+)?)$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _safe_name(value: str, what: str) -> str:
    if not re.match(SAFE_NAME, value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a safe name; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, no '..' and no '/'"
        )
    return value


class FinetuneSplit(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> "FinetuneSplit":
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation {self.validation} + test {self.test} leave nothing to train on; keep their sum below 1")
        return self


class FinetuneHardware(Section):
    """What the finetune stage will run on, for the fit check before anything runs."""

    vram_gb: float | None = Field(None, gt=0)
    ram_gb: float | None = Field(None, gt=0)


class FinetuneSpec(Section):
    """LoRA fine-tuning. Unset fields come from the registry's preset for the base model
    (`preset: auto`) or the one named; anything set here wins."""

    dataset: str
    preset: str = "auto"
    rank: int | None = Field(None, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] | None = None
    learning_rate: float | None = Field(None, gt=0, lt=1)
    batch_size: int | None = Field(None, ge=1)
    gradient_accumulation: int | None = Field(None, ge=1)
    max_length: int | None = Field(None, ge=8)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    qlora: bool | None = None
    gradient_checkpointing: bool | None = None
    packing: bool = False
    force_cpu: bool = False
    seed: int = 0
    eval_every: int | None = Field(None, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    hardware: FinetuneHardware | None = None
    split: FinetuneSplit = FinetuneSplit()

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and (not value or not all(isinstance(name, str) and name.strip() for name in value)):
            raise ValueError("list at least one module name (like q_proj), or write all-linear")
        return value


class JsonlSuite(Section):
    jsonl: str


class EvaluateSpec(Section):
    suites: list[str | JsonlSuite] = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    gate: dict[str, str] = {}
    # Sequences scored in one forward pass (multiple choice); tokens a generation suite may answer with.
    batch_size: int = Field(16, ge=1, le=4096)
    max_new_tokens: int = Field(32, ge=1, le=4096)

    @field_validator("gate")
    @classmethod
    def _gate_expressions(cls, gate: dict[str, str]) -> dict[str, str]:
        for metric, condition in gate.items():
            if not GATE_CONDITION.match(str(condition).strip()):
                raise ValueError(f"gate {metric}: {condition!r} is not a condition; write it like \">= 0.45\"")
        return gate


def _refuse_q3(value: Any) -> Any:
    if value == "q3":
        raise ValueError(
            "q3 is not supported: ONNX Runtime's MatMulNBits has kernels for 2, 4 and 8 bits only, "
            f"so a 3-bit model could not run in the browser; use one of {', '.join(QUANT_LEVELS)}"
        )
    return value


class QuantizeSpec(Section):
    variants: list[QuantLevel] = Field(min_length=1)
    # The prompts on which each variant's agreement with the fp32 model is measured.
    prompts: list[str] | None = None

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                _refuse_q3(item)
            if len(set(map(str, value))) != len(value):
                raise ValueError("each variant may be listed once")
        return value


class CatalogEntry(Section):
    id: str
    name: str | None = None
    # The key of the entry in models.json (the "agent key" web clients look up).
    key: str | None = None
    description: str | None = None

    @field_validator("id", "key")
    @classmethod
    def _safe(cls, value: str | None) -> str | None:
        return None if value is None else _safe_name(value, "entry id")


class PublishSpec(Section):
    to: str
    shard_size_mb: float = Field(100, gt=0, le=2000)
    catalog: str | None = None
    entry: CatalogEntry | None = None


class SweepSelect(Section):
    metric: str
    mode: Literal["max", "min"] = "max"


class SweepSpec(Section):
    grid: dict[str, list[Any]]
    select: SweepSelect | None = None

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("a sweep grid needs at least one field to vary")
        for field, values in grid.items():
            if not values:
                raise ValueError(f"sweep grid {field}: give at least one value")
        return grid


class StageResources(Section):
    cpu: float | str | None = None
    memory: str | None = None
    gpu: int | None = Field(None, ge=0)
    ephemeral_storage: str | None = None

    @field_validator("memory", "ephemeral_storage")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _QUANTITY.match(str(value)):
            raise ValueError(f"{value!r} is not a Kubernetes quantity; write it like 32Gi or 500Mi")
        return value


class Resources(Section):
    merge: StageResources | None = None
    finetune: StageResources | None = None
    evaluate: StageResources | None = None
    quantize: StageResources | None = None
    publish: StageResources | None = None


class Recipe(Section):
    """A whole recipe. Mergekit's keys are typed loosely here and checked in checks.py."""

    name: str
    allow_pickle: bool = False
    trust_remote_code: bool = False
    finetune: FinetuneSpec | None = None
    evaluate: EvaluateSpec | None = None
    quantize: QuantizeSpec | None = None
    publish: PublishSpec | None = None
    sweep: SweepSpec | None = None
    resources: Resources | None = None

    # mergekit's part, passed through untouched
    models: list[dict[str, Any]] | None = None
    slices: list[dict[str, Any]] | None = None
    modules: dict[str, Any] | None = None
    merge_method: str | None = None
    base_model: str | dict[str, Any] | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    tokenizer_source: str | dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    chat_template: str | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _safe(cls, value: str) -> str:
        return _safe_name(value, "recipe name")

    @model_validator(mode="after")
    def _has_a_model(self) -> "Recipe":
        if not (self.models or self.slices or self.modules):
            raise ValueError("a recipe needs `models` (one to start from, or several with a `merge_method`), or `slices`")
        return self

    def mergekit_config(self) -> dict[str, Any]:
        """The mergekit part of the recipe, exactly as written."""
        return self.model_dump(include=set(MERGEKIT_KEYS), exclude_none=True)

    @property
    def merges(self) -> bool:
        """True when the recipe merges; False when it starts from one model as it is."""
        return self.merge_method is not None
