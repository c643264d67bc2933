"""A cluster run's status, kept in the store beside its artifacts.

The in-cluster driver writes it after every change it sees, so `foundry status` can answer
from the store alone when the cluster is out of reach (or its Jobs are long gone). A run's
id is its driver Job's name (the chart names the plan's ConfigMap the same). The document
lives at `_runs/<run-id>/status.json`: a recipe name must start with a letter or digit, so
the folder never mixes with a recipe's stage keys.
"""

import time
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from foundry.store import Store

# "gated": not run because an evaluation before it missed its gate (foundry/gate.py).
StageState = Literal["pending", "running", "succeeded", "failed", "cached", "cancelled", "gated"]
# "unknown" only in a view read back from a cluster whose driver Job is gone; never saved.
RunState = Literal["running", "succeeded", "failed", "cancelled", "gated", "unknown"]
RUNS_FOLDER = "_runs"


class StageStatus(BaseModel):
    stage: str
    key: str
    job: str
    state: StageState = "pending"
    pod: str | None = None
    started: str | None = None
    finished: str | None = None
    reason: str | None = None
    log_tail: list[str] = []

    @property
    def seconds(self) -> float | None:
        return _seconds(self.started, self.finished)


class RunStatus(BaseModel):
    run: str
    recipe: str
    recipe_hash: str
    namespace: str
    store: str
    state: RunState = "running"
    started: str
    updated: str
    finished: str | None = None
    reason: str | None = None  # why a run failed outside its stages (its driver's pod cannot start)
    stages: list[StageStatus]

    @property
    def seconds(self) -> float | None:
        return _seconds(self.started, self.finished)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def document_path(run: str) -> str:
    return f"{RUNS_FOLDER}/{run}/status.json"


def save(store: Store, status: RunStatus) -> None:
    status.updated = now()
    store.put_document(document_path(status.run), status.model_dump())


def load(store: Store, run: str) -> RunStatus | None:
    document = store.get_document(document_path(run))
    return None if document is None else RunStatus.model_validate(document)


def recent(store: Store) -> list[RunStatus]:
    """Every run the store has a status for, newest first."""
    paths = [path for path in store.list_documents(RUNS_FOLDER) if path.endswith("/status.json")]
    runs = [RunStatus.model_validate(document) for path in paths if (document := store.get_document(path)) is not None]
    return sorted(runs, key=lambda status: status.started, reverse=True)


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started:
        return None
    end = _parse(finished) if finished else datetime.now().astimezone()
    return max(0.0, (end - _parse(started)).total_seconds())


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
