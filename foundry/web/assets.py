"""The catalogue page's files, and the local copies of transformers.js and onnxruntime-web.

The page (index.html, foundry-catalogue.js, foundry-catalogue.css) ships inside the package,
so the publish stage finds it in the CPU image. By default it loads transformers.js from a
pinned CDN URL; a local server (`foundry serve`, the tests) serves the npm copies that
`npm ci` put in node_modules under LOCAL_ROUTES instead, and hands out the index from
`render_index(local=True)`, whose <meta> tags point the page there. Light: stdlib only.
"""

import os
from pathlib import Path

PAGE_FOLDER = Path(__file__).resolve().parent
INDEX = "index.html"
PAGE_FILES = (INDEX, "foundry-catalogue.js", "foundry-catalogue.css")
# Marks an index.html as Foundry's own, so a re-publish may replace it (and never a user's).
GENERATOR_META = '<meta name="generator" content="Foundry catalogue page">'

# URL route -> folder inside node_modules.
TRANSFORMERS_ROUTE = "/_foundry/transformers/"
ONNXRUNTIME_WEB_ROUTE = "/_foundry/onnxruntime-web/"
LOCAL_ROUTES = {TRANSFORMERS_ROUTE: "@huggingface/transformers/dist", ONNXRUNTIME_WEB_ROUTE: "onnxruntime-web/dist"}
# The self-contained browser build (onnxruntime-web's JavaScript bundled in).
TRANSFORMERS_MODULE = "transformers.min.js"
NODE_MODULES_ENV = "FOUNDRY_NODE_MODULES"

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".wasm": "application/wasm", ".json": "application/json"}


def page_files() -> dict[str, Path]:
    """The page's files by name, as published."""
    return {name: PAGE_FOLDER / name for name in PAGE_FILES}


def node_modules() -> Path:
    """$FOUNDRY_NODE_MODULES, else the node_modules of this checkout (where `make` runs `npm ci`)."""
    configured = os.environ.get(NODE_MODULES_ENV)
    return Path(configured) if configured else PAGE_FOLDER.parent.parent / "node_modules"


def local_dirs() -> dict[str, Path] | None:
    """Route -> local folder for transformers.js and onnxruntime-web; None unless both are installed."""
    root = node_modules()
    dirs = {route: root / relative for route, relative in LOCAL_ROUTES.items()}
    if not (dirs[TRANSFORMERS_ROUTE] / TRANSFORMERS_MODULE).is_file() or not dirs[ONNXRUNTIME_WEB_ROUTE].is_dir():
        return None
    return dirs


def render_index(*, local: bool) -> bytes:
    """index.html; with `local`, its <meta> tags send the page to LOCAL_ROUTES instead of the CDN."""
    text = (PAGE_FOLDER / INDEX).read_text(encoding="utf-8")
    if local:
        for name, value in (("foundry-transformers", TRANSFORMERS_ROUTE + TRANSFORMERS_MODULE), ("foundry-onnxruntime-web", ONNXRUNTIME_WEB_ROUTE)):
            blank = f'<meta name="{name}" content="">'
            if blank not in text:
                raise RuntimeError(f"{PAGE_FOLDER / INDEX}: lacks {blank}")
            text = text.replace(blank, f'<meta name="{name}" content="{value}">')
    return text.encode("utf-8")


def is_foundry_page(content: bytes) -> bool:
    return GENERATOR_META.encode() in content


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
