"""What a preset is: a model the registry knows, with LoRA defaults that suit it.

Presets are data (`presets.yaml` in this package, and the user's own files), validated
here, so a typo in a user's file is refused with its line rather than surfacing as a
strange hyperparameter in a training run hours later.
"""

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from foundry.exporters import Family, family_of

Task = Literal["chat", "code", "completion", "reasoning", "multilingual", "test"]
TASKS: tuple[str, ...] = ("chat", "code", "completion", "reasoning", "multilingual", "test")
# The chat formats Foundry knows by name; a model's own template always wins over these.
TemplateFamily = Literal["plain", "chatml", "llama3", "zephyr", "gemma", "phi3", "phi4", "mistral", "deepseek-r1", "granite"]

_ALIAS = re.compile(r"^[a-z0-9][a-z0-9.:_-]{0,63}$")
_HUB_OR_TINY = re.compile(r"^(tiny:[a-z0-9-]+|[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FinetuneDefaults(_Strict):
    """The preset's training settings: what `preset: auto` fills into a recipe's finetune
    section. The names are the recipe's, so any of them can be overridden there."""

    rank: int = Field(ge=1, le=1024)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"]
    learning_rate: float = Field(gt=0, lt=1)
    batch_size: int = Field(ge=1)
    gradient_accumulation: int = Field(ge=1)
    max_length: int = Field(ge=8)
    epochs: float = Field(gt=0)
    # 4-bit base weights (QLoRA) where CUDA and bitsandbytes are present; LoRA elsewhere.
    qlora: bool = False
    # Recompute activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or not all(name.strip() for name in value)):
            raise ValueError("list at least one module name, or write all-linear")
        return value


class Preset(_Strict):
    alias: str
    hub_id: str
    parameters: int = Field(gt=0)
    family: str
    tasks: list[Task] = Field(min_length=1)
    license: str
    gated: bool
    context_length: int = Field(ge=8)
    vram_min_gb: float = Field(gt=0)
    vram_recommended_gb: float = Field(gt=0)
    ram_min_gb: float = Field(gt=0)
    ram_recommended_gb: float = Field(gt=0)
    cpu_acceptable: bool
    quality: int = Field(ge=1, le=5)
    speed: int = Field(ge=1, le=5)
    chat_template: TemplateFamily
    description: str = Field(min_length=1, max_length=160)
    finetune: FinetuneDefaults
    # The shape fields of the model's config.json, so memory is estimated offline.
    config: dict[str, Any]
    source: str = "foundry"  # where the preset was read from: "foundry" or a user's file

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not _ALIAS.match(value):
            raise ValueError(f"alias {value!r}: use lower-case letters, digits and . : _ - (like qwen2.5:1.5b)")
        return value

    @field_validator("hub_id")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        if not _HUB_OR_TINY.match(value):
            raise ValueError(f"hub_id {value!r}: expected a Hugging Face id org/name (or tiny:NAME)")
        return value

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value.strip():
            raise ValueError("the description is one line")
        return value.strip()

    @field_validator("config")
    @classmethod
    def _shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        from foundry.registry.memory import shape_from_config

        shape_from_config(value)  # raises ValueError naming the missing field
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        if self.vram_min_gb > self.vram_recommended_gb:
            raise ValueError(f"vram_min_gb {self.vram_min_gb} is above vram_recommended_gb {self.vram_recommended_gb}")
        if self.ram_min_gb > self.ram_recommended_gb:
            raise ValueError(f"ram_min_gb {self.ram_min_gb} is above ram_recommended_gb {self.ram_recommended_gb}")
        if self.finetune.max_length > self.context_length:
            raise ValueError(f"finetune.max_length {self.finetune.max_length} is above the model's context_length {self.context_length}")
        return self

    @property
    def is_tiny(self) -> bool:
        return self.hub_id.startswith("tiny:")

    @property
    def exporter(self) -> Family | None:
        """Which exporter publishes this model, from the architecture its config records
        (foundry/exporters.py); None when neither does, or when the config names none."""
        return family_of(self.config)

    @property
    def web(self) -> bool:
        """Whether its published graphs are proven in transformers.js."""
        return self.exporter is not None and self.exporter.web


class RegistryFile(_Strict):
    """One presets file: the package's, or a user's (which may hold presets only)."""

    version: Literal[1] = 1
    # Settings for a model no preset knows (a local folder, an unlisted hub id).
    defaults: FinetuneDefaults | None = None
    presets: dict[str, dict[str, Any]] = {}
