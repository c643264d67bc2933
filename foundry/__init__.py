"""Foundry: model recipes become web-ready models, on one machine or as Kubernetes Jobs.

This package is the submitter. It must stay importable without torch, transformers or
mergekit: those live in `jobs/`, which runs inside the stage containers.
"""

import os

__version__ = "0.1.0"

# pydantic 2.10 re-validates every schema it generates for itself, a consistency check of
# its own internals that costs `foundry lint` a sixth of its start-up; skip it.
os.environ.setdefault("PYDANTIC_SKIP_VALIDATING_CORE_SCHEMAS", "1")
