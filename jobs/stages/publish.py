"""The publish stage: lay a quantized model out as transformers.js loads it, and publish it.

Input `onnx`: the quantize stage's folder (config.json, generation_config.json, tokenizer
files, `onnx/<variant file>` with one `<file>_data` each, and `quantize.json`). Output, in
the stage's staging folder (committed into the store) and copied to `<to>/<entry id>/`:

    config.json                  with transformers.js_config: use_external_data_format
                                 ({"model_q4.onnx": <chunks>, ...}), dtype (the default
                                 variant) and kv_cache_dtype where a variant's cache is fp16
    generation_config.json, tokenizer.json, tokenizer_config.json (chat_template kept),
    special_tokens_map.json      as the quantize stage wrote them
    onnx/model_q4.onnx           each variant, its weights in model_q4.onnx_data,
    onnx/model_q4.onnx_data[_N]  model_q4.onnx_data_1, ... of at most shard_size_mb each
    manifest.json                every file above with size and sha256; written last

The copy lands in a hidden sibling folder first and is swapped in by rename, then
`models.json` is rewritten under a lock (foundry/catalog.py). The folder swap and the
catalogue write happen under the same lock, so concurrent publishers serialise there.
Last, the catalogue page (foundry/web/: index.html, foundry-catalogue.js and .css) is
written beside `models.json`; a user's own index.html is never replaced (foundry/web/page.py).

When `to` is `s3://BUCKET/PREFIX` the folder is uploaded instead to
`<to>/<entry id>/<version>/`, the version a hash of its files, every file before the
manifest and `models.json` rewritten last by compare-and-swap (foundry/s3/publish.py), so
no client sees an entry whose files are not all there; the catalogue is then in the bucket.

Params: `to` (folder, file:// or s3:// URL), `shard_size_mb`, `catalog` (default `<to>/models.json`),
`entry` {id, name, key, description}, `recipe_hash`, `fusion` {method, sources} | null,
`variants` (levels), optionally `base_url` (the URL prefix of `to`, when the folder-name
rule of catalog.base_url does not fit the web server) and `gate` (the recipe's evaluate.gate).
Input `evaluation` (when the recipe evaluates): the evaluate stage's folder, whose flat
metrics go into the catalogue entry (`metrics`) and the manifest; they are judged against
`gate` here too, so a model that misses it is refused whoever asked for the publish.
"""

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry import catalog, manifest, temporaries
from foundry.errors import UserError
from foundry.hashing import sha256_file
from foundry.stagespec import StageSpec
from foundry.variants import ONNX_FOLDER, TRANSFORMERS_JS_DTYPE, VARIANT_FILES
from foundry.web import devices, page
from jobs.onnx.external_data import MIB, ChunkedModel, TooManyChunks, check_chunks, kv_cache_float16, rechunk

if TYPE_CHECKING:
    from foundry.s3.publish import S3Target

LOG = logging.getLogger("foundry.publish")

REQUIRED_ROOT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
# genai_config.json: onnxruntime-genai's, so the published folder also runs natively (its
# decoder points at onnx/model_q4.onnx, whose name publish keeps).
OPTIONAL_ROOT_FILES = ("generation_config.json", "special_tokens_map.json", "chat_template.jinja", "genai_config.json")
DEFAULT_SHARD_SIZE_MB = 100.0
QUANTIZE_REPORT = "quantize.json"
# Set (to anything) to kill publish once its hidden copy is in the web folder, for tests.
FAULT_AFTER_COPY = "FOUNDRY_FAULT_AFTER_COPY"
TJS_CONFIG = "transformers.js_config"


def run(spec: StageSpec, inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    params = spec.params
    source = _input_folder(inputs)
    remote = _s3_target(_required(params, "to"), params.get("catalog"))
    if remote is None:
        to = catalog.local_path(params["to"], "publish.to")
        catalog_path = catalog.local_path(params.get("catalog") or to / catalog.CATALOG_NAME, "publish.catalog")
    shard_bytes = _shard_bytes(params.get("shard_size_mb", DEFAULT_SHARD_SIZE_MB))
    entry_params = params.get("entry") or {}
    if not isinstance(entry_params, dict):
        raise UserError(f"publish.entry: expected a mapping with id, name, key, description; got {entry_params!r}")
    model_id = catalog.validate_id(entry_params.get("id") or spec.recipe)
    key = entry_params.get("key") or model_id
    name = entry_params.get("name") or model_id
    # Fail before any heavy work when the catalogue cannot be merged into (for a bucket,
    # _s3_target has read it already).
    if remote is None:
        catalog.read(catalog_path)

    report = _quantize_report(source)
    levels = _levels(params.get("variants"), report, source)
    metrics = _evaluation_metrics(inputs.get("evaluation"), params.get("gate") or {})

    # 1. The layout, in the staging folder.
    _copy_root_files(source, out)
    chunked: dict[str, ChunkedModel] = {}
    for level, model_file in levels.items():
        LOG.info("publish: %s -> %s/%s, chunks of at most %.3g MB", model_file, ONNX_FOLDER, VARIANT_FILES[level], shard_bytes / MIB)
        try:
            result = rechunk(model_file, out / ONNX_FOLDER, shard_bytes, name=VARIANT_FILES[level], max_chunks=catalog.MAX_EXTERNAL_DATA_CHUNKS)
        except TooManyChunks as error:
            raise UserError(
                f"publish: variant {level} needs {error.count} chunks of at most {shard_bytes / MIB:g} MB, and transformers.js "
                f"loads at most {error.limit} (MAX_EXTERNAL_DATA_CHUNKS); raise publish.shard_size_mb"
            ) from None
        problems = check_chunks(result.model_file)
        if problems:
            raise RuntimeError(f"publish: re-chunked {VARIANT_FILES[level]} is inconsistent: " + "; ".join(problems))
        chunked[level] = result
    default = "q4" if "q4" in chunked else min(chunked, key=lambda level: (chunked[level].size_bytes, level))
    float16_cache = {level: kv_cache_float16(result.model_file) for level, result in chunked.items()}
    _write_config(source, out, chunked, default, float16_cache)

    # 2. The manifest, after every file it lists.
    shared_bytes = sum(path.stat().st_size for path in out.iterdir() if path.is_file())
    variants_manifest = {level: _variant_record(level, chunked[level], report.get(level, {}), out) for level in chunked}
    manifest.write(out, manifest.build(
        out, recipe_hash=params.get("recipe_hash"), variants=variants_manifest,
        id=model_id, name=name, default_variant=default, fusion=params.get("fusion"), **({"metrics": metrics} if metrics else {}),
    ))

    # 3. The copy, swapped in whole (or uploaded to a new content-addressed folder of the
    # bucket); 4. the catalogue, under the same lock (or by compare-and-swap).
    if remote is None:
        base = _base_url(params.get("base_url"), to, catalog_path, model_id)
    else:
        version = remote.version(out)
        base = _base_url(params.get("base_url"), *remote.as_paths(), model_id) + f"{version}/"
    entry = catalog.build_entry(
        model_id=model_id, name=name, description=entry_params.get("description"),
        size_mb=_mb(chunked[default].size_bytes + shared_bytes), base=base,
        variants={level: _catalog_variant(record, devices.requirements(level, float16_cache[level]), shared_bytes) for level, record in variants_manifest.items()},
        default_variant=default, recipe_hash=params.get("recipe_hash"), fusion=params.get("fusion"), metrics=metrics,
    )
    if remote is None:
        published, catalog_location = str(_publish_folder(out, to, model_id, catalog_path, key, entry)), str(catalog_path)
        page_files = [str(path) for path in page.write(catalog_path.parent)]
    else:
        published, catalog_location = remote.publish(out, model_id, version, key, entry), remote.catalog.url
        page_files = remote.publish_page()
    files = manifest.list_paths(out)
    LOG.info("publish: %s published at %s, entry %r in %s", model_id, published, key, catalog_location)
    return {
        "published": published,
        "catalog": catalog_location,
        "entry_key": key,
        "id": model_id,
        "base_url": base,
        "default_variant": default,
        "files": len(files) + 1,
        "chunks": {level: len(result.chunks) for level, result in chunked.items()},
        "page": page_files,
        "size_bytes": sum((out / path).stat().st_size for path in files) + (out / manifest.MANIFEST_NAME).stat().st_size,
    }


# --- parameters and inputs -----------------------------------------------------------------

def _required(params: dict[str, Any], name: str) -> Any:
    if params.get(name) in (None, ""):
        raise UserError(f"publish.{name}: required")
    return params[name]


def _s3_target(to: Any, catalog_location: Any) -> "S3Target | None":
    """The bucket to publish to, checked now; None for a local folder (boto3 not imported)."""
    if not (str(to).startswith("s3://") or str(catalog_location or "").startswith("s3://")):
        return None
    from foundry.s3 import publish as s3_publish

    return s3_publish.open_target(to, catalog_location) if s3_publish.wants_s3(to, catalog_location) else None


def _input_folder(inputs: dict[str, Path]) -> Path:
    if "onnx" not in inputs:
        raise UserError(f"publish: needs an `onnx` input (the quantize stage's output); got {sorted(inputs) or 'none'}")
    folder = Path(inputs["onnx"])
    if not folder.is_dir():
        raise UserError(f"publish: input {folder} is not a folder")
    return folder


def _evaluation_metrics(folder: Path | None, rules: dict[str, str]) -> dict[str, float] | None:
    """The evaluate stage's flat metrics, for the catalogue entry and the manifest; a model
    whose metrics miss the gate `rules` is refused here too, whoever asked for the publish."""
    if not isinstance(rules, dict):
        raise UserError(f"publish.gate: expected a mapping of metric to condition, got {rules!r}")
    if folder is None:
        if rules:
            raise UserError("publish.gate: a gate needs an `evaluation` input (the evaluate stage's folder) to judge")
        return None
    from foundry import gate
    from foundry.metrics import read_metrics

    metrics = read_metrics(folder)
    verdict = gate.judge(metrics, rules, "publish")
    if not verdict["passed"]:
        raise UserError(f"publish: the evaluation missed its gate ({gate.failure_line(verdict)}); a gated model is never published")
    return metrics


def _shard_bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"publish.shard_size_mb: expected a positive number of MB (1 MB = 1024*1024 bytes), got {value!r}")
    shard = int(float(value) * MIB)
    if shard < 1:
        raise UserError(f"publish.shard_size_mb: {value} MB is less than one byte")
    return shard


def _quantize_report(source: Path) -> dict[str, dict[str, Any]]:
    path = source / QUANTIZE_REPORT
    if not path.is_file():
        LOG.warning("publish: %s has no %s; variants are published without agreement numbers", source, QUANTIZE_REPORT)
        return {}
    try:
        variants = json.loads(path.read_text()).get("variants", {})
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"publish: {path} is not a valid quantize report") from None
    return {level: value for level, value in variants.items() if isinstance(value, dict)}


def _levels(requested: Any, report: dict[str, dict[str, Any]], source: Path) -> dict[str, Path]:
    """Level -> source model file, in the order asked; levels the quantize stage skipped are skipped."""
    if requested is None:
        requested = list(report) or [level for level, name in VARIANT_FILES.items() if (source / ONNX_FOLDER / name).is_file()]
    if isinstance(requested, str) or not isinstance(requested, list):
        raise UserError(f"publish.variants: expected a list of levels ({', '.join(VARIANT_FILES)}), got {requested!r}")
    levels: dict[str, Path] = {}
    for level in requested:
        if level not in VARIANT_FILES:
            raise UserError(f"publish.variants: unknown level {level!r}; expected one of {', '.join(VARIANT_FILES)}")
        found = _variant_source(source, level, report.get(level, {}))
        if found is not None:
            levels[level] = found
        elif level in report:
            raise UserError(f"publish: {QUANTIZE_REPORT} lists variant {level} but {ONNX_FOLDER}/{VARIANT_FILES[level]} is missing from {source}")
        else:
            LOG.warning("publish: variant %s was not built by the quantize stage (no %s/%s); skipping it", level, ONNX_FOLDER, VARIANT_FILES[level])
    if not levels:
        raise UserError(f"publish: none of the variants {requested} exists in {source / ONNX_FOLDER}; nothing to publish")
    return levels


def _variant_source(source: Path, level: str, record: dict[str, Any]) -> Path | None:
    candidates = [Path(ONNX_FOLDER) / VARIANT_FILES[level]]
    if isinstance(record.get("file"), str):
        candidates += [Path(record["file"]), Path(ONNX_FOLDER) / record["file"]]
    for candidate in candidates:
        normal = Path(os.path.normpath(candidate))
        if not normal.is_absolute() and ".." not in normal.parts and (source / normal).is_file():
            return source / normal
    return None


# --- the layout ----------------------------------------------------------------------------

def _copy_root_files(source: Path, out: Path) -> None:
    """The side files transformers.js reads; config.json is written later, with its hints."""
    missing = [name for name in REQUIRED_ROOT_FILES if not (source / name).is_file()]
    if missing:
        raise UserError(f"publish: {source} lacks {', '.join(missing)}; transformers.js cannot load a model without them")
    for name in ("tokenizer.json", *OPTIONAL_ROOT_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
        elif name not in ("chat_template.jinja", "genai_config.json"):
            LOG.warning("publish: %s has no %s; publishing without it", source, name)
    _write_tokenizer_config(source, out)


def _write_tokenizer_config(source: Path, out: Path) -> None:
    """tokenizer_config.json as is; transformers.js reads the chat template only from it, so a
    template that newer transformers saved to chat_template.jinja is folded back in."""
    config = _read_json(source / "tokenizer_config.json")
    template = source / "chat_template.jinja"
    if "chat_template" not in config and template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
        _write_json(out / "tokenizer_config.json", config)
    else:
        shutil.copyfile(source / "tokenizer_config.json", out / "tokenizer_config.json")
    if "chat_template" not in config:
        LOG.warning("publish: %s has no chat template; chat clients will have to supply one", source / "tokenizer_config.json")


def _write_config(source: Path, out: Path, chunked: dict[str, ChunkedModel], default: str, float16_cache: dict[str, bool]) -> None:
    config = _read_json(source / "config.json")
    tjs = dict(config.get(TJS_CONFIG) or {})
    external = {VARIANT_FILES[level]: len(result.chunks) for level, result in chunked.items() if result.chunks}
    if external:
        tjs["use_external_data_format"] = external
    else:
        tjs.pop("use_external_data_format", None)
    tjs["dtype"] = TRANSFORMERS_JS_DTYPE[default]
    kv = {TRANSFORMERS_JS_DTYPE[level]: "float16" for level, float16 in float16_cache.items() if float16}
    if kv:
        tjs["kv_cache_dtype"] = kv     # transformers.js falls back to float32 for dtypes not listed
    else:
        tjs.pop("kv_cache_dtype", None)
    config[TJS_CONFIG] = tjs
    _write_json(out / "config.json", config)


def _variant_record(level: str, result: ChunkedModel, quantized: dict[str, Any], out: Path) -> dict[str, Any]:
    record = {name: value for name, value in quantized.items() if name not in ("file", "size_bytes", "chunks")}
    record.update({
        "file": result.model_file.relative_to(out).as_posix(),
        "dtype": TRANSFORMERS_JS_DTYPE[level],
        "chunks": [path.name for path in result.chunks],
        "size_bytes": result.size_bytes,
        "sha256": sha256_file(result.model_file),
    })
    record.setdefault("top1_agreement", None)
    record.setdefault("max_logit_diff", None)
    return record


def _catalog_variant(record: dict[str, Any], runs_on: dict[str, dict[str, Any]], shared_bytes: int) -> dict[str, Any]:
    return {
        "file": record["file"],
        "dtype": record["dtype"],
        "devices": runs_on,
        "size_mb": _mb(record["size_bytes"] + shared_bytes),
        "chunks": len(record["chunks"]),
        "sha256": record["sha256"],
        "top1_agreement": record.get("top1_agreement"),
        "quantization": record.get("quantization"),
    }


def _mb(size_bytes: int) -> float:
    return round(size_bytes / MIB, 1)


def _base_url(explicit: Any, to: Path, catalog_path: Path, model_id: str) -> str:
    if explicit:
        if not isinstance(explicit, str):
            raise UserError(f"publish.base_url: expected a URL prefix, got {explicit!r}")
        return explicit.rstrip("/") + f"/{model_id}/"
    return catalog.base_url(to, catalog_path, model_id)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"publish: {path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise UserError(f"publish: {path} should hold a JSON object")
    return value


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- publishing ----------------------------------------------------------------------------

def _publish_folder(out: Path, to: Path, model_id: str, catalog_path: Path, key: str, entry: dict[str, Any]) -> Path:
    """Copy `out` to `<to>/<id>/` by way of a hidden sibling, swap it in, and rewrite the catalogue."""
    to.mkdir(parents=True, exist_ok=True)
    final = to / model_id
    if final.parent.resolve() != to.resolve():
        raise UserError(f"publish.entry.id: {model_id!r} would leave {to}")
    for folder in {to, catalog_path.parent}:
        for removed in temporaries.clear(folder):
            LOG.info("publish: removed %s, left by a publish that was killed", removed)
    staged = temporaries.beside(final)
    try:
        shutil.copytree(out, staged)
        problems = manifest.verify(staged)
        if problems:
            raise RuntimeError(f"publish: the copy in {staged} does not match its manifest: " + "; ".join(problems))
        if os.environ.get(FAULT_AFTER_COPY):
            os.kill(os.getpid(), signal.SIGKILL)
        with catalog.locked(catalog_path):
            current = catalog.read(catalog_path)    # refuse an invalid catalogue before touching the folder
            temporaries.replace_folder(staged, final)
            catalog.write(catalog_path, catalog.merge_entry(current, key, entry))
    finally:
        if staged.exists() or staged.is_symlink():
            temporaries.remove(staged)
    return final
