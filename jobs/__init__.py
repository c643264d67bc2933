"""The workloads, run inside the stage containers or as local subprocesses of `foundry run`.

- `stages/`: merge, finetune, evaluate, quantize, publish; one module each, behind one
  entry (`entry.py`, `foundry-stage SPEC.json`) that fetches inputs and commits outputs;
- `driver.py`: the in-cluster driver that creates each stage Job when its inputs are committed;
- `steps.py`: a stage's heavy steps in processes of their own, with their peak memory;
- the toolkits the stages use: `onnx/` (export, the reference, variants, chunked data, decoding),
  `finetuning/` (datasets, batches, the training loop), `evaluation/` (suites and scoring),
  `sources/` (model references to local folders), `tiny/` (the `tiny:` models);
- `tools/`: what `foundry query` and `foundry bench-variants` run.
"""
