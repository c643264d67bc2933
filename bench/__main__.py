"""Run every benchmark in turn: `python -m bench [NAME...]`."""

import importlib
import sys

BENCHMARKS = ("bench_cli", "bench_merge", "bench_render", "bench_s3", "bench_finetune", "bench_serve", "bench_evaluate", "bench_skills", "bench_browser", "bench_verify", "bench_scale")

for name in sys.argv[1:] or BENCHMARKS:
    importlib.import_module(f"bench.{name}").main()
