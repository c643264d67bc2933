"""Gated hub models: say that a token is needed, and how to give one, before any download.

A download of a gated model without a token fails only after the stages before it ran;
the planner asks here first and warns, so the fix comes while nothing has started.
"""

import os
from pathlib import Path

from foundry import modelref
from foundry.registry.load import Registry

TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def has_hub_token() -> bool:
    if any(os.environ.get(name) for name in TOKEN_ENVS):
        return True
    token_file = os.environ.get("HF_TOKEN_PATH") or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser() / "token"
    return Path(token_file).expanduser().is_file()


def how_to_provide(hub_id: str) -> str:
    return (
        f"accept its licence at https://huggingface.co/{hub_id}, then set HF_TOKEN here (or run `hf auth login`); "
        "in a cluster, put the token in a Secret (kubectl create secret generic hf-token --from-literal=HF_TOKEN=hf_...) "
        "and name it in the chart's huggingface.tokenSecret.name"
    )


def gated_warnings(references: list[str], registry: Registry) -> list[str]:
    """One line per gated hub model that would be downloaded without a token."""
    if has_hub_token():
        return []
    lines = []
    for reference in references:
        ref = modelref.parse(reference)
        preset = registry.by_model(reference) if ref.kind == "hub" else None
        if preset is None or not preset.gated or ref.config() is not None:  # a cached model needs no download
            continue
        lines.append(f"model {preset.hub_id} ({preset.alias}) is gated on the Hugging Face hub and no token is set: {how_to_provide(preset.hub_id)}")
    return lines
