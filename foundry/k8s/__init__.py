"""Foundry's side of the Kubernetes API: connecting, applying, and reading Jobs and runs back.

Everything goes through the official `kubernetes` client's plain calls, each wrapped so
that a refusal from the cluster becomes one line that says what to do (see errors.py).
Nothing here is imported by `foundry --help`, `lint` or `render`.
"""
