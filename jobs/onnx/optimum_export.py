"""The fp32 export by optimum-onnx, run by the optimum environment's own Python.

Never imported by Foundry's stage environment (which has transformers 5, where optimum
cannot run): `jobs/onnx/export.py` runs this file with the interpreter of
`jobs/onnx/optimum_env.py`. It writes `model.onnx` (and `model.onnx_data` past 2 GB).

optimum-onnx 0.1.0 exports `text-generation-with-past` as one graph (no separate
decoder / decoder-with-past / merged files; the past is empty on the first step).
"""

import argparse
import logging
import warnings
from pathlib import Path

TASK = "text-generation-with-past"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-remote-code", dest="trust_remote_code", action="store_false")
    args = parser.parse_args()

    import torch
    from optimum.exporters.onnx import main_export

    # Messages every export prints and no Foundry user can act on.
    warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("optimum").setLevel(logging.ERROR)
    main_export(
        str(args.model), output=args.out, task=TASK, dtype="fp32", framework="pt", library_name="transformers",
        local_files_only=True, trust_remote_code=args.trust_remote_code, do_validation=False, device="cpu",
    )
    produced = sorted(path.name for path in args.out.iterdir() if path.suffix == ".onnx")
    if produced != ["model.onnx"]:
        raise SystemExit(f"optimum-onnx wrote {produced} instead of one model.onnx for {TASK}")


if __name__ == "__main__":
    main()
