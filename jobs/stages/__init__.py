"""The five stages, one module each, every one exposing `run(spec, inputs, out) -> dict`.

`jobs/entry.py` resolves the inputs and commits `out` around the call, so a stage never
touches the store itself.
"""
