"""Every model a recipe's mergekit part names, wherever mergekit lets it be written."""

from collections.abc import Iterator
from typing import Any

from foundry.recipe.schema import Recipe
from foundry.recipe.yamlsource import Loc


def model_references(recipe: Recipe) -> Iterator[tuple[Loc, str | None]]:
    """(field path, reference text or None when the field holds no reference)."""
    for index, model in enumerate(recipe.models or []):
        yield ("models", index, "model"), _reference_text(model.get("model"))
    if recipe.base_model is not None:
        yield ("base_model",), _reference_text(recipe.base_model)
    for s_index, slice_ in enumerate(recipe.slices or []):
        for index, source in enumerate(slice_.get("sources") or []):
            yield ("slices", s_index, "sources", index, "model"), _reference_text(source.get("model") if isinstance(source, dict) else None)


def distinct_sources(recipe: Recipe) -> list[str]:
    """The referenced models, each once, in the order the recipe names them."""
    seen: list[str] = []
    for _, text in model_references(recipe):
        if text and text not in seen:
            seen.append(text)
    return seen


def _reference_text(value: Any) -> str | None:
    """mergekit accepts `model: org/name` and `model: {model: {path: ...}, lora: ...}`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("model", value.get("path"))
        if isinstance(inner, dict):
            inner = inner.get("path")
        return inner if isinstance(inner, str) else None
    return None
