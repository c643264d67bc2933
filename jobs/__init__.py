"""The stage workloads: merge, finetune, quantize, publish (evaluate later).

Each stage module exposes `run(spec, inputs, out) -> dict`: it reads its inputs from
local folders, writes its whole output into `out`, and returns a summary that is recorded
in the key's `_SUCCESS.json`. `jobs/entry.py` does the fetching and committing around it,
so a stage never touches the store itself.
"""
