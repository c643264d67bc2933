"""Nothing lost, nothing damaged passed on (issue 16), on the offline demo end to end:
runs started together, a publish killed with SIGKILL, and bytes flipped in committed keys,
in the S3 cache and in a published folder."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from foundry import manifest, temporaries
from foundry.store import SUCCESS_MARKER, open_store

REPO = Path(__file__).resolve().parent.parent
RUNS = 20
RECIPE = (REPO / "recipes" / "tiny-demo.yml").read_text()


def foundry(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def recipe(work: Path, entry: str, to: str = "./site/models") -> Path:
    """The demo with q4 and q8 only, published to `to` as entry `entry`: every such recipe
    shares the merge and quantize keys and has a publish key of its own."""
    text = RECIPE.replace("variants: [fp32, fp16, q8, q4, q4f16, q2]", "variants: [q4, q8]").replace("to: ./.foundry/published/models", f"to: {to}")
    text = text.replace("id: tiny-demo-q4", f"id: {entry}").replace("key: tiny-demo", f"key: {entry}")
    assert f"id: {entry}" in text and f"to: {to}" in text and "[q4, q8]" in text
    path = work / "recipes" / f"{entry}.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def keys(store: Path) -> dict[str, Path]:
    return {path.name.partition("-")[0]: path for path in (store / "tiny-demo").iterdir() if (path / SUCCESS_MARKER).exists()}


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the demo ran once: merge and quantize committed, entry `first` published."""
    work = tmp_path_factory.mktemp("warm")
    recipe(work, "first")
    result = foundry("run", "recipes/first.yml", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture
def work(warm: Path, tmp_path: Path) -> Path:
    """A copy of the warm folder of the test's own, to damage at will."""
    shutil.copytree(warm, tmp_path / "work", symlinks=True)
    return tmp_path / "work"


# --- damage is never passed on ---------------------------------------------------------------

def test_a_flipped_byte_in_a_committed_quantize_key_is_never_published(work: Path) -> None:
    store = work / ".foundry" / "store"
    quantize = keys(store)["quantize"]
    damaged = quantize / "onnx" / "model_q4.onnx_data"
    flip(damaged)
    recipe(work, "second")
    result = foundry("run", "recipes/second.yml", cwd=work)
    assert result.returncode == 2, result.stderr
    assert f"{damaged}: sha256 differs from _SUCCESS.json (corrupted): key tiny-demo/{quantize.name} is damaged" in result.stderr
    assert f"foundry verify tiny-demo/{quantize.name} --repair" in result.stderr and "Traceback" not in result.stderr
    assert "second" not in json.loads((work / "site" / "models" / "models.json").read_text())
    assert not (work / "site" / "models" / "second").exists()

    listed = foundry("verify", cwd=work)
    assert listed.returncode == 1 and f"{damaged}: sha256 differs" in listed.stderr and "ok " in listed.stdout
    repaired = foundry("verify", f"tiny-demo/{quantize.name}", "--repair", cwd=work)
    assert repaired.returncode == 0 and f"deleted tiny-demo/{quantize.name}" in repaired.stdout, repaired.stderr
    assert not quantize.exists()
    rebuilt = foundry("run", "recipes/second.yml", cwd=work)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "• merge" in rebuilt.stderr and "✓ quantize" in rebuilt.stderr and "✓ publish" in rebuilt.stderr
    assert manifest.verify(work / "site" / "models" / "second") == []


def test_force_only_quantize_refuses_a_merge_with_a_flipped_byte(work: Path) -> None:
    store = work / ".foundry" / "store"
    merge, quantize = keys(store)["merge"], keys(store)["quantize"]
    marker_before = (quantize / SUCCESS_MARKER).read_bytes()
    flip(merge / "model.safetensors")
    result = foundry("run", "recipes/first.yml", "--force", "--only", "quantize", cwd=work)
    assert result.returncode == 2, result.stderr
    assert f"{merge}/model.safetensors: sha256 differs from _SUCCESS.json (corrupted): key tiny-demo/{merge.name} is damaged" in result.stderr
    assert (quantize / SUCCESS_MARKER).read_bytes() == marker_before, "the committed quantize key is left as it was"
    assert not any((store / "tiny-demo" / ".staging").iterdir())


def test_serve_refuses_a_damaged_chunk_of_a_variant_its_api_does_not_run(work: Path) -> None:
    from foundry.serve.server import start_server

    site = work / "site" / "models"
    damaged = site / "first" / "onnx" / "model_quantized.onnx_data_1"
    flip(damaged)
    server = start_server(site, port=0)            # serves q4: the damaged q8 chunk does not stop it
    try:
        with urllib.request.urlopen(f"{server.url}/models/first/onnx/model_q4.onnx_data_1") as response:
            assert response.status == 200 and response.read() == (site / "first" / "onnx" / "model_q4.onnx_data_1").read_bytes()
        for url in (f"{server.url}/models/first/onnx/model_quantized.onnx_data_1", f"{server.url}/first/onnx/model_quantized.onnx_data_1"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-3"}))
            assert refused.value.code == 500 and b"model_quantized.onnx_data_1: sha256 differs from manifest.json (corrupted)" in refused.value.read()
    finally:
        server.stop()


# --- a killed publish leaves nothing behind for long -----------------------------------------

def test_a_killed_publish_leaves_debris_that_a_rerun_and_gc_remove(work: Path) -> None:
    site = work / "site" / "models"
    recipe(work, "third")
    killed = foundry("run", "recipes/third.yml", cwd=work, env={"FOUNDRY_FAULT_AFTER_COPY": "1"})
    assert killed.returncode == 1 and "✗ publish" in killed.stderr
    [debris] = [path for path in site.iterdir() if path.name.startswith(".third.tmp-")]
    assert debris.name.endswith(f"@{socket.gethostname()}") and len(list(debris.rglob("*"))) > 10
    # a live writer's temporary and a fresh one of another host are never touched
    live = temporaries.beside(site / "models.json")
    live.write_text("{}")
    elsewhere = site / ".models.json.tmp-1-0123456789ab@another-host"
    elsewhere.write_text("{}")

    listed = foundry("gc", "--recipes", "recipes", cwd=work)
    assert listed.returncode == 0 and "publish temporary" in listed.stdout and "writer gone" in listed.stdout
    assert debris.exists(), "a dry run deletes nothing"
    rerun = foundry("run", "recipes/third.yml", cwd=work)
    assert rerun.returncode == 0, rerun.stderr
    assert not debris.exists() and live.exists() and elsewhere.exists()

    recipe(work, "fourth")
    assert foundry("run", "recipes/fourth.yml", cwd=work, env={"FOUNDRY_FAULT_AFTER_COPY": "1"}).returncode == 1
    [debris] = [path for path in site.iterdir() if path.name.startswith(".fourth.tmp-")]
    collected = foundry("gc", "--recipes", "recipes", "--yes", cwd=work)
    assert collected.returncode == 0 and not debris.exists() and live.exists() and elsewhere.exists(), collected.stdout
    old = time.time() - 2 * 86400
    os.utime(elsewhere, (old, old))
    assert temporaries.stale(site) == [temporaries.Temporary(elsewhere, 2, old, dead=False)]


def test_dead_live_and_unknown_writers(tmp_path: Path) -> None:
    gone = subprocess.run(["true"], check=True)
    assert gone.returncode == 0
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    host = socket.gethostname()
    names = {
        f".m.tmp-{dead_pid.pid}-0123456789ab@{host}": True,          # this host, no such process
        f".m.tmp-{os.getpid()}-0123456789ab@{host}": None,           # this process: live, never listed
        f".m.old-{dead_pid.pid}-0123456789ab@elsewhere": False,      # another host: its age decides
        ".m.tmp-0123456789ab": False,                                # an older Foundry's name
        ".models.json.123.89abcdef.tmp": False,
        ".hidden-but-not-a-temporary": None,
        "models.json": None,
    }
    for name in names:
        (tmp_path / name).write_text("x")
    found = {item.path.name: item.dead for item in temporaries.find(tmp_path)}
    assert found == {name: dead for name, dead in names.items() if dead is not None}
    assert [item.path.name for item in temporaries.stale(tmp_path)] == [f".m.tmp-{dead_pid.pid}-0123456789ab@{host}"]
    assert len(temporaries.stale(tmp_path, now=time.time() + 2 * 86400)) == 4


# --- runs started together ---------------------------------------------------------------------

def _start_together(work: Path, entries: list[str], env: dict[str, str]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen([sys.executable, "-m", "foundry", "run", f"recipes/{entry}.yml"], cwd=work, env={**os.environ, **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for entry in entries
    ]


def _outcomes(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    return [(process.wait(timeout=600), process.communicate()[1]) for process in processes]


def test_twenty_runs_started_at_once_on_a_local_store_all_publish(work: Path) -> None:
    entries = [f"together-{index:02d}" for index in range(RUNS)]
    for entry in entries:
        recipe(work, entry)
    outcomes = _outcomes(_start_together(work, entries, {}))
    assert [code for code, _ in outcomes] == [0] * RUNS, [err for code, err in outcomes if code][:1]
    for _, err in outcomes:
        assert "• merge" in err and "• quantize" in err and "✓ publish" in err
    site = work / "site" / "models"
    catalog = json.loads((site / "models.json").read_text())
    assert sorted(catalog) == sorted(["first", *entries])
    for entry in entries:
        assert catalog[entry]["urls"]["base"] == f"/models/{entry}/" and manifest.verify(site / entry) == []
    assert [path.name for path in site.iterdir() if path.name.startswith(".")] == []
    assert len([path for path in (work / ".foundry" / "runs").iterdir() if path.name.startswith("tiny-demo-")]) == RUNS + 1
    store = open_store(str(work / ".foundry" / "store"))
    assert len([key for key in store.list_committed("tiny-demo") if key.key.startswith("publish-")]) == RUNS + 1
    assert list(store.leftovers()) == []


def test_twenty_runs_started_at_once_on_an_s3_store_all_publish(work: Path, bucket: str, tmp_path: Path) -> None:
    from foundry.s3 import client as s3client
    from foundry.s3.files import S3Files

    local = open_store(str(work / ".foundry" / "store"))
    s3_store = open_store(f"s3://{bucket}/store")
    for name in ("merge", "quantize"):              # the shared keys, committed to the bucket as a run would
        key = keys(work / ".foundry" / "store")[name].name
        staging = s3_store.new_staging("tiny-demo", key)
        shutil.copytree(local.fetch("tiny-demo", key), staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SUCCESS_MARKER))
        s3_store.commit("tiny-demo", key, staging, local.marker("tiny-demo", key))  # type: ignore[arg-type]
    entries = [f"together-{index:02d}" for index in range(RUNS)]
    for entry in entries:
        recipe(work, entry, to=f"s3://{bucket}/site/models")
    env = {"FOUNDRY_STORE": s3_store.url, "FOUNDRY_CACHE": str(tmp_path / "runs-cache")}    # an empty cache: all 20 fetch at once
    outcomes = _outcomes(_start_together(work, entries, env))
    assert [code for code, _ in outcomes] == [0] * RUNS, [err for code, err in outcomes if code][:1]
    s3 = s3client.client()
    catalog = json.loads(s3.get_object(Bucket=bucket, Key="site/models/models.json")["Body"].read())
    assert sorted(catalog) == entries
    for entry in entries:
        folder = s3client.parse(f"s3://{bucket}/site/models/{entry}/" + catalog[entry]["urls"]["base"].split("/")[-2], "test")
        record = json.loads(s3.get_object(Bucket=bucket, Key=folder.child("manifest.json").key)["Body"].read())
        assert record["id"] == entry and manifest.verify_source(S3Files(s3, folder), record["files"], listing="manifest.json") == []
    assert len([key for key in s3_store.list_committed("tiny-demo") if key.key.startswith("publish-")]) == RUNS
    assert list(s3_store.leftovers()) == []
