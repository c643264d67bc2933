"""Publishing to a bucket (moto's server on loopback): the versioned layout, browser headers,
models.json by compare-and-swap under concurrency, faults mid-upload, `foundry verify s3://`."""

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from foundry import catalog, gc, manifest, temporaries
from foundry.errors import UserError
from foundry.s3 import catalog as s3catalog
from foundry.s3 import client as s3client
from foundry.s3.publish import IMMUTABLE, S3Target
from foundry.store import open_store
from jobs.stages import publish
from tests.s3_proxy import FaultyProxy
from tests.test_publish import make_spec
from tests.test_publish import quantized as _quantized_model  # noqa: F401 - test_publish's fixture, under this name

REPO = Path(__file__).resolve().parent.parent
SEED_ENTRY = {"my-custom-agent": {"id": "my-model-v1-q4", "name": "My Custom Model", "size_mb": 1200, "urls": {"base": "/models/my-model-v1-q4/"}}}


@pytest.fixture
def quantized(request: pytest.FixtureRequest) -> Path:
    """test_publish's quantize-stage folder with two variants."""
    return request.getfixturevalue("_quantized_model")


def s3() -> Any:
    return s3client.client()


def objects(bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"].removeprefix(prefix): s3().get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


def read_catalog(bucket: str, key: str = "models/models.json") -> dict:
    return json.loads(s3().get_object(Bucket=bucket, Key=key)["Body"].read())


def publish_to(quantized: Path, tmp_path: Path, to: str, **params) -> dict:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    out.mkdir()
    return publish.run(make_spec(to, **params), {"onnx": quantized}, out)  # type: ignore[arg-type]


def test_publish_uploads_a_versioned_folder_then_the_catalogue(quantized: Path, tmp_path: Path, bucket: str) -> None:
    s3().put_object(Bucket=bucket, Key="models/models.json", Body=json.dumps(SEED_ENTRY).encode())
    summary = publish_to(quantized, tmp_path, f"s3://{bucket}/models/")
    version = S3Target.version(tmp_path / "out-0")
    folder = f"models/tiny-chat-q4/{version}/"
    assert summary["published"] == f"s3://{bucket}/{folder}" and summary["catalog"] == f"s3://{bucket}/models/models.json"
    published = objects(bucket, folder)
    local = {path: (tmp_path / "out-0" / path).read_bytes() for path in [*manifest.list_paths(tmp_path / "out-0"), "manifest.json"]}
    assert published == local, "every file, byte for byte, and nothing else"

    models = read_catalog(bucket)
    assert list(models) == [*SEED_ENTRY, "tiny-chat-q4"] and models["my-custom-agent"] == SEED_ENTRY["my-custom-agent"]
    entry = models["tiny-chat-q4"]
    assert entry["urls"]["base"] == f"/models/tiny-chat-q4/{version}/" and summary["base_url"] == entry["urls"]["base"]
    assert entry["variants"]["q4"]["sha256"] == manifest.read(tmp_path / "out-0")["variants"]["q4"]["sha256"]

    def head(key: str) -> dict:
        return s3().head_object(Bucket=bucket, Key=key)

    chunk, model, config = head(folder + "onnx/model_q4.onnx_data_1"), head(folder + "onnx/model_q4.onnx"), head(folder + "config.json")
    assert chunk["ContentType"] == model["ContentType"] == "application/octet-stream"
    assert config["ContentType"] == "application/json"
    assert chunk["CacheControl"] == model["CacheControl"] == config["CacheControl"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert head(folder + "manifest.json")["CacheControl"] == "no-cache"
    catalogue = head("models/models.json")
    assert catalogue["ContentType"] == "application/json" and catalogue["CacheControl"] == "no-cache"


def test_republishing_the_same_bytes_uploads_nothing_and_new_bytes_go_to_a_new_folder(quantized: Path, tmp_path: Path, bucket: str) -> None:
    first = publish_to(quantized, tmp_path, f"s3://{bucket}/models")
    before = objects(bucket, "models/tiny-chat-q4/")
    again = publish_to(quantized, tmp_path, f"s3://{bucket}/models")
    assert again["published"] == first["published"] and objects(bucket, "models/tiny-chat-q4/") == before, "the first manifest is kept"
    changed = publish_to(quantized, tmp_path, f"s3://{bucket}/models", shard_size_mb=10)
    assert changed["published"] != first["published"]
    assert read_catalog(bucket)["tiny-chat-q4"]["urls"]["base"] == changed["base_url"]
    assert {key: value for key, value in objects(bucket, "models/tiny-chat-q4/").items() if key in before} == before, "clients of the old version are undisturbed"


def test_an_invalid_catalogue_or_a_missing_bucket_is_refused_before_any_upload(quantized: Path, tmp_path: Path, bucket: str, s3_env: str) -> None:
    s3().put_object(Bucket=bucket, Key="models/models.json", Body=b"{not json")
    with pytest.raises(UserError, match=f"catalog s3://{bucket}/models/models.json: not valid JSON"):
        publish_to(quantized, tmp_path, f"s3://{bucket}/models")
    with pytest.raises(UserError, match=f"publish.to: endpoint {s3_env}, bucket no-such-bucket: the bucket does not exist"):
        publish_to(quantized, tmp_path, "s3://no-such-bucket/models")
    with pytest.raises(UserError, match="must both be s3:// URLs or both local paths"):
        publish_to(quantized, tmp_path, f"s3://{bucket}/models", catalog=str(tmp_path / "models.json"))
    assert list(objects(bucket, "")) == ["models/models.json"]
    assert not [path for out in tmp_path.glob("out-*") for path in out.iterdir()], "refused before any work"


def test_twenty_concurrent_publishers_keep_every_entry(bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    where = s3client.S3Location(bucket, "models/models.json")
    s3().put_object(Bucket=bucket, Key=where.key, Body=json.dumps(SEED_ENTRY).encode())
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def publisher(index: int) -> None:
        try:
            client = s3client.client()
            barrier.wait()
            for round_ in range(3):
                s3catalog.update(client, where, f"model-{index}", {"id": f"model-{index}", "round": round_})
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=publisher, args=(index,)) for index in range(20)]
    with caplog.at_level(logging.INFO, logger="foundry.catalog"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert any("merging again" in record.getMessage() for record in caplog.records), "the writers did race, and lost races were merged again"
    final = read_catalog(bucket)
    assert sorted(final) == sorted(["my-custom-agent", *(f"model-{index}" for index in range(20))])
    assert all(final[f"model-{index}"]["round"] == 2 for index in range(20))


def test_concurrent_publisher_processes_keep_every_entry(bucket: str) -> None:
    code = (
        "import sys; from foundry.s3 import catalog, client\n"
        "where = client.S3Location(sys.argv[1], 'models/models.json')\n"
        "for i in range(4):\n"
        "    catalog.update(client.client(), where, f'p{sys.argv[2]}-{i}', {'id': sys.argv[2], 'i': i})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", code, bucket, str(index)], env=env) for index in range(4)]
    assert [process.wait(timeout=120) for process in processes] == [0] * 4
    assert sorted(read_catalog(bucket)) == sorted(f"p{index}-{i}" for index in range(4) for i in range(4))


def test_a_lost_race_is_merged_again(bucket: str) -> None:
    """A writer whose read is overtaken by another writer's PUT gets 412 and merges again."""
    where = s3client.S3Location(bucket, "models/models.json")
    client = s3client.client()
    s3catalog.update(client, where, "a", {"id": "a"})
    stale, etag = s3catalog.read(client, where)
    s3catalog.update(client, where, "b", {"id": "b"})
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key=where.key, Body=catalog.dump(catalog.merge_entry(stale, "c", {"id": "c"})).encode(), IfMatch=etag)
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key=where.key, Body=b"{}", IfNoneMatch="*")
    s3catalog.update(client, where, "c", {"id": "c"})
    assert list(read_catalog(bucket)) == ["a", "b", "c"]


def test_publish_cut_off_mid_upload_leaves_no_entry_and_a_rerun_completes_identically(quantized: Path, tmp_path: Path, bucket: str, s3_env: str,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    publish_to(quantized, tmp_path, f"s3://{bucket}/reference")
    s3().put_object(Bucket=bucket, Key="site/models.json", Body=json.dumps(SEED_ENTRY).encode())
    faulty = FaultyProxy(s3_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("FOUNDRY_S3_ATTEMPTS", "2")
    try:
        faulty.cut_after(700_000)           # the endpoint stops with part of the model uploaded
        with pytest.raises(Exception) as failure:
            publish_to(quantized, tmp_path, f"s3://{bucket}/site")
        assert faulty.down and "s3://" in str(failure.value)
    finally:
        faulty.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    assert read_catalog(bucket, "site/models.json") == SEED_ENTRY, "no catalogue entry for a half-uploaded model"
    half = objects(bucket, "site/tiny-chat-q4/")
    assert half and not any(key.endswith("manifest.json") for key in half), "some files arrived, never the manifest"
    assert [temporaries.is_own(key) for key in half if key.startswith(".")] == [True], "the writer's tag stays: its upload is not finished"

    summary = publish_to(quantized, tmp_path, f"s3://{bucket}/site")
    assert read_catalog(bucket, "site/models.json")["tiny-chat-q4"]["urls"]["base"] == summary["base_url"]
    rerun, reference = objects(bucket, "site/tiny-chat-q4/"), objects(bucket, "reference/tiny-chat-q4/")
    assert sorted(rerun) == sorted(reference)
    for key in rerun:       # byte-identical; the manifest differs only in when it was written
        if key.endswith("manifest.json"):
            assert {**json.loads(rerun[key]), "created": 0} == {**json.loads(reference[key]), "created": 0}
        else:
            assert hashlib.sha256(rerun[key]).digest() == hashlib.sha256(reference[key]).digest(), key


def test_verify_reads_a_published_model_in_place_and_names_bad_chunks(quantized: Path, tmp_path: Path, bucket: str) -> None:
    summary = publish_to(quantized, tmp_path, f"s3://{bucket}/models")
    folder = summary["published"].rstrip("/")

    def verify(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "foundry", "verify", target], capture_output=True, text=True, cwd=REPO)

    result = verify(f"s3://{bucket}/models/tiny-chat-q4")       # the model's folder: each version in it
    assert result.returncode == 0 and f"ok {folder}: every file matches its sha256" in result.stdout, result.stderr
    key = folder.removeprefix(f"s3://{bucket}/")
    original = s3().get_object(Bucket=bucket, Key=f"{key}/onnx/model_q4.onnx_data_2")["Body"].read()
    s3().put_object(Bucket=bucket, Key=f"{key}/onnx/model_q4.onnx_data_2", Body=bytes(b ^ (i == 100) for i, b in enumerate(original)))
    s3().delete_object(Bucket=bucket, Key=f"{key}/onnx/model_fp16.onnx_data_1")
    result = verify(summary["published"])
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{folder}/onnx/model_fp16.onnx_data_1: missing",
        f"{folder}/onnx/model_q4.onnx_data_2: sha256 differs from manifest.json (corrupted)",
    ]
    missing = verify(f"s3://{bucket}/nothing-here")
    assert missing.returncode == 2 and "neither a published model" in missing.stderr


def _killed_mid_upload(endpoint: str, to: str, out: Path) -> int:
    """Publish `out` to `to` in another process and SIGKILL it once part of the upload went through."""
    code = (
        "import sys; from pathlib import Path\n"
        "from foundry.s3.publish import S3Target, open_target\n"
        "out = Path(sys.argv[2]); target = open_target(sys.argv[1], None)\n"
        "print('publishing', flush=True)\n"
        "target.publish(out, 'tiny-chat-q4', S3Target.version(out), 'tiny-chat-q4', {'id': 'tiny-chat-q4'})\n"
    )
    faulty = FaultyProxy(endpoint)
    try:
        faulty.cut_after(700_000)
        process = subprocess.Popen([sys.executable, "-c", code, to, str(out)], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "AWS_ENDPOINT_URL": faulty.url, "FOUNDRY_S3_ATTEMPTS": "50", "PYTHONPATH": str(REPO)})
        assert process.stdout is not None and process.stdout.readline().strip() == "publishing"
        deadline = time.monotonic() + 60
        while not faulty.down and time.monotonic() < deadline:
            time.sleep(0.02)
        assert faulty.down, "the upload never reached the cut"
        process.kill()
        process.wait(timeout=30)
    finally:
        faulty.close()
    return process.pid


def test_a_publish_killed_mid_upload_is_removed_by_a_rerun_and_by_gc(quantized: Path, tmp_path: Path, bucket: str, s3_env: str) -> None:
    """kill -9 while uploading leaves a version folder without its manifest and the writer's
    tag: gc lists it as a dead writer's whatever --older-than, a re-run removes it before
    uploading; a live writer's upload is never touched, another host's only by age."""
    publish_to(quantized, tmp_path, str(tmp_path / "web"))         # the layout, with its manifest, in out-0
    out = tmp_path / "out-0"
    version = S3Target.version(out)
    pid = _killed_mid_upload(s3_env, f"s3://{bucket}/site", out)
    left = objects(bucket, "site/tiny-chat-q4/")
    [tag] = [key for key in left if key.startswith(".")]
    assert re.fullmatch(rf"\.{version}\.tmp-{pid}-[0-9a-f]{{12}}@.+", tag) and temporaries.writer_state(tag) == "dead"
    assert any(key.startswith(f"{version}/") for key in left) and f"{version}/manifest.json" not in left
    live = ("site/tiny-chat-q4/feedfacefeedface/config.json", f"site/tiny-chat-q4/{temporaries.hidden_name('feedfacefeedface')}")
    elsewhere = ("site/tiny-chat-q4/0123456789abcdef/config.json", "site/tiny-chat-q4/.0123456789abcdef.tmp-1-0123456789ab@another-host")
    for key in (*live, *elsewhere):
        s3().put_object(Bucket=bucket, Key=key, Body=b"{}")

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny-demo.yml").write_text((REPO / "recipes" / "tiny-demo.yml").read_text().replace("to: ./.foundry/published/models", f"to: s3://{bucket}/site"))
    store = open_store(str(tmp_path / "store"))
    found = gc.collect(store, recipes, older_than=86400)
    assert [(item.kind, item.name, item.age_seconds) for item in found.doomed] == [("unfinished publish", f"s3://{bucket}/site/tiny-chat-q4/{version}/", math.inf)]
    assert sorted(item.name for item in gc.collect(store, recipes, older_than=0).doomed) == [
        f"s3://{bucket}/site/tiny-chat-q4/0123456789abcdef/", f"s3://{bucket}/site/tiny-chat-q4/{version}/"]

    summary = publish_to(quantized, tmp_path, f"s3://{bucket}/site")       # the re-run
    assert summary["published"] == f"s3://{bucket}/site/tiny-chat-q4/{version}/"
    after = objects(bucket, "site/")
    assert not [key for key in after if key.startswith(f"tiny-chat-q4/.{version}.")], "the dead writer's tag is gone, and the re-run's own"
    assert f"tiny-chat-q4/{version}/manifest.json" in after and all(key.removeprefix("site/") in after for key in (*live, *elsewhere))
    gc.delete(store, gc.collect(store, recipes, older_than=0).doomed)
    after = objects(bucket, "site/")
    assert all(key.removeprefix("site/") in after for key in live) and not any(key.removeprefix("site/") in after for key in elsewhere)
