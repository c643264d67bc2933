"""`foundry compare`: evaluation results side by side, the winner per metric, deltas.

An input is whatever a user has at hand after a few runs: a `metrics.json`, an evaluate
key's folder, `RECIPE/evaluate-<hash>` in the store, a local run's folder (`.foundry/runs/...`
or just its name), or a cluster run's id. Each resolves to the flat metrics the evaluate
stage wrote (foundry/metrics.py). Light imports only: this runs on a laptop.

Which way is better is known for the metrics Foundry writes: higher for accuracies, match
and success rates and throughput, lower for anything measuring latency, time, size or loss.
A metric whose direction is not known is shown without a winner rather than guessed.
"""

import fnmatch
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from foundry.errors import UserError
from foundry.metrics import METRICS_FILE, flat_metrics, metric_value, read_metrics
from foundry.plots import BarPanel
from foundry.reports import markdown_table, number
from foundry.runstatus import load as load_run_status
from foundry.stagespec import StageSpec
from foundry.store import SUCCESS_MARKER, Store, open_store, resolve_store_url

Direction = Literal["higher", "lower"]

HIGHER_IS_BETTER = frozenset({"acc", "acc_norm", "exact_match", "success_rate", "tokens_per_second"})
LOWER_IS_BETTER_WORDS = frozenset({"latency", "seconds", "size", "loss"})
DEFAULT_RUNS_DIR = Path(".foundry/runs")
RUN_SUMMARY = "summary.json"
EVALUATE = "evaluate"
_RUN_TIMESTAMP = re.compile(r"-\d{8}-\d{6}$")      # foundry run names its folder <recipe>-YYYYmmdd-HHMMSS
_DONE_STATES = ("succeeded", "cached")


@dataclass(frozen=True)
class Input:
    """One resolved input: where its metrics came from, and the label it is shown under
    (made unique across the inputs once all are resolved)."""

    given: str
    kind: str              # metrics file, key folder, store key, run folder, run
    source: str            # the file or key the metrics were read from
    label: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class MetricRow:
    name: str
    direction: Direction | None
    values: list[float | None]      # per input, in input order
    deltas: list[float | None]      # value minus the first input's value
    winners: list[int]              # indices of the best input(s): one is a winner, several a tie

    @property
    def outcome(self) -> str:
        if self.direction is None:
            return "no known direction"
        if len(self.winners) > 1:
            return "tie"
        return "winner" if self.winners else "fewer than two values"


@dataclass(frozen=True)
class Comparison:
    inputs: list[Input]
    rows: list[MetricRow]

    @property
    def labels(self) -> list[str]:
        return [item.label for item in self.inputs]

    def to_json(self) -> dict[str, Any]:
        labels = self.labels
        return {
            "baseline": labels[0],
            "inputs": [{"label": item.label, "input": item.given, "kind": item.kind, "source": item.source} for item in self.inputs],
            "metrics": [
                {
                    "name": row.name,
                    "direction": row.direction,
                    "values": dict(zip(labels, row.values, strict=True)),
                    "deltas": dict(zip(labels, row.deltas, strict=True)),
                    "outcome": row.outcome,
                    "winners": [labels[index] for index in row.winners],
                }
                for row in self.rows
            ],
            "wins": self.wins(),
        }

    def wins(self) -> dict[str, int]:
        """Metrics each input won outright (ties are nobody's win)."""
        counts = Counter(row.winners[0] for row in self.rows if row.outcome == "winner")
        return {label: counts.get(index, 0) for index, label in enumerate(self.labels)}


def direction(metric: str) -> Direction | None:
    """From the metric's own name, the part after `<suite>.`: `acc_norm` up, `mean_latency_s` down."""
    leaf = metric.rsplit(".", 1)[-1]
    if leaf in HIGHER_IS_BETTER:
        return "higher"
    if LOWER_IS_BETTER_WORDS & set(leaf.split("_")):
        return "lower"
    return None


def compare(given: list[str], *, metrics: list[str] | None = None, store_flag: str | None = None, runs_dir: Path = DEFAULT_RUNS_DIR) -> Comparison:
    if len(given) < 2:
        raise UserError(f"compare needs at least two inputs to compare, got {len(given)}; give metrics.json files, evaluate keys (RECIPE/evaluate-...), run folders or run ids")
    resolver = _Resolver(store_flag, runs_dir)
    found = [resolved for item in given for resolved in resolver.resolve(item)]
    inputs = [replace(item, label=label) for item, label in zip(found, _unique([item.label for item in found]), strict=True)]
    names = _select(inputs, metrics)
    return Comparison(inputs, [_row(name, inputs) for name in names])


def _row(name: str, inputs: list[Input]) -> MetricRow:
    values = [_finite(item.metrics.get(name)) for item in inputs]
    first = values[0]
    # 12 significant digits: 0.6 - 0.5 is reported as 0.1, not 0.09999999999999998
    deltas = [None if first is None or value is None else float(f"{value - first:.12g}") for value in values]
    way = direction(name)
    present = [(index, value) for index, value in enumerate(values) if value is not None]
    winners: list[int] = []
    if way is not None and len(present) >= 2:
        best = (max if way == "higher" else min)(value for _, value in present)
        winners = [index for index, value in present if math.isclose(value, best, rel_tol=1e-9, abs_tol=1e-12)]
    return MetricRow(name, way, values, deltas, winners)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _select(inputs: list[Input], patterns: list[str] | None) -> list[str]:
    """Every metric any input has, sorted (a suite's metrics stay together), or only those
    the --metric names or shell patterns (`arc_easy.*`) pick, in the order given."""
    every = sorted({name for item in inputs for name in item.metrics})
    if not every:
        raise UserError("compare: none of the inputs has any metric; " + ", ".join(item.given for item in inputs))
    if not patterns:
        return every
    chosen: list[str] = []
    union = {name: 0.0 for name in every}
    for pattern in patterns:
        matched = fnmatch.filter(every, pattern) if any(char in pattern for char in "*?[") else [pattern] if pattern in union else []
        if not matched:
            metric_value(union, pattern, f"--metric {pattern}")       # raises, with the closest names
        chosen += [name for name in matched if name not in chosen]
    return chosen


def _unique(labels: list[str]) -> list[str]:
    """Labels as given, with a repeated one numbered (`a`, `a (2)`) so each column is told apart."""
    seen: Counter[str] = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


class _Resolver:
    """Turns each argument into metrics; the store is opened only when an argument needs it."""

    def __init__(self, store_flag: str | None, runs_dir: Path) -> None:
        self.store_flag = store_flag
        self.runs_dir = runs_dir
        self._stores: dict[str, Store] = {}

    def store(self, url: str | None = None) -> Store:
        url = url or resolve_store_url(self.store_flag)
        if url not in self._stores:
            self._stores[url] = open_store(url)
        return self._stores[url]

    def resolve(self, given: str) -> list[Input]:
        path = Path(given).expanduser()
        if path.is_file():
            return [Input(given, "metrics file", str(path), _file_label(path), read_metrics(path))]
        if path.is_dir():
            return self._folder(given, path)
        if "/" not in given and (self.runs_dir / given / RUN_SUMMARY).is_file():
            return self._run_folder(given, self.runs_dir / given)
        if given.endswith(".json"):
            raise UserError(f"{given}: no such file; give the path of an evaluate stage's {METRICS_FILE}")
        recipe, slash, key = given.partition("/")
        if slash and "/" not in key:
            found = self._store_key(given, recipe, key)
            if found is not None:
                return [found]
        elif not slash:
            found_run = self._store_run(given)
            if found_run is not None:
                return found_run
        raise UserError(
            f"{given}: no such file or folder, no committed key and no run of that name in {self.store().url}; "
            f"give a {METRICS_FILE}, an evaluate key folder, RECIPE/evaluate-<hash> (see foundry plan), a run folder or a run id (see foundry runs)"
        )

    def _folder(self, given: str, path: Path) -> list[Input]:
        if (path / RUN_SUMMARY).is_file():
            return self._run_folder(given, path)
        marker = _read_marker(path)
        if marker is None and (path / METRICS_FILE).is_file() and re.fullmatch(r"evaluate-[0-9a-f]{12}", path.name):
            raise UserError(f"{given}: an evaluate key without {SUCCESS_MARKER}: it never committed (a crash or a run in progress); re-run the recipe")
        if marker is not None and marker.get("stage") != EVALUATE:
            raise UserError(f"{given}: a {marker.get('stage')} key, not an evaluate key; compare reads the metrics an evaluate stage wrote")
        if marker is None and not (path / METRICS_FILE).is_file():
            raise UserError(f"{given}: a folder with no {METRICS_FILE} and no {RUN_SUMMARY}; give an evaluate key folder, a run folder or a {METRICS_FILE}")
        label = f"{marker['recipe']}/{marker['key']}" if marker and marker.get("recipe") and marker.get("key") else path.resolve().name
        return [Input(given, "key folder", str(path), label, read_metrics(path))]

    def _store_key(self, given: str, recipe: str, key: str) -> Input | None:
        store = self.store()
        if not store.is_committed(recipe, key):
            return None
        return Input(given, "store key", store.location(recipe, key), given, _key_metrics(given, store, recipe, key))

    def _run_folder(self, given: str, folder: Path) -> list[Input]:
        """A `foundry run` folder: its summary names the keys; the recipe and store come from
        a stage spec it wrote (a run whose stages were all cached wrote none: then the folder's
        name and --store)."""
        try:
            summary = json.loads((folder / RUN_SUMMARY).read_text())
            keys = [entry["key"] for entry in summary if entry["stage"] == EVALUATE]
        except (ValueError, TypeError, KeyError) as error:
            raise UserError(f"{given}: {RUN_SUMMARY} is not a run summary ({type(error).__name__}: {error})") from None
        if not keys:
            raise UserError(f"{given}: this run has no evaluate stage, so no metrics; add `evaluate:` to its recipe and run it again")
        specs = sorted(folder.glob("*.spec.json"), key=lambda path: path.name != f"{EVALUATE}.spec.json")
        spec = StageSpec.read(specs[0]) if specs else None
        recipe = spec.recipe if spec else _RUN_TIMESTAMP.sub("", folder.resolve().name)
        store = self.store(spec.store if spec else None)
        label = folder.resolve().name
        return [self._committed(given, "run folder", store, recipe, key, label if len(keys) == 1 else f"{label}/{key}") for key in keys]

    def _store_run(self, given: str) -> list[Input] | None:
        store = self.store()
        try:
            status = load_run_status(store, given)
        except ValueError:
            return None
        if status is None:
            return None
        stages = [stage for stage in status.stages if stage.stage == EVALUATE]
        if not stages:
            raise UserError(f"{given}: run of recipe {status.recipe} has no evaluate stage, so no metrics; add `evaluate:` to its recipe")
        for stage in stages:
            if stage.state not in _DONE_STATES:
                raise UserError(f"{given}: its evaluate stage {stage.key} is {stage.state}, not done; see foundry status {given}")
        return [self._committed(given, "run", store, status.recipe, stage.key, given if len(stages) == 1 else f"{given}/{stage.key}") for stage in stages]

    def _committed(self, given: str, kind: str, store: Store, recipe: str, key: str, label: str) -> Input:
        if not store.is_committed(recipe, key):
            raise UserError(f"{given}: its evaluate key {recipe}/{key} is not committed in {store.url}; re-run the recipe, or pass the store it used with --store")
        return Input(given, kind, f"{recipe}/{key}", label, _key_metrics(given, store, recipe, key))


def _key_metrics(given: str, store: Store, recipe: str, key: str) -> dict[str, float]:
    """From the key's marker, which carries the flat metrics: a bucket's key is not downloaded."""
    marker = store.marker(recipe, key) or {}
    if marker.get("stage") != EVALUATE:
        raise UserError(f"{given}: a {marker.get('stage')} key, not an evaluate key; compare reads the metrics an evaluate stage wrote")
    return flat_metrics(marker, f"{given} ({store.location(recipe, key)}/{SUCCESS_MARKER})")


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / SUCCESS_MARKER).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise UserError(f"{folder / SUCCESS_MARKER}: not valid JSON; the key is damaged, run `foundry verify {folder}`") from None
    return marker if isinstance(marker, dict) else None


def _file_label(path: Path) -> str:
    """The file's stem; for the usual `metrics.json`, the folder it is in (its key, or the
    recipe/key its marker names), since every evaluate stage names its file the same."""
    if path.stem != "metrics":
        return path.stem
    marker = _read_marker(path.parent)
    if marker and marker.get("recipe") and marker.get("key"):
        return f"{marker['recipe']}/{marker['key']}"
    return path.resolve().parent.name


# --- the report ----------------------------------------------------------------------------

_ARROWS = {"higher": " ↑", "lower": " ↓", None: ""}


def table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Headers and rows shared by the Markdown report and the terminal: each value with its
    delta against the first input, and who won."""
    labels = comparison.labels
    rows = []
    for row in comparison.rows:
        cells = [number(row.values[0])] + [
            number(value) + ("" if delta is None else f" ({number(delta, signed=True)})") for value, delta in zip(row.values[1:], row.deltas[1:], strict=True)
        ]
        rows.append([row.name + _ARROWS[row.direction], *cells, _verdict(row, labels)])
    return ["metric", *labels, "winner"], rows


def _verdict(row: MetricRow, labels: list[str]) -> str:
    if row.outcome == "winner":
        return labels[row.winners[0]]
    if row.outcome == "tie":
        return "tie: " + ", ".join(labels[index] for index in row.winners)
    return "—" if row.outcome == "fewer than two values" else "? (direction unknown)"


def markdown(comparison: Comparison) -> str:
    headers, rows = table(comparison)
    lines = ["# Comparison", "", f"Deltas in parentheses are against the first input, **{comparison.labels[0]}**.", ""]
    lines += [f"{index}. **{item.label}**: `{item.given}` ({item.kind}: {item.source})" for index, item in enumerate(comparison.inputs, 1)]
    lines += ["", markdown_table(headers, rows, right=[False] + [True] * len(comparison.inputs) + [False])]
    unknown = [row.name for row in comparison.rows if row.direction is None]
    lines.append(
        f"↑ higher is better ({', '.join(sorted(HIGHER_IS_BETTER))}); ↓ lower is better (metrics about {', '.join(sorted(LOWER_IS_BETTER_WORDS))}). "
        "Equal best values are a tie; a metric only one input has gets no winner."
    )
    if unknown:
        lines.append(f"No winner is named for {', '.join(unknown)}: which direction is better is not known for {'it' if len(unknown) == 1 else 'them'}.")
    wins = comparison.wins()
    lines += ["", "Metrics won: " + ", ".join(f"{label} {count}" for label, count in wins.items()) + f"; ties {sum(row.outcome == 'tie' for row in comparison.rows)}.", ""]
    return "\n".join(lines)


def chart_panels(comparison: Comparison) -> list[BarPanel]:
    notes = {"higher": "higher is better", "lower": "lower is better", None: "direction unknown: no winner"}
    return [BarPanel(row.name, comparison.labels, row.values, frozenset(row.winners), notes[row.direction]) for row in comparison.rows]
