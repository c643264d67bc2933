"""The offline demo recipe end to end with s3:// as both the store and the publish target
(moto's server on loopback), then verify, artifacts ls and gc on what it left."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.commands.artifacts import collect_garbage, list_artifacts
from foundry.commands.verify import verify_target
from foundry.s3 import client as s3client
from foundry.store import build_record, open_store

REPO = Path(__file__).resolve().parent.parent


def foundry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def demo(s3_env_module: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bucket where the demo recipe ran once, start to end: its store under store/, its
    published model and models.json under site/models/."""
    work = tmp_path_factory.mktemp("demo-s3")
    bucket = "foundry-demo"
    s3client.client().create_bucket(Bucket=bucket)
    recipe = (REPO / "recipes" / "tiny-demo.yml").read_text().replace("to: ./.foundry/published/models", f"to: s3://{bucket}/site/models")
    assert f"s3://{bucket}/site/models" in recipe
    (work / "recipes").mkdir()
    (work / "recipes" / "tiny-demo.yml").write_text(recipe)
    store = f"s3://{bucket}/store"
    result = foundry("run", "recipes/tiny-demo.yml", "--store", store, cwd=work)
    assert result.returncode == 0, result.stderr + result.stdout
    return {"work": work, "bucket": bucket, "store": store, "output": result.stdout + result.stderr}


def keys(demo: dict) -> dict[str, str]:
    return {item.key.partition("-")[0]: item.key for item in open_store(demo["store"]).list_committed("tiny-demo")}


def test_the_demo_runs_with_an_s3_store_and_publishes_to_a_bucket(demo: dict) -> None:
    for stage in ("merge", "quantize", "publish"):
        assert f"✓ {stage} " in demo["output"]
    s3, bucket = s3client.client(), demo["bucket"]
    catalog = json.loads(s3.get_object(Bucket=bucket, Key="site/models/models.json")["Body"].read())
    entry = catalog["tiny-demo"]
    base = entry["urls"]["base"]
    assert entry["id"] == "tiny-demo-q4" and base.startswith("/models/tiny-demo-q4/") and len(base.split("/")) == 5
    assert {"fp32", "fp16", "q8", "q4"} <= set(entry["variants"])
    folder = "site/models/" + base.removeprefix("/models/")
    config = json.loads(s3.get_object(Bucket=bucket, Key=folder + "config.json")["Body"].read())
    assert config["transformers.js_config"]["use_external_data_format"]["model_q4.onnx"] >= 2
    s3.head_object(Bucket=bucket, Key=folder + "onnx/model_q4.onnx_data_1")
    assert sorted(keys(demo)) == ["merge", "publish", "quantize"]
    result = foundry("verify", f"s3://{bucket}/site/models/tiny-demo-q4", cwd=demo["work"])
    assert result.returncode == 0 and "every file matches" in result.stdout, result.stderr


def test_a_second_run_is_entirely_cached(demo: dict) -> None:
    result = foundry("run", "recipes/tiny-demo.yml", "--store", demo["store"], cwd=demo["work"])
    assert result.returncode == 0, result.stderr
    assert "✓" not in result.stderr
    for stage in ("merge", "quantize", "publish"):
        assert f"• {stage} " in result.stderr


def test_verify_a_stage_key_in_the_s3_store(demo: dict, capsys: pytest.CaptureFixture[str]) -> None:
    merge = keys(demo)["merge"]
    result = foundry("verify", f"tiny-demo/{merge}", "--store", demo["store"], cwd=demo["work"])
    assert result.returncode == 0, result.stderr
    store = open_store(demo["store"])
    s3, bucket, key = s3client.client(), demo["bucket"], store.files_location("tiny-demo", merge, store.marker("tiny-demo", merge)).child("config.json").key
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    try:
        result = foundry("verify", f"tiny-demo/{merge}", "--store", demo["store"], cwd=demo["work"])
        assert verify_target(f"s3://{bucket}/store/tiny-demo/{merge}/", None) is False
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)
    assert result.returncode == 1 and f"s3://{bucket}/store/tiny-demo/{merge}/config.json: size 2 bytes" in result.stderr
    assert "config.json: size 2 bytes, _SUCCESS.json says" in capsys.readouterr().err
    assert verify_target(f"s3://{bucket}/store/tiny-demo/{merge}", None) is True


def test_artifacts_ls(demo: dict, capsys: pytest.CaptureFixture[str]) -> None:
    list_artifacts(None, demo["store"])
    listed = capsys.readouterr().out
    for key in keys(demo).values():
        assert key in listed
    assert "3 key(s)" in listed
    list_artifacts("other", demo["store"])
    assert "no committed keys of recipe other" in capsys.readouterr().out


def test_gc_keeps_what_recipes_and_catalogues_need_and_deletes_only_with_yes(demo: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, recipes = open_store(demo["store"]), demo["work"] / "recipes"
    staging = store.new_staging("tiny-demo", "merge-0ld0ld0ld0ld")        # a key of a recipe since edited
    (staging / "model.safetensors").write_bytes(b"old weights")
    store.commit("tiny-demo", "merge-0ld0ld0ld0ld", staging, build_record(staging, key="merge-0ld0ld0ld0ld", stage="merge", recipe="tiny-demo", started=0.0, extra={}))
    s3client.client().put_object(Bucket=demo["bucket"], Key="store/tiny-demo/quantize-cr45h/model.onnx", Body=b"half")   # a crash's leftover
    monkeypatch.chdir(demo["work"])         # the recipes' relative paths

    assert collect_garbage(demo["store"], recipes, "1d", False) == 0
    young = capsys.readouterr()
    assert "nothing to collect" in young.out and "keeping 2 item(s) younger than 1d" in young.err

    assert collect_garbage(demo["store"], recipes, "0", False) == 0
    dry = capsys.readouterr().out
    assert "merge-0ld0ld0ld0ld" in dry and "quantize-cr45h" in dry and "dry run: 2 item(s)" in dry
    for key in keys(demo).values():
        assert key not in dry
    assert store.is_committed("tiny-demo", "merge-0ld0ld0ld0ld"), "a dry run deletes nothing"

    # With no recipe planning them, the demo's keys are still kept: the catalogue lists what they published.
    elsewhere = tmp_path / "recipes"
    elsewhere.mkdir()
    shutil.copy(REPO / "recipes" / "dev-polyglot-v1.yml", elsewhere)
    collect_garbage(demo["store"], elsewhere, "0", False)
    assert "dry run: 2 item(s)" in capsys.readouterr().out

    done = foundry("gc", "--store", demo["store"], "--recipes", "recipes", "--older-than", "0", "--yes", cwd=demo["work"])
    assert done.returncode == 0 and "deleted 2 item(s)" in done.stdout, done.stderr
    assert not store.is_committed("tiny-demo", "merge-0ld0ld0ld0ld") and list(store.leftovers()) == []
    assert sorted(keys(demo)) == ["merge", "publish", "quantize"]
    assert all(store.verify("tiny-demo", key) == [] for key in keys(demo).values())
