"""Foundry: model recipes become web-ready models, on one machine or as Kubernetes Jobs.

This package is the submitter. It must stay importable without torch, transformers or
mergekit: those live in `jobs/`, which runs inside the stage containers.
"""

__version__ = "0.1.0"
