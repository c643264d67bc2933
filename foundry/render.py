"""From recipes to the Kubernetes objects that run them: Python plans, Helm renders.

Python computes each recipe's plan (the stage DAG with its content-hash keys, and for a
sweep one plan per grid point) and hands it to the chart as `generated.plan` or
`generated.sweep`; Helm renders every object from `charts/foundry`, the stage Jobs included.
What comes out is exactly what `foundry submit` applies and what GitOps commits, as Helm
wrote it, in apply order: the same input gives the same bytes (nothing in the chart reads a
clock, and the plan's JSON has its keys sorted).

The library API (used by `foundry render` and `foundry submit`):
- `render_recipes(paths, ...)` / `render_recipe(path, ...)` -> `Rendered`, whose `objects`
  are in apply order and whose `yaml()` is the multi-document text.
- `schedule(path, cron=..., time_zone=...)`: the same with a CronJob instead of a driver Job.
"""

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from foundry import helm, modelref
from foundry.errors import UserError
from foundry.plan import Plan, plan, recipe_hash
from foundry.recipe.load import load_recipe
from foundry.recipe.references import distinct_sources
from foundry.recipe.schema import Recipe
from foundry.sweep.plan import expand

CHART_ENV = "FOUNDRY_CHART"
DEFAULT_NAMESPACE = "default"
APPLY_ORDER = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job", "CronJob")
# The API server refuses a ConfigMap whose data exceeds 1 MiB; a big sweep can get there.
CONFIGMAP_LIMIT = 1024 * 1024
# A document separator on a line of its own (block scalars, the plan's JSON among them, are indented), and an object's kind.
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_KIND = re.compile(r"^kind:\s*(\S+)", re.MULTILINE)
_RESOURCE_NAMES = {"cpu": "cpu", "memory": "memory", "gpu": "gpu", "ephemeral_storage": "ephemeralStorage"}


@dataclass(frozen=True)
class Document:
    source: str  # the chart template it came from, e.g. foundry/templates/run.yaml
    kind: str
    text: str  # the object as Helm rendered it: YAML, no trailing newline


@dataclass(frozen=True)
class Rendered:
    recipe: str
    release: str
    namespace: str
    documents: tuple[Document, ...]  # in the order to apply them
    warnings: tuple[str, ...] = ()

    @functools.cached_property
    def objects(self) -> list[dict[str, Any]]:
        """The objects, in the order to apply them."""
        return [_parse(document) for document in self.documents]

    def yaml(self) -> str:
        """Multi-document YAML as `helm template` prints it: Helm's own text, each object under its template."""
        return "".join(f"---\n# Source: {document.source}\n{document.text}\n" for document in self.documents)


def chart_path() -> Path:
    """The chart: $FOUNDRY_CHART, else the one beside this package in the repository."""
    return Path(os.environ.get(CHART_ENV) or Path(__file__).resolve().parent.parent / "charts" / "foundry")


def release_name(recipe: str) -> str:
    """A Helm release name from a recipe name: a DNS label, short enough for every object name."""
    return re.sub(r"[^a-z0-9-]+", "-", recipe.lower())[:42].strip("-")


def render_recipes(
    paths: Sequence[Path],
    *,
    values_files: Sequence[Path] = (),
    sets: Sequence[str] = (),
    namespace: str = DEFAULT_NAMESPACE,
    cron: str | None = None,
    time_zone: str | None = None,
) -> list[Rendered]:
    """Every recipe rendered with the same values; each recipe is loaded and checked first."""
    recipes = [load_recipe(path) for path in paths]
    values = helm.values_from_files(values_files, sets)
    if cron is not None:
        values = helm.merge_values(values, {"schedule": {"cron": cron}})
    if time_zone is not None:
        values = helm.merge_values(values, {"schedule": {"timeZone": time_zone}})
    runs = [(release_name(recipe.name), {"generated": generated_values(recipe)}) for recipe in recipes]
    rendered = helm.engine().template(chart_path(), values, runs, namespace=namespace)
    return [_collect(recipe, release, templates, namespace) for recipe, (release, _), templates in zip(recipes, runs, rendered, strict=True)]


def render_recipe(path: Path, **options: Any) -> Rendered:
    return render_recipes([path], **options)[0]


def schedule(path: Path, *, cron: str, time_zone: str | None = None, **options: Any) -> Rendered:
    """The CronJob that runs a recipe (its whole sweep grid, if it has one) on `cron`, with its ConfigMap and RBAC."""
    return render_recipe(path, cron=cron, time_zone=time_zone, **options)


def generated_values(recipe: Recipe) -> dict[str, str]:
    """The chart's `generated` values: the plan (plan.json), or for a sweep every point's plan (plans.json)."""
    if recipe.sweep is None:
        return {"plan": _json(_plan_document(plan(recipe), recipe)), "sweep": ""}
    plans = [{**_plan_document(plan(point.recipe), point.recipe), "point": point.point} for point in expand(recipe)]
    select = recipe.sweep.select.model_dump() if recipe.sweep.select else None
    return {"plan": "", "sweep": _json({"recipe": recipe.name, "recipe_hash": recipe_hash(recipe), "select": select, "plans": plans})}


def cluster_warnings(recipe: Recipe) -> list[str]:
    """Local paths in a recipe are this machine's; in a pod they name the container's own, throwaway, filesystem."""
    warnings = []
    if recipe.publish is not None:
        for field, location in (("publish.to", recipe.publish.to), ("publish.catalog", recipe.publish.catalog)):
            if location and not location.startswith("s3://"):
                warnings.append(f"recipe {recipe.name}: {field} {location} is a local path; in the cluster it is inside the stage's container and lost with it; use s3://")
    for reference in distinct_sources(recipe):
        if modelref.parse(reference).kind == "local":
            warnings.append(f"recipe {recipe.name}: model {reference} is a local path, which pods cannot read; use s3:// or a hub id")
    if recipe.finetune is not None and "://" not in recipe.finetune.dataset:
        warnings.append(f"recipe {recipe.name}: finetune.dataset {recipe.finetune.dataset} is a local path, which pods cannot read; use s3://")
    for index, suite in enumerate(recipe.evaluate.suites if recipe.evaluate else []):
        if not isinstance(suite, str) and "://" not in suite.jsonl:
            warnings.append(f"recipe {recipe.name}: evaluate.suites[{index}] {suite.jsonl} is a local path, which pods cannot read; use s3://")
    return warnings


def _collect(recipe: Recipe, release: str, templates: list[helm.Template], namespace: str) -> Rendered:
    """Helm's output cut into objects, in apply order. Kept as Helm's text, parsed only when asked:
    the text is already the same bytes for the same input, and 100 recipes render faster unparsed."""
    documents = []
    for source, text in templates:
        if not source.endswith(".txt"):
            for part in _SEPARATOR.split(text):
                if part.strip():
                    kind = _KIND.search(part)
                    documents.append(Document(source, kind[1] if kind else "", part.strip()))
    documents.sort(key=lambda document: APPLY_ORDER.index(document.kind) if document.kind in APPLY_ORDER else len(APPLY_ORDER))
    for document in documents:
        _check_size(document, recipe.name)
    return Rendered(recipe.name, release, namespace, tuple(documents), tuple(cluster_warnings(recipe)))


def _plan_document(the_plan: Plan, recipe: Recipe) -> dict[str, Any]:
    """A plan as the chart takes it: each stage's spec without the store (the chart's `store.url` fills it in)."""
    stages = []
    for planned in the_plan.stages:
        stages.append({
            "stage": planned.stage,
            "key": planned.key,
            "needs": list(dict.fromkeys([source.key for source in planned.inputs.values() if source.key] + list(planned.after))),
            "gate": dict(planned.gate),
            "spec": planned.spec(the_plan.recipe, "").model_dump(mode="json", exclude={"store"}, exclude_none=True),
            "resources": _resources(recipe, planned.stage),
        })
    return {"recipe": the_plan.recipe, "recipe_hash": the_plan.recipe_hash, "stages": stages}


def _resources(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The recipe's resources.<stage> in the chart's short form; the pool's defaults fill the rest."""
    wanted = getattr(recipe.resources, stage, None) if recipe.resources else None
    if wanted is None:
        return {}
    return {_RESOURCE_NAMES[name]: value for name, value in wanted.model_dump(exclude_none=True).items()}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _parse(document: Document) -> dict[str, Any]:
    return yaml.load(document.text, Loader=yaml.CSafeLoader)


def _check_size(document: Document, recipe: str) -> None:
    if document.kind != "ConfigMap" or len(document.text.encode()) <= CONFIGMAP_LIMIT:
        return  # a ConfigMap's data is never larger than its text
    data = _parse(document).get("data") or {}
    size = sum(len(key.encode()) + len(value.encode()) for key, value in data.items())
    if size > CONFIGMAP_LIMIT:
        raise UserError(f"recipe {recipe}: its plans take {size / 1024:.0f} KiB in their ConfigMap, over the 1024 KiB Kubernetes allows; split the sweep grid into smaller recipes")
