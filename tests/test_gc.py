"""`foundry gc` on a local store: what recipes plan and catalogues list is kept, crash leftovers
and orphans are listed, and deleted only when asked (the s3 side runs in test_run_s3.py)."""

import json
import shutil
from pathlib import Path

import pytest

from foundry import catalog, gc
from foundry.errors import UserError
from foundry.plan import plan
from foundry.recipe.load import load_recipe
from foundry.store import Store, build_record, open_store
from foundry.sweep.plan import expand

REPO = Path(__file__).resolve().parent.parent


def commit(store: Store, recipe: str, key: str, files: dict[str, bytes], **extra: object) -> dict:
    staging = store.new_staging(recipe, key)
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    return store.commit(recipe, key, staging, build_record(staging, key=key, stage=key.partition("-")[0], recipe=recipe, started=0.0, extra=dict(extra)))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, Path, list[str]]:
    """A store holding the keys the demo recipe plans (stand-in bytes), and its recipes folder."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(REPO / "recipes" / "tiny-demo.yml", recipes)
    store = open_store(str(tmp_path / "store"))
    planned = [stage.key for stage in plan(load_recipe(recipes / "tiny-demo.yml")).stages]
    for key in planned:
        commit(store, "tiny-demo", key, {"x.bin": key.encode()})
    return store, recipes, planned


def names(found: gc.Collection) -> list[tuple[str, str, str]]:
    return sorted((item.kind, item.recipe, item.name) for item in found.doomed)


def test_planned_keys_are_kept_orphans_and_leftovers_listed_and_deleted_only_when_asked(setup: tuple[Store, Path, list[str]]) -> None:
    store, recipes, planned = setup
    commit(store, "tiny-demo", "merge-0ld0ld0ld0ld", {"model.safetensors": b"old"})
    commit(store, "gone-recipe", "merge-123412341234", {"model.safetensors": b"orphan"})
    (store.root / "tiny-demo" / "quantize-cr45h").mkdir()
    (store.root / "tiny-demo" / "quantize-cr45h" / "part.onnx").write_bytes(b"half")
    store.new_staging("tiny-demo", "merge-abc")
    found = gc.collect(store, recipes, older_than=0)
    assert names(found) == [
        ("staging folder", "tiny-demo", names(found)[0][2]),
        ("uncommitted key", "tiny-demo", "quantize-cr45h"),
        ("unreferenced key", "gone-recipe", "merge-123412341234"),
        ("unreferenced key", "tiny-demo", "merge-0ld0ld0ld0ld"),
    ]
    assert found.size_bytes == len(b"old") + len(b"orphan") + len(b"half") and found.recent == [] and found.warnings == []
    assert gc.collect(store, recipes, older_than=3600).doomed == [], "nothing younger than the limit is touched"
    gc.delete(store, found.doomed)
    assert sorted(key.key for key in store.list_committed()) == sorted(planned) and list(store.leftovers()) == []


def test_a_published_model_keeps_its_keys_while_a_catalogue_lists_it(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    models = tmp_path / "site" / "models.json"
    commit(store, "old", "merge-aaaaaaaaaaaa", {"m.safetensors": b"m"})
    commit(store, "old", "quantize-bbbbbbbbbbbb", {"onnx/model_q4.onnx": b"q"}, inputs={"model": {"key": "merge-aaaaaaaaaaaa"}})
    marker = commit(store, "old", "publish-cccccccccccc", {"onnx/model_q4.onnx": b"q4"}, inputs={"onnx": {"key": "quantize-bbbbbbbbbbbb"}},
                    result={"catalog": str(models), "entry_key": "old-q4", "base_url": "/models/old-q4/"})
    sha = next(entry["sha256"] for entry in marker["files"])
    entry = {"id": "old-q4", "urls": {"base": "/models/old-q4/"}, "variants": {"q4": {"file": "onnx/model_q4.onnx", "sha256": sha}}}
    catalog.write(models, {"old-q4": entry, "other": {"id": "x"}})
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(REPO / "recipes" / "dev-polyglot-v1.yml", recipes)
    assert gc.collect(store, recipes, older_than=0).doomed == [], "the catalogue lists it: it and what it was made from stay"

    catalog.write(models, {"old-q4": {**entry, "variants": {"q4": {"file": "onnx/model_q4.onnx", "sha256": "0" * 64}}}})
    assert [item.name for item in gc.collect(store, recipes, older_than=0).doomed] == ["merge-aaaaaaaaaaaa", "publish-cccccccccccc", "quantize-bbbbbbbbbbbb"], \
        "a catalogue entry replaced by another publish no longer refers to these keys"

    models.write_text("{broken")
    found = gc.collect(store, recipes, older_than=0)
    assert found.doomed == [] and "cannot be read" in found.warnings[0], "an unreadable catalogue keeps what it may list"


def test_every_point_of_a_sweep_is_kept(setup: tuple[Store, Path, list[str]]) -> None:
    store, recipes, planned = setup
    text = (recipes / "tiny-demo.yml").read_text()
    # A sweep that publishes selects its best point, so it evaluates: the publish key planned before (without an evaluation) is stale.
    (recipes / "tiny-demo.yml").write_text(text + "evaluate: {suites: [{jsonl: s3://eval-bucket/qa.jsonl}]}\nsweep:\n  grid: {parameters.t: [0.4, 0.6]}\n  select: {metric: qa.exact_match}\n")
    points = [stage.key for point in expand(load_recipe(recipes / "tiny-demo.yml")) for stage in plan(point.recipe).stages]
    assert planned[:2] == [points[0], points[2]] and len(set(points)) == 8, "t=0.4 plans the merge and quantize planned before; t=0.6 has four keys of its own"
    for key in points:
        if not store.is_committed("tiny-demo", key):
            commit(store, "tiny-demo", key, {"x.bin": b"point"})
    assert [item.name for item in gc.collect(store, recipes, older_than=0).doomed] == [planned[2]]


def test_a_recipe_that_does_not_plan_keeps_its_keys(setup: tuple[Store, Path, list[str]]) -> None:
    store, recipes, _ = setup
    commit(store, "broken", "merge-123412341234", {"m": b"m"})
    (recipes / "broken.yml").write_text("models: [{model: tiny:llama-a}]\nmerge_method: nonsense\n")
    found = gc.collect(store, recipes, older_than=0)
    assert found.doomed == [] and found.warnings and "keeping every key of recipe broken" in found.warnings[0]


def test_bad_arguments() -> None:
    assert [gc.parse_duration(text) for text in ("0", "90s", "30m", "6h", "2d", "1w", "1.5h")] == [0, 90, 1800, 21600, 172800, 604800, 5400]
    with pytest.raises(UserError, match="--older-than"):
        gc.parse_duration("soon")
    with pytest.raises(UserError, match="--recipes /nowhere: no such folder"):
        gc.collect(open_store("/tmp/unused-store"), Path("/nowhere"), older_than=0)


def test_the_store_s_own_records_are_never_garbage(setup: tuple[Store, Path, list[str]]) -> None:
    store, recipes, _ = setup
    store.put_document("_runs/r-1/status.json", {"state": "done"})
    assert gc.collect(store, recipes, older_than=0).doomed == []
    assert json.loads((store.root / "_runs" / "r-1" / "status.json").read_text()) == {"state": "done"}


def test_an_unfinished_publish_in_a_bucket_is_listed_and_deleted(tmp_path: Path, bucket: str) -> None:
    """A publish killed while uploading leaves a version folder without its manifest.json."""
    from foundry.s3 import client as s3client

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    text = (REPO / "recipes" / "tiny-demo.yml").read_text().replace("to: ./.foundry/published/models", f"to: s3://{bucket}/site/models")
    (recipes / "tiny-demo.yml").write_text(text)
    s3 = s3client.client()
    for key in ("site/models/m/0123/onnx/model_q4.onnx", "site/models/m/0123/config.json",         # unfinished
                "site/models/m/4567/config.json", "site/models/m/4567/manifest.json",           # whole
                "site/models/models.json"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    store = open_store(str(tmp_path / "store"))
    found = gc.collect(store, recipes, older_than=0)
    assert names(found) == [("unfinished publish", "tiny-demo", f"s3://{bucket}/site/models/m/0123/")]
    assert gc.collect(store, recipes, older_than=3600).doomed == [], "a young one may be a publish in flight"
    gc.delete(store, found.doomed)
    left = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == ["site/models/m/4567/config.json", "site/models/m/4567/manifest.json", "site/models/models.json"]
