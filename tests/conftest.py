"""Shared fixtures. Tiny models are cached under .foundry/test-cache so a second run is fast."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FOUNDRY_CACHE", str(REPO / ".foundry" / "test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def repo() -> Path:
    return REPO
