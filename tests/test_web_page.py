"""The catalogue page as the publish stage writes it, to a folder and to a bucket: beside
models.json, with browser content types and a short cache, never over a user's own index.html;
and the local copies of transformers.js that `foundry serve` hands the page. (The page in a
browser: tests/test_web_client.py.)"""

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from foundry.s3 import client as s3client
from foundry.s3.publish import PAGE_CACHE
from foundry.web import assets, devices, page
from jobs.stages import publish
from tests.test_publish import make_spec
from tests.test_publish import quantized as _quantized_model  # noqa: F401 - test_publish's fixture, under this name

REPO = Path(__file__).resolve().parent.parent
USER_INDEX = b"<!doctype html><title>My own site</title>"


@pytest.fixture
def quantized(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("_quantized_model")


def publish_to(quantized: Path, tmp_path: Path, to: str, **params: Any) -> dict:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    out.mkdir()
    return publish.run(make_spec(to, **params), {"onnx": quantized}, out)  # type: ignore[arg-type]


def test_publish_writes_the_page_beside_the_catalogue(quantized: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    summary = publish_to(quantized, tmp_path, str(site / "llm"), catalog=str(site / "models.json"))
    assert summary["page"] == [str(site / name) for name in assets.PAGE_FILES]
    for name, source in assets.page_files().items():
        assert (site / name).read_bytes() == source.read_bytes()
    assert not (site / "llm" / "index.html").exists()


def test_a_users_index_is_kept_and_foundrys_own_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "index.html").write_bytes(USER_INDEX)
    (tmp_path / "foundry-catalogue.js").write_text("// an older Foundry's script")
    with caplog.at_level(logging.WARNING, logger="foundry.publish"):
        written = page.write(tmp_path)
    assert (tmp_path / "index.html").read_bytes() == USER_INDEX
    assert "is not Foundry's catalogue page; leaving it as it is" in caplog.text
    assert written == [tmp_path / "foundry-catalogue.js", tmp_path / "foundry-catalogue.css"]
    assert (tmp_path / "foundry-catalogue.js").read_bytes() == assets.page_files()["foundry-catalogue.js"].read_bytes()

    (tmp_path / "index.html").write_text(f"<html><head>{assets.GENERATOR_META}<title>old page</title></head></html>")
    assert tmp_path / "index.html" in page.write(tmp_path)
    assert (tmp_path / "index.html").read_bytes() == assets.page_files()["index.html"].read_bytes()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == [], "no temporary file left behind"


def test_publish_to_a_bucket_puts_the_page_with_browser_headers(quantized: Path, tmp_path: Path, bucket: str) -> None:
    s3 = s3client.client()
    assert PAGE_CACHE == "public, max-age=300", "a new page shows within minutes; model files stay immutable"
    summary = publish_to(quantized, tmp_path, f"s3://{bucket}/models")
    assert summary["page"] == [f"s3://{bucket}/models/{name}" for name in assets.PAGE_FILES]
    kinds = {"index.html": "text/html; charset=utf-8", "foundry-catalogue.js": "text/javascript; charset=utf-8", "foundry-catalogue.css": "text/css; charset=utf-8"}
    for name, kind in kinds.items():
        head = s3.head_object(Bucket=bucket, Key=f"models/{name}")
        assert (head["ContentType"], head["CacheControl"]) == (kind, PAGE_CACHE)
        assert s3.get_object(Bucket=bucket, Key=f"models/{name}")["Body"].read() == assets.page_files()[name].read_bytes()

    s3.put_object(Bucket=bucket, Key="models/index.html", Body=USER_INDEX, ContentType="text/html")
    again = publish_to(quantized, tmp_path, f"s3://{bucket}/models", shard_size_mb=10)
    assert again["page"] == [f"s3://{bucket}/models/foundry-catalogue.js", f"s3://{bucket}/models/foundry-catalogue.css"]
    assert s3.get_object(Bucket=bucket, Key="models/index.html")["Body"].read() == USER_INDEX


def test_render_index_points_the_page_at_the_local_copies() -> None:
    written = assets.page_files()["index.html"].read_bytes()
    assert assets.render_index(local=False) == written and assets.is_foundry_page(written)
    local = assets.render_index(local=True).decode()
    assert '<meta name="foundry-transformers" content="/_foundry/transformers/transformers.min.js">' in local
    assert '<meta name="foundry-onnxruntime-web" content="/_foundry/onnxruntime-web/">' in local


def test_local_dirs_finds_an_installed_node_modules_or_says_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(assets.NODE_MODULES_ENV, str(tmp_path))
    assert assets.local_dirs() is None
    (tmp_path / "@huggingface" / "transformers" / "dist").mkdir(parents=True)
    (tmp_path / "@huggingface" / "transformers" / "dist" / assets.TRANSFORMERS_MODULE).write_text("export {};")
    (tmp_path / "onnxruntime-web" / "dist").mkdir(parents=True)
    assert assets.local_dirs() == {"/_foundry/transformers/": tmp_path / "@huggingface/transformers/dist", "/_foundry/onnxruntime-web/": tmp_path / "onnxruntime-web/dist"}


def test_the_page_loads_the_transformers_js_version_package_json_pins() -> None:
    pinned = json.loads((REPO / "package.json").read_text())["dependencies"]["@huggingface/transformers"]
    locked = json.loads((REPO / "package-lock.json").read_text())["packages"]["node_modules/@huggingface/transformers"]["version"]
    script = assets.page_files()["foundry-catalogue.js"].read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "an exact pin"
    assert locked == pinned
    assert f'export const TRANSFORMERS_VERSION = "{pinned}";' in script


@pytest.mark.parametrize(("level", "float16_cache", "webgpu"), [
    ("q4", False, []), ("fp32", False, []), ("fp16", False, ["shader-f16"]), ("q4f16", False, ["shader-f16"]),
    ("q4", True, ["shader-f16"]),       # a float16 key/value cache is float16 arithmetic on WebGPU too
])
def test_what_each_variant_needs_on_each_device(level: str, float16_cache: bool, webgpu: list[str]) -> None:
    needs = devices.requirements(level, float16_cache)
    assert list(needs) == ["webgpu", "wasm"], "most preferred first"
    assert needs == {"webgpu": {"features": webgpu}, "wasm": {"features": []}}
