"""What Foundry publishes, in its real client: transformers.js loads every variant of the tiny
demo from a loopback server, in Node (onnxruntime-node) and in headless Chromium
(onnxruntime-web on WebAssembly, served locally), and answers token for token what ONNX
Runtime in Python answers (jobs/tools/query.py's OnnxGenerator); on WebGPU too (Chromium's
SwiftShader adapter: no GPU needed), every variant the adapter can run by models.json's
`devices`, each in a worker of its own as the catalogue page loads them. The catalogue page
picks WebGPU, offers only what the adapter runs and says why not the rest, loads a variant
with a progress bar per file, chats with it, times each try, and a variant that fails to load
does not break the next.

Needs what `make test` installs: node_modules (`npm ci --ignore-scripts`) and Debian's
chromium. The page's screenshot is kept at .foundry/test-output/web/catalogue.png.
"""

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from foundry import catalog, manifest
from foundry.web import assets
from tests.png_check import assert_png
from tests.web_support import REPO, greedy_answers, run_node, serve, variant_files
from tests.web_support import assert_same_tokens as same_tokens

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = REPO / ".foundry" / "test-output" / "web" / "catalogue.png"
SHARD_MB = 0.03            # small enough that every variant of the tiny demo spans three chunks or more
MIN_CHUNKS = 3
MAX_NEW_TOKENS = 16
# SwiftShader compiles every shader anew in each worker and decodes a token or two a second:
# on WebGPU the first tokens of the same greedy run are compared.
WEBGPU_NEW_TOKENS = 8
PROMPT = "Hello there"
MESSAGES = [{"role": "user", "content": PROMPT}]
KEY, MODEL_ID = "tiny-demo", "tiny-demo-q4"
BROKEN = "tiny-demo-broken"     # a copy whose default variant's graph is garbage
LOCAL_TRANSFORMERS = assets.TRANSFORMERS_ROUTE + assets.TRANSFORMERS_MODULE


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if not found or assets.local_dirs() is None or not (REPO / "node_modules" / "playwright-core").is_dir() or not os.access(CHROMIUM, os.X_OK):
        pytest.fail("the web client tests need Node 20, node_modules and Debian's chromium: run `make test`, or `npm ci --ignore-scripts` and `apt-get install chromium`")
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A web root whose models/ folder holds the tiny demo as `foundry run` publishes it, in small chunks."""
    work = tmp_path_factory.mktemp("web")
    recipe = yaml.safe_load((REPO / "recipes" / "tiny-demo.yml").read_text())
    recipe["publish"].update(to="./site/models", shard_size_mb=SHARD_MB)
    (work / "tiny-demo.yml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "foundry", "run", "tiny-demo.yml"], cwd=work, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "site"


@pytest.fixture(scope="module")
def server(site: Path, node: str):
    with serve(site) as served:
        yield served


@pytest.fixture(scope="module")
def broken(site: Path) -> str:
    """The demo again, under its own catalogue entry, with its default variant's .onnx file
    overwritten: transformers.js fetches it and ONNX Runtime fails to create the session."""
    models = site / "models"
    shutil.copytree(models / MODEL_ID, models / BROKEN)
    entry = json.loads((models / "models.json").read_text())[KEY]
    default = entry["default_variant"]
    (models / BROKEN / entry["variants"][default]["file"]).write_bytes(b"not an ONNX graph " * 64)
    catalog.update(models / "models.json", BROKEN, {**entry, "id": BROKEN, "name": "Tiny Demo, broken", "urls": {"base": f"{BROKEN}/"}})
    return default


def entry_variants(site: Path) -> dict[str, dict]:
    return json.loads((site / "models" / "models.json").read_text())[KEY]["variants"]


def webgpu_runs(variant: dict, features: list[str]) -> bool:
    """Whether models.json says `variant` runs on a WebGPU adapter with `features`."""
    return "webgpu" in variant["devices"] and set(variant["devices"]["webgpu"]["features"]) <= set(features)


@pytest.fixture(scope="module")
def reference(site: Path) -> dict[str, dict]:
    """Per variant: the prompt's ids and the greedy tokens ONNX Runtime in Python generates."""
    return greedy_answers(site / "models" / MODEL_ID, PROMPT, MAX_NEW_TOKENS)


def assert_same_tokens(results: dict, reference: dict, site: Path, tokens: int = MAX_NEW_TOKENS) -> None:
    """`reference`'s greedy run of MAX_NEW_TOKENS; `results` of `tokens`, compared with its start."""
    same_tokens(results, reference, site / "models" / MODEL_ID, tokens)
    # Something to compare: a full run of 16 tokens somewhere, and more than one distinct answer.
    assert max(len(answer["new_ids"]) for answer in reference.values()) == MAX_NEW_TOKENS
    assert len({tuple(answer["new_ids"][:tokens]) for answer in reference.values()}) > 1


def test_every_variant_is_published_in_three_chunks_or_more(site: Path) -> None:
    folder = site / "models" / MODEL_ID
    variants = manifest.read(folder)["variants"]
    assert set(variants) == {"fp32", "fp16", "q8", "q4", "q4f16", "q2"}
    config = json.loads((folder / "config.json").read_text())["transformers.js_config"]
    for level, variant in variants.items():
        assert len(variant["chunks"]) >= MIN_CHUNKS, (level, variant["chunks"])
        assert config["use_external_data_format"][Path(variant["file"]).name] == len(variant["chunks"])
    assert manifest.verify(folder) == []


def test_models_json_says_where_each_variant_runs(site: Path) -> None:
    """Every variant on WebAssembly; on WebGPU, the float16 ones need shader-f16, the rest nothing."""
    for level, variant in entry_variants(site).items():
        assert list(variant["devices"]) == ["webgpu", "wasm"], level
        assert variant["devices"]["wasm"] == {"features": []}, level
        needs = ["shader-f16"] if variant["dtype"].endswith("16") else []   # fp16, q4f16
        assert variant["devices"]["webgpu"] == {"features": needs}, level


def test_node_generates_what_onnxruntime_generates(site: Path, server: tuple[str, list[str]], reference: dict, tmp_path: Path) -> None:
    url, _ = server
    output = run_node("node_generate.mjs", {
        "base": f"{url}/models/{MODEL_ID}/", "variants": list(reference), "messages": MESSAGES,
        "max_new_tokens": MAX_NEW_TOKENS, "cache_dir": str(tmp_path / "cache"),
    })
    assert output["version"] == assets_version()
    assert_same_tokens(output["results"], reference, site)


def test_chromium_generates_what_onnxruntime_generates(site: Path, server: tuple[str, list[str]], reference: dict) -> None:
    url, requested = server
    output = run_node("browser.mjs", {"mode": "generate", "chromium": CHROMIUM, "url": f"{url}/_harness/harness.html", "request": {
        "transformers": LOCAL_TRANSFORMERS, "catalogue": "/models/foundry-catalogue.js", "ort": assets.ONNXRUNTIME_WEB_ROUTE,
        "base": f"{url}/models/{MODEL_ID}/", "variants": list(reference), "messages": MESSAGES, "max_new_tokens": MAX_NEW_TOKENS,
    }})
    assert output["offsite"] == [], "nothing may come from a CDN or the Hub"
    assert output["isolated"] is True, "COOP/COEP make the page cross-origin isolated (threaded WebAssembly)"
    assert output["version"] == assets_version()
    assert_same_tokens(output["results"], reference, site)
    assert assets.ONNXRUNTIME_WEB_ROUTE + "ort-wasm-simd-threaded.asyncify.wasm" in requested, "onnxruntime-web's WebAssembly, served locally"


def test_chromium_on_webgpu_generates_what_onnxruntime_generates_and_a_failure_stays_in_its_worker(
    site: Path, server: tuple[str, list[str]], reference: dict, broken: str,
) -> None:
    """SwiftShader's adapter, software and without shader-f16: the variants models.json says it
    runs give ONNX Runtime's tokens, each loaded in a fresh worker after a variant that failed."""
    url, _ = server
    request = {
        "transformers": LOCAL_TRANSFORMERS, "catalogue": "/models/foundry-catalogue.js", "ort": assets.ONNXRUNTIME_WEB_ROUTE,
        "base": f"{url}/models/{MODEL_ID}/", "messages": MESSAGES, "max_new_tokens": WEBGPU_NEW_TOKENS, "device": "webgpu",
    }
    failing = {"name": BROKEN, "dtype": broken, "base": f"{url}/models/{BROKEN}/"}
    probe = run_node("browser.mjs", {"mode": "generate", "chromium": CHROMIUM, "webgpu": True, "url": f"{url}/_harness/harness.html",
                                     "request": {**request, "variants": []}})
    webgpu = probe["webgpu"]
    assert webgpu["adapter"] is not None, webgpu["reason"]
    runnable = [level for level, variant in entry_variants(site).items() if webgpu_runs(variant, webgpu["features"])]
    assert {"fp32", "q4"} <= set(runnable)
    if "shader-f16" not in webgpu["features"]:
        assert not [level for level in runnable if level.endswith("16")], runnable

    output = run_node("browser.mjs", {"mode": "generate", "chromium": CHROMIUM, "webgpu": True, "url": f"{url}/_harness/harness.html",
                                      "request": {**request, "workers": True, "variants": [failing, *runnable]}}, timeout=400)
    assert output["offsite"] == [] and output["isolated"] is True
    results = output["results"]
    assert "protobuf parsing failed" in results.pop(BROKEN)["error"]
    assert_same_tokens(results, {level: reference[level] for level in runnable}, site, WEBGPU_NEW_TOKENS)
    assert all(result["timing"]["load_s"] > 0 and result["timing"]["first_token_ms"] > 0 for result in results.values())

    # Why each variant gets a worker of its own: in one page, the failure breaks the next load.
    same_page = run_node("browser.mjs", {"mode": "generate", "chromium": CHROMIUM, "url": f"{url}/_harness/harness.html",
                                         "request": {**request, "device": "wasm", "variants": [failing, "q4"]}})["results"]
    assert "protobuf parsing failed" in same_page[BROKEN]["error"] and "protobuf parsing failed" in same_page["q4"]["error"]


def test_the_catalogue_page_picks_webgpu_offers_what_it_runs_and_survives_a_failed_load(
    site: Path, server: tuple[str, list[str]], reference: dict, broken: str, tmp_path: Path,
) -> None:
    url, _ = server
    models = site / "models"
    # A second entry as another publisher might write it, with evaluation results, so the page shows them.
    entry = json.loads((models / "models.json").read_text())[KEY]
    catalog.update(models / "models.json", "tiny-demo-evaluated", {**entry, "name": "Tiny Demo, evaluated", "metrics": {"arith.exact_match": 0.25, "arc_easy.acc_norm": 0.5}})
    f16 = [level for level, variant in entry["variants"].items() if "shader-f16" in variant["devices"]["webgpu"]["features"]]
    assert "fp16" in f16
    default = entry["default_variant"]
    screenshot = tmp_path / "catalogue.png"
    query = urllib.parse.urlencode({"transformers": LOCAL_TRANSFORMERS, "ort": assets.ONNXRUNTIME_WEB_ROUTE})
    output = run_node("browser.mjs", {
        "mode": "page", "chromium": CHROMIUM, "webgpu": True, "url": f"{url}/models/?{query}", "screenshot": str(screenshot), "steps": [
            {"model": BROKEN, "variant": broken},
            {"model": KEY, "variant": default, "prompt": PROMPT, "max_new_tokens": MAX_NEW_TOKENS},
            {"device": "wasm", "model": KEY, "variant": f16[0], "prompt": PROMPT, "max_new_tokens": MAX_NEW_TOKENS},
        ],
    }, timeout=400)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT)
    assert output["offsite"] == [] and output["errors"] == [], (output["offsite"], output["errors"])
    failed, on_webgpu, on_wasm = output["steps"]

    # WebGPU first, the adapter named; no f16 variant offered on it, and the page says why.
    assert failed["device"] == "webgpu" and output["devices"] == [{"device": "webgpu", "disabled": False}, {"device": "wasm", "disabled": False}]
    assert output["adapter"].startswith("WebGPU adapter: ") and "(fallback adapter, software), without shader-f16." in output["adapter"]
    cards = {card["key"]: card for card in failed["models"]}
    assert list(cards) == [KEY, BROKEN, "tiny-demo-evaluated"]
    lacks = "needs the WebGPU feature shader-f16, which this adapter lacks"
    assert [(row["level"], row["loadable"], row["reason"]) for row in cards[KEY]["variants"]] == [
        (level, level not in f16, lacks if level in f16 else None) for level in entry["variants"]]
    assert f"unavailable on WebGPU: {lacks}" in cards[KEY]["text"]
    for fact in ("Tiny Demo (slerp llama-a + llama-b)", "slerp", "tiny:llama-a, tiny:llama-b", entry["recipe_hash"], "No evaluation results published."):
        assert fact in cards[KEY]["text"], fact
    assert "arith.exact_match\t0.25" in cards["tiny-demo-evaluated"]["text"] and "arc_easy.acc_norm\t0.5" in cards["tiny-demo-evaluated"]["text"]

    # The broken variant fails in its worker and says so; the next load, on the same page, works.
    assert failed["loaded"] is None and failed["try"]["state"] == "failed" and "protobuf parsing failed" in failed["try"]["error"]
    assert failed["status"].startswith(f"Could not load Tiny Demo, broken · {broken} on WebGPU: ")
    assert on_webgpu["loaded"] == f"{KEY}:{default}:webgpu", on_webgpu["status"]
    bars = {row["file"]: row for row in on_webgpu["files"]}
    assert variant_files(site / "models" / MODEL_ID, default) <= set(bars), "a progress bar per file, every chunk among them"
    assert all(row["done"] and row["value"] == 100 for row in bars.values())

    # Switched to WebAssembly: every variant offered, the f16 one loads and answers.
    assert on_wasm["device"] == "wasm"
    assert [(row["level"], row["loadable"]) for row in on_wasm["models"][0]["variants"]] == [(level, True) for level in entry["variants"]]
    assert on_wasm["loaded"] == f"{KEY}:{f16[0]}:wasm", on_wasm["status"]
    for step, level in ((on_webgpu, default), (on_wasm, f16[0])):
        assert step["reply"] == {"text": reference[level]["text"], "tokens": len(reference[level]["new_ids"]), "error": False}
        timing = step["try"]
        assert float(timing["loadS"]) > 0 and float(timing["firstTokenMs"]) > 0 and float(timing["tokensPerS"]) > 0, timing
        assert int(timing["tokens"]) >= len(reference[level]["new_ids"])
    assert_png(screenshot, min_width=1280, min_height=900)


def test_the_page_takes_transformers_js_from_the_cdn_its_meta_or_its_own_origin(node: str) -> None:
    """A link's ?transformers= may not run another site's script on the catalogue's origin."""
    script = """
        import { settings } from "./foundry/web/foundry-catalogue.js";
        const documentWith = (metas) => ({ querySelector: (selector) => {
            const name = selector.match(/name="([^"]+)"/)[1];
            return name in metas ? { getAttribute: () => metas[name] } : null;
        } });
        const at = (href, metas = {}) => {
            try { return settings({ href }, documentWith(metas)); } catch (error) { return { error: error.message }; }
        };
        const page = "http://127.0.0.1:9/models/";
        console.log(JSON.stringify([
            at(page),
            at(page, { "foundry-transformers": "/_foundry/transformers/transformers.min.js", "foundry-onnxruntime-web": "/_foundry/onnxruntime-web/" }),
            at(page + "?transformers=/t/transformers.min.js&ort=/o/", { "foundry-transformers": "/ignored.js" }),
            at(page + "?transformers=https://elsewhere.example/x.js"),
        ]));
    """
    result = subprocess.run([node, "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    default, meta, query, elsewhere = json.loads(result.stdout)
    version = assets_version()
    assert default == {"transformers": f"https://cdn.jsdelivr.net/npm/@huggingface/transformers@{version}/dist/transformers.min.js", "ort": None}
    assert meta == {"transformers": "http://127.0.0.1:9/_foundry/transformers/transformers.min.js", "ort": "http://127.0.0.1:9/_foundry/onnxruntime-web/"}
    assert query == {"transformers": "http://127.0.0.1:9/t/transformers.min.js", "ort": "http://127.0.0.1:9/o/"}
    assert "only a URL on this page's own origin" in elsewhere["error"]


def assets_version() -> str:
    return json.loads((REPO / "package.json").read_text())["dependencies"]["@huggingface/transformers"]


def test_the_page_offers_a_variant_on_a_device_only_where_models_json_says_it_runs(node: str) -> None:
    """The choice without probing: `devices` against the adapter's features; no WebGPU without
    an adapter; an entry published before `devices` existed runs on WebAssembly alone."""
    script = """
        import { availability, preferredDevice } from "./foundry/web/foundry-catalogue.js";
        const devices = (webgpu) => ({ webgpu: { features: webgpu }, wasm: { features: [] } });
        const swiftshader = { adapter: { vendor: "google", architecture: "swiftshader", isFallbackAdapter: true }, features: ["subgroups"] };
        const f16 = { ...swiftshader, features: ["shader-f16", "subgroups"] };
        const none = { adapter: null, features: [], reason: "this browser has no WebGPU (navigator.gpu)" };
        const q4 = { dtype: "q4", devices: devices([]) }, q4f16 = { dtype: "q4f16", devices: devices(["shader-f16"]) };
        console.log(JSON.stringify({
            q4: availability(q4, "webgpu", swiftshader), q4f16: availability(q4f16, "webgpu", swiftshader),
            q4f16_f16: availability(q4f16, "webgpu", f16), q4f16_wasm: availability(q4f16, "wasm", swiftshader),
            no_adapter: availability(q4, "webgpu", none), wasm_only: availability({ dtype: "q4", devices: { wasm: { features: [] } } }, "webgpu", f16),
            old_webgpu: availability({ dtype: "q4" }, "webgpu", f16), old_wasm: availability({ dtype: "q4" }, "wasm", f16),
            native: availability({ dtype: "int4_rtn", devices: devices([]) }, "wasm", f16),
            preferred: [preferredDevice(swiftshader), preferredDevice(none)],
        }));
    """
    result = subprocess.run([node, "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    ok = {"ok": True, "reason": None}
    assert got["q4"] == got["q4f16_f16"] == got["q4f16_wasm"] == got["old_wasm"] == ok
    assert got["q4f16"] == {"ok": False, "reason": "needs the WebGPU feature shader-f16, which this adapter lacks"}
    assert got["no_adapter"] == {"ok": False, "reason": "this browser has no WebGPU (navigator.gpu)"}
    assert got["wasm_only"] == {"ok": False, "reason": "not published for WebGPU"}
    assert got["old_webgpu"] == {"ok": False, "reason": "published without device support in models.json: WebAssembly only"}
    assert got["native"]["ok"] is False and got["native"]["native"] is True and "int4_rtn" in got["native"]["reason"]
    assert got["preferred"] == ["webgpu", "wasm"]
