"""A sweep's report, from its document (foundry.sweep.sequence.document): sweep.json, sweep.md and
sweep.png, the selection metric plotted against the swept parameter.

With one swept path the chart has one line and the winner starred; with several, the first
path is the x axis and each combination of the others is a line of its own.
"""

import json
from pathlib import Path
from typing import Any

from foundry.reports import markdown_table, number, write_json, write_text

JSON_FILE = "sweep.json"
MARKDOWN_FILE = "sweep.md"
CHART_FILE = "sweep.png"


def write_report(sweep: dict[str, Any], folder: Path) -> list[Path]:
    """The report's files in `folder`; the chart only when there is a selection metric to plot."""
    written = [write_json(folder / JSON_FILE, sweep)]
    chart = _chart(sweep, folder / CHART_FILE)
    written.append(write_text(folder / MARKDOWN_FILE, markdown(sweep, chart.name if chart else None)))
    return written + ([chart] if chart else [])


def markdown(sweep: dict[str, Any], chart: str | None = None) -> str:
    select = sweep["select"]
    metric = select["metric"] if select else "metric"
    lines = [f"# Sweep of {sweep['recipe']}", ""]
    lines.append(f"State: **{sweep['state']}**" + (f": {sweep['reason']}" if sweep.get("reason") else ""))
    lines.append("")
    lines.append(f"Selected by {metric} ({select['mode']}); ties go to the first point in grid order." if select else "No `sweep.select`: every point explored, nothing selected or published.")
    distinct, across = sweep["distinct_explored_stages"], sweep["explored_stages_across_points"]
    lines.append(f"{sweep['stage_runs']} stage run(s); the points explore {distinct} distinct stage key(s) among {across} planned across points.")
    lines.append("")
    headers = ["#", *sweep["grid"], metric, "ran", "cached", "shared", "winner"]
    rows = []
    for point in sweep["points"]:
        counts = [str(point[name]) for name in ("ran", "cached", "shared")]
        rows.append([str(point["index"] + 1), *(_text(point["point"].get(path)) for path in sweep["grid"]), number(point["metric"]), *counts, "★" if point["winner"] else ""])
    lines.append(markdown_table(headers, rows, right=[True, *([False] * len(sweep["grid"])), True, True, True, True, False]))
    winner = sweep.get("winner")
    if winner:
        finished = ", ".join(f"{key} {outcome}" for key, outcome in winner["outcomes"].items()) or "no stage after evaluate"
        lines.append(f"Winner: point {winner['index'] + 1} ({winner['label']}), {metric} = {number(winner['metric'])}; {finished}.")
        lines.append("")
    if chart:
        lines.append(f"![{metric} by {sweep['grid'][0]}]({chart})")
        lines.append("")
    return "\n".join(lines)


def _chart(sweep: dict[str, Any], path: Path) -> Path | None:
    select = sweep["select"]
    points = sweep["points"]
    if not select or all(point["metric"] is None for point in points) or not sweep["grid"]:
        return None
    from foundry.plots import line_chart

    first, rest = sweep["grid"][0], sweep["grid"][1:]
    winner = sweep.get("winner")
    if not rest:
        line = [(_x(point["point"][first]), point["metric"]) for point in points]
        return line_chart(first, select["metric"], line, path, title=f"{sweep['recipe']}: {select['metric']} by {first}", best=_x(winner["point"][first]) if winner else None)
    series: dict[str, list[tuple[float | str, float | None]]] = {}
    for point in points:
        name = ", ".join(f"{other}={_text(point['point'][other])}" for other in rest)
        series.setdefault(name, []).append((_x(point["point"][first]), point["metric"]))
    return line_chart(first, select["metric"], series, path, title=f"{sweep['recipe']}: {select['metric']} by {first}")


def _x(value: Any) -> float | str:
    """A grid value as a chart position: numbers to scale, anything else a category."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else _text(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
