"""PNG charts for reports: compare, bench-variants and sweeps.

matplotlib is imported inside each function (about half a second), so `foundry --help` and
every command that draws nothing never pay for it. Figures are drawn with the Agg canvas
directly, not through pyplot: no global backend switch, no figure registry to leak, and it
works on a laptop or a CI runner without a display. PNGs carry no timestamp or software
version, so the same numbers give the same bytes, and each is written through a temporary
file and renamed, so a half-drawn chart is never visible.
"""

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry import temporaries
from foundry.reports import number

PLAIN = "#8da0cb"
HIGHLIGHT = "#e4572e"
_PANEL_COLUMNS = 3

Point = tuple[float | str, float | None]


@dataclass(frozen=True)
class BarPanel:
    """One small bar chart: a bar per label; highlighted bars are the best (or tied best)."""

    title: str
    labels: Sequence[str]
    values: Sequence[float | None]
    highlight: frozenset[int] = field(default_factory=frozenset)
    note: str = ""


def bar_panels(panels: Sequence[BarPanel], path: Path, *, title: str) -> Path:
    """Small multiples, one panel per quantity: metrics on different scales (an accuracy, a
    latency, a size) each get their own axis instead of being squashed onto one."""
    if not panels:
        raise ValueError("bar_panels needs at least one panel")
    figure = _figure(*_grid_size(len(panels), per_width=4.2, per_height=3.2))
    columns = min(_PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    for index, panel in enumerate(panels):
        _draw_bars(figure.add_subplot(rows, columns, index + 1), panel)
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def line_chart(x_label: str, y_label: str, points: Sequence[Point] | Mapping[str, Sequence[Point]], path: Path, *, title: str | None = None, best: float | str | None = None) -> Path:
    """A metric against a parameter (a sweep's `parameters.t`, say): one line, or one per
    series when `points` maps series names to points. Numeric x values are placed to scale;
    any other x values (strings) are categories in the order given. `best` marks that x."""
    series = dict(points) if isinstance(points, Mapping) else {"": list(points)}
    if not any(series.values()):
        raise ValueError("line_chart needs at least one point")
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for line in series.values() for x, _ in line)
    categories: list[Any] = [] if numeric else list(dict.fromkeys(x for line in series.values() for x, _ in line))
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    for name, line in series.items():
        ordered = sorted(line, key=lambda point: point[0]) if numeric else list(line)
        xs = [x if numeric else categories.index(x) for x, _ in ordered]
        ys = [math.nan if y is None else y for _, y in ordered]
        axes.plot(xs, ys, marker="o", linewidth=1.5, label=name or None)
        for x, (raw_x, y) in zip(xs, ordered, strict=True):
            if best is not None and raw_x == best and y is not None:
                axes.plot([x], [y], marker="*", markersize=16, color=HIGHLIGHT, zorder=3)
                axes.annotate(f"best: {number(y)}", (x, y), textcoords="offset points", xytext=(0, 10), ha="center", fontsize=9, color=HIGHLIGHT)
    if not numeric:
        axes.set_xticks(range(len(categories)), [str(x) for x in categories])
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.margins(y=0.15)        # room for the best point's label
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=8)
    axes.set_title(title or f"{y_label} by {x_label}", fontsize=11)
    return _save(figure, path)


def _grid_size(count: int, *, per_width: float, per_height: float) -> tuple[float, float]:
    columns = min(_PANEL_COLUMNS, count)
    return per_width * columns, per_height * math.ceil(count / columns) + 0.6


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw_bars(axes: Any, panel: BarPanel) -> None:
    positions = range(len(panel.labels))
    heights = [0.0 if value is None else value for value in panel.values]
    colors = [HIGHLIGHT if index in panel.highlight else PLAIN for index in positions]
    bars = axes.bar(positions, heights, color=colors)
    for bar, value in zip(bars, panel.values, strict=True):
        axes.annotate("n/a" if value is None else number(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      textcoords="offset points", xytext=(0, 2), ha="center", va="bottom", fontsize=8)
    rotate = len(panel.labels) > 3 or max((len(label) for label in panel.labels), default=0) > 12
    axes.set_xticks(list(positions), list(panel.labels), rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    axes.set_title(panel.title + (f"\n({panel.note})" if panel.note else ""), fontsize=9)
    axes.margins(y=0.15)
    axes.grid(axis="y", alpha=0.3)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporaries.beside(path)
    try:
        figure.savefig(temporary, format="png", metadata={"Software": None})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
