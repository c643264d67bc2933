"""`foundry-stage SPEC.json`: the one entry of every stage, in a container or locally.

It resolves the spec's inputs to local folders (each committed key re-hashed against its
marker first: a damaged one is never used), gives the stage an empty staging folder, and
commits that folder with its marker only when the stage returned. Exit codes: 0 done,
2 bad input or a damaged input key (a UserError: no retry fixes either, so the cluster
fails such a pod at once instead of retrying it), 1 anything else.
"""

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foundry.errors import USER_ERROR_EXIT_CODE, UserError
from foundry.stagespec import StageSpec
from foundry.store import build_record, open_store
from jobs.sources.resolve import materialize

StageFunction = Callable[[StageSpec, dict[str, Path], Path], dict[str, Any]]
LOG = logging.getLogger("foundry.stage")
# Set to a stage name to kill that stage after it wrote its output, before it commits.
FAULT_BEFORE_COMMIT = "FOUNDRY_FAULT_BEFORE_COMMIT"


def stage_function(name: str) -> StageFunction:
    return importlib.import_module(f"jobs.stages.{name}").run


def run_stage(spec: StageSpec) -> dict[str, Any]:
    store = open_store(spec.store)
    started = time.time()
    inputs: dict[str, Path] = {}
    for name, source in spec.inputs.items():
        if source.key is not None:
            if not store.is_committed(spec.recipe, source.key):
                raise UserError(f"stage {spec.key}: input {name} ({source.key}) is not committed in {store.url}; run the stages before it first")
            inputs[name] = store.fetch(spec.recipe, source.key)
        else:
            inputs[name] = materialize(source.model or "", allow_pickle=bool(spec.params.get("allow_pickle")), trust_remote_code=bool(spec.params.get("trust_remote_code")))
    staging = store.new_staging(spec.recipe, spec.key)
    LOG.info("stage %s: writing to %s", spec.key, staging)
    result = stage_function(spec.stage)(spec, inputs, staging)
    if os.environ.get(FAULT_BEFORE_COMMIT) == spec.stage:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash at the worst moment, for tests
    record = build_record(
        staging, key=spec.key, stage=spec.stage, recipe=spec.recipe, started=started,
        extra={"params": spec.params, "inputs": {k: v.model_dump(exclude_none=True) for k, v in spec.inputs.items()}, "result": result},
    )
    return store.commit(spec.recipe, spec.key, staging, record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foundry-stage", description="Run one Foundry stage from its spec.")
    parser.add_argument("spec", type=Path, help="the stage spec (JSON)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        record = run_stage(StageSpec.read(args.spec))
    except UserError as error:
        if args.debug:
            traceback.print_exc()
        for line in error.lines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    print(json.dumps({"committed": record["key"], "seconds": record["seconds"], "size_bytes": record["size_bytes"]}))
