"""From a recipe to the DAG of stages, each under a content-hash key.

A key is `<stage>-<hash>`, where the hash covers the stage's parameters, the keys of its
inputs and the identity of the models it reads. Change anything upstream and every key
downstream changes with it; change nothing and a re-run finds every key committed.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry import modelref, tiny_catalog
from foundry.errors import UserError
from foundry.hashing import short_hash
from foundry.recipe.references import distinct_sources
from foundry.recipe.schema import Recipe
from foundry.stagespec import StageInput, StageName, StageSpec

# Bump a stage's number when its code changes what it writes, to invalidate old keys.
STAGE_VERSIONS: dict[str, int] = {"merge": 1, "finetune": 1, "evaluate": 1, "quantize": 1, "publish": 1}


@dataclass(frozen=True)
class PlannedStage:
    stage: StageName
    key: str
    inputs: dict[str, StageInput] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    # Keys that must be committed, with their gates passed, before this stage starts, without
    # being inputs (so not in its key): quantize waits for the evaluation that may gate it.
    after: tuple[str, ...] = ()
    # The recipe's evaluate.gate, judged on the evaluations in `after` before this stage starts
    # (foundry/gate.py); not in the key, so a new threshold re-judges but never re-measures.
    gate: dict[str, str] = field(default_factory=dict)

    def spec(self, recipe: str, store_url: str) -> StageSpec:
        return StageSpec(stage=self.stage, recipe=recipe, key=self.key, store=store_url, inputs=self.inputs, params=self.params)


@dataclass(frozen=True)
class Plan:
    recipe: str
    recipe_hash: str
    stages: list[PlannedStage]
    # What the user should know before anything runs (a gated model without a token, a
    # fine-tune that may not fit the declared hardware); printed, never fatal.
    warnings: tuple[str, ...] = ()

    def stage(self, name: str) -> PlannedStage:
        for planned in self.stages:
            if planned.stage == name:
                return planned
        raise UserError(f"recipe {self.recipe} has no {name} stage; its stages are {', '.join(s.stage for s in self.stages)}")


def plan(recipe: Recipe, *, strict: bool = False) -> Plan:
    """The recipe's stages; with `strict`, a fine-tune that does not fit the hardware the
    recipe declares is refused instead of warned about."""
    stages: list[PlannedStage] = []
    warnings: list[str] = []
    model = _model_source(recipe, stages)
    if recipe.finetune is not None:
        finetune = _finetune(recipe, model, strict, warnings)
        stages.append(finetune)
        model = StageInput(key=finetune.key)
    evaluation: StageInput | None = None
    if recipe.evaluate is not None:
        evaluate = _planned("evaluate", {"model": model}, _evaluate_params(recipe))
        stages.append(evaluate)
        evaluation = StageInput(key=evaluate.key)
    gated_by = (evaluation.key,) if evaluation and evaluation.key else ()
    rules = dict(recipe.evaluate.gate) if recipe.evaluate is not None else {}
    if recipe.quantize is not None:
        params = {"variants": list(recipe.quantize.variants), "prompts": recipe.quantize.prompts, "trust_remote_code": recipe.trust_remote_code, "allow_pickle": recipe.allow_pickle}
        quantize = _planned("quantize", {"model": model}, params, after=gated_by, gate=rules)
        stages.append(quantize)
        if recipe.publish is not None:
            # The evaluation is an input of publish: its metrics go into the catalogue entry,
            # and publish judges the gate on them again (its params, so in its key).
            inputs = {"onnx": StageInput(key=quantize.key), **({"evaluation": evaluation} if evaluation else {})}
            params = {**_publish_params(recipe), **({"gate": rules} if rules else {})}
            stages.append(_planned("publish", inputs, params, after=gated_by, gate=rules))
    if not stages:
        raise UserError(f"recipe {recipe.name}: nothing to run; merge several models (merge_method), add finetune: {{dataset: ...}}, or add quantize: {{variants: [q4]}}")
    warnings += _gated_warnings(recipe)
    return Plan(recipe.name, recipe_hash(recipe), stages, tuple(warnings))


def recipe_hash(recipe: Recipe) -> str:
    return short_hash(recipe.model_dump(exclude_none=True), length=16)


def _model_source(recipe: Recipe, stages: list[PlannedStage]) -> StageInput:
    """The merged model's key, or the one model a recipe without a merge starts from."""
    if recipe.merges:
        config = recipe.mergekit_config()
        params = {"mergekit": config, "allow_pickle": recipe.allow_pickle, "trust_remote_code": recipe.trust_remote_code}
        merge = _planned("merge", {}, params, identity=_model_identities(recipe))
        stages.append(merge)
        return StageInput(key=merge.key)
    model = (recipe.models or [{}])[0].get("model")
    if not isinstance(model, str):
        raise UserError(f"recipe {recipe.name}: models[0].model: expected a model reference string")
    return StageInput(model=model)


def _finetune(recipe: Recipe, model: StageInput, strict: bool, warnings: list[str]) -> PlannedStage:
    """LoRA on the merged model (or the one model), with the registry's preset applied."""
    from foundry.registry import apply
    from foundry.registry.load import load_registry

    resolved = apply.resolve(recipe, load_registry())
    fit = apply.hardware_fit(recipe, resolved)
    if fit is not None:
        judged, line = fit
        if strict and judged == "does not fit":
            raise UserError(f"recipe {recipe.name}: {line} (refused under --strict)")
        warnings.append(line)
    params = apply.stage_params(recipe, resolved)
    return _planned("finetune", {"model": model}, params, identity=apply.dataset_identity(params["dataset"]))


def _gated_warnings(recipe: Recipe) -> list[str]:
    sources = distinct_sources(recipe)
    if not any(modelref.parse(source).kind == "hub" for source in sources):
        return []
    from foundry.registry.gated import gated_warnings
    from foundry.registry.load import load_registry

    return gated_warnings(sources, load_registry())


def _evaluate_params(recipe: Recipe) -> dict[str, Any]:
    """The suites as the stage reads them; a local JSONL file carries its sha256, so editing
    a suite changes the key (an s3:// one is taken as written, as finetune datasets are).
    No gate: it judges the measurements, so changing it must not measure again."""
    from foundry.registry.apply import dataset_identity

    assert recipe.evaluate is not None
    spec = recipe.evaluate
    suites: list[Any] = []
    for suite in spec.suites:
        if isinstance(suite, str):
            suites.append(suite)
            continue
        location = _absolute(suite.jsonl)
        identity = dataset_identity(location)
        suites.append({"jsonl": location, **({"sha256": identity[1]} if len(identity) > 1 else {})})
    return {
        "suites": suites, "limit": spec.limit, "batch_size": spec.batch_size, "max_new_tokens": spec.max_new_tokens,
        "trust_remote_code": recipe.trust_remote_code, "allow_pickle": recipe.allow_pickle,
    }


def _planned(
    stage: StageName, inputs: dict[str, StageInput], params: dict[str, Any], identity: Any = None, after: tuple[str, ...] = (), gate: dict[str, str] | None = None,
) -> PlannedStage:
    material = {
        "stage": stage,
        "version": STAGE_VERSIONS[stage],
        "inputs": {name: source.model_dump(exclude_none=True) for name, source in inputs.items()},
        "input_identity": [_identity(source.model) for source in inputs.values() if source.model] + ([identity] if identity else []),
        "params": params,
    }
    return PlannedStage(stage, f"{stage}-{short_hash(material)}", inputs, params, after, dict(gate or {}))


def _model_identities(recipe: Recipe) -> list[Any]:
    return [_identity(text) for text in distinct_sources(recipe)]


def _identity(reference: str) -> Any:
    """What, beyond its name, makes a model reference mean the same weights."""
    ref = modelref.parse(reference)
    if ref.kind == "tiny":
        return [reference, tiny_catalog.BUILD_VERSION]
    if ref.kind == "local":
        # The files a loader reads (modelref.model_files), by size and modification time:
        # re-saving a model changes the key, without reading gigabytes of weights per plan.
        folder = ref.local_path
        files = [(path.name, path.stat()) for path in modelref.model_files(folder)] if folder.is_dir() else []
        return [str(folder.resolve()), [[name, stat.st_size, stat.st_mtime_ns] for name, stat in files]]
    return [reference]


def _publish_params(recipe: Recipe) -> dict[str, Any]:
    assert recipe.publish is not None and recipe.quantize is not None
    publish = recipe.publish
    entry = publish.entry.model_dump(exclude_none=True) if publish.entry else {}
    entry.setdefault("id", recipe.name)
    fusion = None
    if recipe.merges:
        fusion = {"method": recipe.merge_method, "sources": distinct_sources(recipe)}
    return {
        "to": _absolute(publish.to),
        "catalog": _absolute(publish.catalog) if publish.catalog else None,
        "shard_size_mb": publish.shard_size_mb,
        "entry": entry,
        "recipe_hash": recipe_hash(recipe),
        "fusion": fusion,
        "variants": list(recipe.quantize.variants),
    }


def _absolute(location: str) -> str:
    if "://" in location and not location.startswith("file://"):
        return location
    return str(Path(os.path.expanduser(location.removeprefix("file://"))).resolve())
