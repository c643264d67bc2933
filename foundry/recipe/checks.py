"""Checks that need more than a schema: mergekit's rules, model references, cross-field sense.

Everything here reads only the recipe, the `tiny:` catalogue and config files already on
disk, so `foundry lint` stays offline and fast. mergekit's own validation still runs in
the merge stage; these checks exist to fail before anything starts, with the line.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foundry import exporters, modelref, tiny_catalog
from foundry.metrics import BUILTIN_SUITES, GENERATION_METRICS, MULTIPLE_CHOICE_METRICS, suite_name
from foundry.recipe.merge_methods import METHODS, PARAMETER_RANGES, MergeMethod
from foundry.recipe.problems import Problem, did_you_mean
from foundry.recipe.references import model_references
from foundry.recipe.schema import MERGEKIT_KEYS, Recipe
from foundry.recipe.yamlsource import Loc


def check(recipe: Recipe) -> list[Problem]:
    problems = list(_merge_method(recipe))
    problems += _parameters(recipe)
    references = list(model_references(recipe))
    problems += _references(references)
    problems += _compatible_shapes(recipe, references)
    problems += _exportable(recipe, references)
    problems += _stage_sense(recipe)
    problems += _evaluate_sense(recipe)
    return problems


def _merge_method(recipe: Recipe) -> Iterator[Problem]:
    models = recipe.models or []
    if recipe.merge_method is None:
        if len(models) > 1 or recipe.slices:
            yield Problem(("merge_method",), f"several models but no merge_method; set one of: {', '.join(METHODS)}")
        return
    method = METHODS.get(recipe.merge_method)
    if method is None:
        hint = did_you_mean(recipe.merge_method, METHODS)
        yield Problem(("merge_method",), f"unknown merge method {recipe.merge_method!r}{hint}; available: {', '.join(METHODS)}")
        return
    if method.needs_base_model and recipe.base_model is None and not _slices_have_base(recipe):
        yield Problem(("base_model",), f"merge method {method.name} needs a base_model; name one of the models")
    if models:
        yield from _model_counts(recipe, method)
    global_parameters = recipe.parameters or {}
    for name in method.required:
        if name not in global_parameters and not _every_model_sets(recipe, name):
            yield Problem(("parameters",), f"merge method {method.name} needs parameter {name!r}")
    for name in method.per_model:
        if name in global_parameters:
            continue
        for index, model in enumerate(models):
            exempt = method.base != "ignored" and recipe.base_model is not None and model.get("model") == recipe.base_model
            if not exempt and name not in (model.get("parameters") or {}):
                yield Problem(("models", index), f"merge method {method.name} needs parameter {name!r} for each merged model; set it in this model's parameters or globally")


def _model_counts(recipe: Recipe, method: MergeMethod) -> Iterator[Problem]:
    """mergekit counts distinct inputs, the base model among them unless the method ignores it."""
    named = {json.dumps(model.get("model"), sort_keys=True, default=repr) for model in recipe.models or []}
    base = json.dumps(recipe.base_model, sort_keys=True, default=repr) if recipe.base_model is not None and method.base != "ignored" else None
    inputs = len(named | ({base} if base else set()))
    if method.model_count and inputs != method.model_count:
        yield Problem(("models",), f"merge method {method.name} merges exactly {method.model_count} models, got {inputs}")
    if inputs < method.min_models:
        yield Problem(("models",), f"merge method {method.name} merges at least {method.min_models} models (the base_model among them), got {inputs}")
    if method.non_base_count and len(named - {base}) != method.non_base_count:
        yield Problem(("models",), f"merge method {method.name} merges exactly {method.non_base_count} models besides the base_model, got {len(named - {base})}")


def _slices_have_base(recipe: Recipe) -> bool:
    return bool(recipe.slices) and all(s.get("base_model") for s in recipe.slices or [])


def _every_model_sets(recipe: Recipe, name: str) -> bool:
    return bool(recipe.models) and all(name in (m.get("parameters") or {}) for m in recipe.models or [])


def _parameter_blocks(recipe: Recipe) -> Iterator[tuple[Loc, dict[str, Any]]]:
    if recipe.parameters:
        yield ("parameters",), recipe.parameters
    for index, model in enumerate(recipe.models or []):
        if isinstance(model.get("parameters"), dict):
            yield ("models", index, "parameters"), model["parameters"]
    for s_index, slice_ in enumerate(recipe.slices or []):
        if isinstance(slice_.get("parameters"), dict):
            yield ("slices", s_index, "parameters"), slice_["parameters"]
        for index, source in enumerate(slice_.get("sources") or []):
            if isinstance(source, dict) and isinstance(source.get("parameters"), dict):
                yield ("slices", s_index, "sources", index, "parameters"), source["parameters"]


def _parameters(recipe: Recipe) -> Iterator[Problem]:
    method = METHODS.get(recipe.merge_method or "")
    for loc, block in _parameter_blocks(recipe):
        for name, value in block.items():
            if method is not None and name not in method.accepted:
                accepted = ", ".join(method.accepted) or "none"
                yield Problem((*loc, name), f"{method.name} takes no parameter {name!r}{did_you_mean(name, method.accepted)}; it takes: {accepted}")
                continue
            yield from _parameter_values((*loc, name), name, value)


def _parameter_values(loc: Loc, name: str, value: Any) -> Iterator[Problem]:
    """A value may be a number, a gradient list, or filters of {filter, value}."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        bounds = PARAMETER_RANGES.get(name)
        if bounds:
            low, high, low_inclusive = bounds
            below = value < low or (value == low and not low_inclusive)
            if below or value > high:
                opening = "[" if low_inclusive else "("
                yield Problem(loc, f"{name} must be in {opening}{low:g}, {high:g}], got {value}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            inner = item.get("value") if isinstance(item, dict) else item
            yield from _parameter_values((*loc, index), name, inner)
        return
    if isinstance(value, dict) and "value" in value:
        yield from _parameter_values((*loc, "value"), name, value["value"])
        return
    yield Problem(loc, f"{name} must be a number, a list of numbers (a gradient) or filters like [{{filter: mlp, value: 0.5}}], got {value!r}")


def _references(references: list[tuple[Loc, str | None]]) -> Iterator[Problem]:
    for loc, text in references:
        if not text:
            yield Problem(loc, "expected a model reference: tiny:NAME, org/name, s3://bucket/key or a local path")
            continue
        ref = modelref.parse(text)
        if ref.kind == "tiny" and tiny_catalog.lookup(text) is None:
            name = text.removeprefix(tiny_catalog.PREFIX)
            yield Problem(loc, f"unknown tiny model {name!r}{did_you_mean(name, tiny_catalog.CATALOG)}; available: {', '.join(tiny_catalog.CATALOG)}")
        elif ref.kind == "local" and (problem := ref.folder_problem()):
            yield Problem(loc, problem)


def _compatible_shapes(recipe: Recipe, references: list[tuple[Loc, str | None]]) -> Iterator[Problem]:
    """Vocab and hidden sizes must agree before mergekit spends minutes finding out."""
    if not recipe.merges or recipe.merge_method == "passthrough" and recipe.slices:
        return
    known: list[tuple[Loc, str, dict[str, Any]]] = []
    for loc, text in references:
        config = modelref.parse(text or "").config()
        if config is not None:
            known.append((loc, text or "", config))
    if len(known) < 2:
        return
    _, first_text, first = known[0]
    for loc, text, config in known[1:]:
        if config.get("model_type") != first.get("model_type") and recipe.merge_method != "passthrough":
            yield Problem(loc, f"architecture {config.get('model_type')} of {text} differs from {first.get('model_type')} of {first_text}; mergekit merges models of one architecture")
            continue
        for label, get in (("hidden size", modelref.hidden_size), ("vocab size", lambda c: c.get("vocab_size"))):
            if label == "vocab size" and recipe.tokenizer_source is not None:
                continue
            mine, theirs = get(config), get(first)
            if mine is not None and theirs is not None and mine != theirs:
                fix = "merge models of one architecture and size" if label == "hidden size" else "set tokenizer_source: union (or base) to reconcile vocabularies"
                yield Problem(loc, f"{label} {mine} of {text} does not match {theirs} of {first_text}; {fix}")


def _exportable(recipe: Recipe, references: list[tuple[Loc, str | None]]) -> Iterator[Problem]:
    """A family the quantize stage's exporters cannot take is refused here, not minutes into the run."""
    if recipe.quantize is None:
        return
    for loc, text in references:
        config = modelref.parse(text or "").config()
        if config is None:
            continue
        if exporters.family_of(config) is None:
            architecture = (config.get("architectures") or ["?"])[0]
            yield Problem(loc, f"{config.get('model_type')} ({architecture}) of {text} cannot be exported to ONNX for the web, so quantize would refuse it; supported: {exporters.supported_summary()}")
        elif problem := exporters.export_problem(config):
            yield Problem(loc, f"{text} cannot be exported to ONNX: {problem}, so quantize would refuse it")


def _stage_sense(recipe: Recipe) -> Iterator[Problem]:
    if recipe.publish is not None and recipe.quantize is None:
        yield Problem(("publish",), "publish needs ONNX variants to publish; add quantize: {variants: [q4]}")
    suites = _suite_names(recipe)
    if recipe.evaluate is not None:
        for metric in recipe.evaluate.gate:
            suite = metric.split(".", 1)[0]
            if suite not in suites:
                yield Problem(("evaluate", "gate", metric), f"gate names suite {suite!r}, which evaluate.suites does not list ({', '.join(sorted(suites))})")
    if recipe.sweep is not None:
        for field in recipe.sweep.grid:
            root = field.split(".", 1)[0]
            if root not in Recipe.model_fields or root in ("name", "sweep"):
                yield Problem(("sweep", "grid", field), f"cannot sweep over {field!r}: {root!r} is not a recipe key{did_you_mean(root, MERGEKIT_KEYS + ('finetune', 'quantize'))}")
        if recipe.sweep.select is not None and recipe.evaluate is None:
            yield Problem(("sweep", "select"), "select picks by a metric, but the recipe has no evaluate section")
        elif recipe.sweep.select is not None and recipe.sweep.select.metric.split(".", 1)[0] not in suites:
            suite = recipe.sweep.select.metric.split(".", 1)[0]
            listed = ", ".join(sorted(suites))
            yield Problem(("sweep", "select", "metric"), f"select names suite {suite!r}, which evaluate.suites does not list ({listed}); metrics are <suite>.<metric>, like arc_easy.acc_norm")
        if recipe.sweep.select is None and (recipe.quantize is not None or recipe.publish is not None):
            fix = "add select: {metric: <suite>.<metric>, mode: max} to pick it, or drop quantize and publish to only explore"
            yield Problem(("sweep",), f"a sweep quantizes and publishes only its best point; {fix}")
    if recipe.finetune is not None:
        dataset = recipe.finetune.dataset
        path = Path(os.path.expanduser(dataset))
        if "://" not in dataset and not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            yield Problem(("finetune", "dataset"), f"dataset file {dataset!r} {what}; check the path (read from the current directory)")


def _evaluate_sense(recipe: Recipe) -> Iterator[Problem]:
    """Suites that exist, with names that make unique metric names, and gates on metrics
    their suites give (the suite names a gate uses are checked in _stage_sense)."""
    if recipe.evaluate is None:
        return
    kinds: dict[str, tuple[str, ...]] = {}
    for index, suite in enumerate(recipe.evaluate.suites):
        name = suite_name(suite if isinstance(suite, str) else suite.model_dump())
        if isinstance(suite, str) and suite not in BUILTIN_SUITES:
            yield Problem(("evaluate", "suites", index), f"unknown suite {suite!r}{did_you_mean(suite, BUILTIN_SUITES)}; builtins are {', '.join(BUILTIN_SUITES)}, or write {{jsonl: PATH}}")
            continue
        if not isinstance(suite, str) and "://" not in suite.jsonl and not Path(os.path.expanduser(suite.jsonl)).is_file():
            yield Problem(("evaluate", "suites", index, "jsonl"), f"suite file {suite.jsonl!r} does not exist; check the path (read from the current directory)")
        if name in kinds:
            yield Problem(("evaluate", "suites", index), f"a second suite named {name!r}; metric names are <suite>.<metric>, so give the files different names")
        kinds[name] = MULTIPLE_CHOICE_METRICS if isinstance(suite, str) else MULTIPLE_CHOICE_METRICS + GENERATION_METRICS
    for metric in recipe.evaluate.gate:
        suite, _, measure = metric.partition(".")
        if suite in kinds and measure not in kinds[suite]:
            yield Problem(("evaluate", "gate", metric), f"suite {suite} gives no metric {measure!r}{did_you_mean(measure, kinds[suite])}; it gives {', '.join(kinds[suite])}")
    if recipe.sweep is not None and recipe.sweep.select is not None:  # its suite is checked in _stage_sense
        suite, _, measure = recipe.sweep.select.metric.partition(".")
        if suite in kinds and measure not in kinds[suite]:
            yield Problem(("sweep", "select", "metric"), f"suite {suite} gives no metric {measure!r}{did_you_mean(measure, kinds[suite])}; it gives {', '.join(kinds[suite])}")


def _suite_names(recipe: Recipe) -> set[str]:
    if recipe.evaluate is None:
        return set()
    names = set()
    for suite in recipe.evaluate.suites:
        names.add(suite if isinstance(suite, str) else Path(suite.jsonl).stem)
    return names
