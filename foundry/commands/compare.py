"""`foundry compare A B ...`: the table on the terminal, and compare.json, compare.md and
compare.png in --out."""

from pathlib import Path

import typer

from foundry.compare import chart_panels, compare, markdown, table
from foundry.plots import bar_panels
from foundry.reports import print_table, write_json, write_text


def compare_command(inputs: list[str], out: Path, metrics: list[str], store_flag: str | None) -> None:
    comparison = compare(inputs, metrics=metrics or None, store_flag=store_flag)
    headers, rows = table(comparison)
    print_table(f"compare (deltas against {comparison.labels[0]})", headers, rows, right=[False] + [True] * len(comparison.inputs) + [False])
    written = [
        write_json(out / "compare.json", comparison.to_json()),
        write_text(out / "compare.md", markdown(comparison)),
        bar_panels(chart_panels(comparison), out / "compare.png", title=f"compare: {' vs '.join(comparison.labels)} (best per metric highlighted)"),
    ]
    typer.echo("wrote " + ", ".join(str(path) for path in written), err=True)
