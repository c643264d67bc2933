"""`foundry bench-variants TARGET`: the table on the terminal, and bench-variants.json, .md
and .png in --out. The measuring (ONNX Runtime) is in jobs/tools/bench_variants.py, imported here
only when the command runs."""

from pathlib import Path

import typer

from foundry.plots import bar_panels
from foundry.reports import print_table, write_json, write_text


def bench_variants_command(target: str, suites: list[str], limit: int | None, tokens: int, out: Path, store_flag: str | None) -> None:
    from foundry.commands.query import resolve_model
    from jobs.tools import bench_variants

    folder = resolve_model(target, store_flag, trust_remote_code=False)
    report = bench_variants.bench(folder, suites=suites or None, limit=limit, tokens=tokens)
    headers, rows = bench_variants.table(report)
    print_table(f"variants of {target} (Δ: against {report['reference']})", headers, rows, right=[False] + [True] * (len(headers) - 1))
    written = [
        write_json(out / "bench-variants.json", report),
        write_text(out / "bench-variants.md", bench_variants.markdown(report)),
        bar_panels(bench_variants.chart_panels(report), out / "bench-variants.png", title=f"variants of {target}"),
    ]
    typer.echo("wrote " + ", ".join(str(path) for path in written), err=True)

