// Foundry's catalogue page: lists what models.json holds, loads a variant with transformers.js
// and talks to it. Published beside models.json by the publish stage (foundry/web/assets.py).
//
// The loading code is exported and has no DOM in it, so the real-client test
// (tests/test_web_client.py) runs this very code in Node and in Chromium.
//
// Where transformers.js comes from: the pinned CDN build below, unless the page says otherwise,
// in this order: the query (?transformers=URL&ort=URL, same origin only, so a crafted link cannot
// run someone else's script on this origin), then <meta name="foundry-transformers"> and
// <meta name="foundry-onnxruntime-web"> (`foundry serve` sets them to its local copies).

export const TRANSFORMERS_VERSION = "4.3.2";
export const DEFAULT_TRANSFORMERS_URL = `https://cdn.jsdelivr.net/npm/@huggingface/transformers@${TRANSFORMERS_VERSION}/dist/transformers.min.js`;
// The onnxruntime-web build transformers.js picks by default (its CDN default, served locally when given).
const ORT_WASM = "ort-wasm-simd-threaded.asyncify";
// transformers.js model ids: what its isValidHfModelId accepts for one path segment.
const MODEL_SEGMENT = /^\b[\w\-.]{1,96}\b$/;
// dtypes the pinned transformers.js knows (its DATA_TYPES); a variant outside them is native-only.
export const BROWSER_DTYPES = new Set(["fp32", "fp16", "q8", "int8", "uint8", "q4", "bnb4", "q4f16", "q2", "q2f16", "q1", "q1f16"]);

/** The transformers.js module URL and the onnxruntime-web folder (null: its own default). */
export function settings(location, document) {
  const query = new URL(location.href).searchParams;
  const meta = (name) => document?.querySelector(`meta[name="${name}"]`)?.getAttribute("content") || null;
  const pick = (param, metaName) => {
    const asked = query.get(param);
    if (asked) {
      const url = new URL(asked, location.href);
      if (url.origin !== new URL(location.href).origin) throw new Error(`?${param}=${asked}: only a URL on this page's own origin may be given in the query`);
      return url.href;
    }
    const fromMeta = meta(metaName);
    return fromMeta ? new URL(fromMeta, location.href).href : null;
  };
  return { transformers: pick("transformers", "foundry-transformers") || DEFAULT_TRANSFORMERS_URL, ort: pick("ort", "foundry-onnxruntime-web") };
}

/** A catalogue entry's folder as transformers.js addresses it: a host prefix and one model segment. */
export function modelLocation(base) {
  const url = new URL(base);
  const segments = url.pathname.replace(/\/+$/, "").split("/");
  const model = segments.pop();
  if (!model || !MODEL_SEGMENT.test(model) || model.includes("..") || model.includes("--")) {
    throw new Error(`${base}: transformers.js loads a model folder whose last path segment is letters, digits, '-', '_' or '.' (found ${JSON.stringify(model)})`);
  }
  url.pathname = segments.join("/") + "/";
  url.search = "";
  url.hash = "";
  return { host: url.href, model };
}

/** Point transformers.js at one published folder: no Hub, no local paths, no stale cache. */
export function configure(tjs, base, ortFolder = null) {
  const { host, model } = modelLocation(base);
  const env = tjs.env;
  env.allowLocalModels = false;
  env.allowRemoteModels = true;
  env.remoteHost = host;
  env.remotePathTemplate = "{model}/";
  // A local publish replaces files in place under the same URLs; the HTTP cache revalidates,
  // the browser cache of transformers.js would not. (Node needs its file cache: it hands
  // onnxruntime-node the external data as file paths; callers there choose env.cacheDir.)
  env.useBrowserCache = false;
  if (ortFolder) {
    const folder = new URL(ortFolder, globalThis.location?.href);
    env.backends.onnx.wasm.wasmPaths = { mjs: new URL(`${ORT_WASM}.mjs`, folder).href, wasm: new URL(`${ORT_WASM}.wasm`, folder).href };
  }
  return model;
}

/** Tokenizer and model of one variant; `onProgress(event)` gets transformers.js's per-file events. */
export async function loadModel(tjs, base, dtype, { ort = null, onProgress = null } = {}) {
  const model = configure(tjs, base, ort);
  const progress_callback = onProgress ?? undefined;
  const tokenizer = await tjs.AutoTokenizer.from_pretrained(model, { progress_callback });
  const lm = await tjs.AutoModelForCausalLM.from_pretrained(model, { dtype, progress_callback });
  return { tokenizer, model: lm };
}

/** The ids that end a reply: the generation config's eos ids and the tokenizer's. */
export function stopIds(generationConfig, tokenizer) {
  const eos = generationConfig?.eos_token_id;
  const ids = new Set(Array.isArray(eos) ? eos : eos == null ? [] : [eos]);
  if (tokenizer?.eos_token_id != null) ids.add(tokenizer.eos_token_id);
  return ids;
}

/** Greedy reply to `messages` through the chat template; `onText` streams the decoded text. */
export async function reply(tjs, { tokenizer, model }, messages, { maxNewTokens = 64, onText = null } = {}) {
  const inputs = tokenizer.chat_template
    ? tokenizer.apply_chat_template(messages, { add_generation_prompt: true, return_dict: true })
    : tokenizer(messages.at(-1).content);
  const promptIds = Array.from(inputs.input_ids.data, Number);
  const streamer = onText ? new tjs.TextStreamer(tokenizer, { skip_prompt: true, skip_special_tokens: true, callback_function: onText }) : undefined;
  const output = await model.generate({ ...inputs, max_new_tokens: maxNewTokens, do_sample: false, streamer });
  const generated = Array.from(output.data, Number).slice(promptIds.length);
  const stops = stopIds(model.generation_config, tokenizer);
  const end = generated.findIndex((token) => stops.has(token));
  const newIds = end < 0 ? generated : generated.slice(0, end);
  return { promptIds, newIds, text: tokenizer.decode(newIds, { skip_special_tokens: true }).trim() };
}

// --- the page ------------------------------------------------------------------------------

const MB = (value) => (typeof value === "number" ? `${value.toFixed(value < 10 ? 1 : 0)} MB` : "–");
const bytes = (count) => (count < 1024 ? `${count} B` : count < 1024 * 1024 ? `${(count / 1024).toFixed(0)} KiB` : `${(count / 1024 / 1024).toFixed(1)} MiB`);
const number = (value) => (typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(4).replace(/0+$/, "").replace(/\.$/, "")) : String(value));

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Flat "name: value" rows from whatever evaluation record an entry carries (flat or nested). */
export function metricRows(entry) {
  const source = entry.metrics ?? entry.evaluation?.metrics ?? entry.evaluation ?? null;
  if (!source || typeof source !== "object") return [];
  const rows = [];
  const walk = (prefix, value) => {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [name, inner] of Object.entries(value)) walk(prefix ? `${prefix}.${name}` : name, inner);
    } else if (typeof value === "number" || typeof value === "string" || typeof value === "boolean") {
      rows.push([prefix, value]);
    }
  };
  walk("", source);
  return rows;
}

function provenance(entry) {
  const meta = entry.metadata ?? {};
  const fusion = meta.fusion;
  const rows = [];
  if (fusion) {
    rows.push(["merge method", fusion.method ?? "–"]);
    rows.push(["sources", (fusion.sources ?? []).join(", ") || "–"]);
  } else {
    rows.push(["merge", "none (a single model)"]);
  }
  if (entry.recipe_hash) rows.push(["recipe", entry.recipe_hash]);
  if (meta.created_by ?? fusion?.created_by) rows.push(["built by", meta.created_by ?? fusion.created_by]);
  if (entry.published) rows.push(["published", entry.published]);
  return rows;
}

const table = (rows, className) =>
  element("table", { class: className }, element("tbody", {}, rows.map(([name, value]) => element("tr", {}, element("th", {}, name), element("td", {}, number(value))))));

function variantTable(key, entry, onLoad) {
  const head = element("tr", {}, ["variant", "size", "chunks", "top-1 agreement", ""].map((title) => element("th", {}, title)));
  const rows = Object.entries(entry.variants ?? {}).map(([level, variant]) => {
    const dtype = variant.dtype ?? level;
    const runs = BROWSER_DTYPES.has(dtype);
    const agreement = typeof variant.top1_agreement === "number" ? `${(variant.top1_agreement * 100).toFixed(1)}%` : "–";
    const button = runs
      ? element("button", { type: "button", "data-model": key, "data-variant": level, onclick: () => onLoad(key, entry, level, dtype) }, "Load")
      : element("span", { class: "native", title: "transformers.js cannot run this dtype; ONNX Runtime outside the browser can" }, "native only");
    return element("tr", { class: level === entry.default_variant ? "default" : null },
      element("td", {}, level, level === entry.default_variant ? element("small", {}, " default") : null),
      element("td", {}, MB(variant.size_mb)), element("td", {}, variant.chunks ?? "–"), element("td", {}, agreement), element("td", {}, button));
  });
  return element("table", { class: "variants" }, element("thead", {}, head), element("tbody", {}, rows));
}

function card(key, entry, onLoad) {
  const metrics = metricRows(entry);
  return element("article", { class: "model", "data-model": key },
    element("header", {}, element("h2", {}, entry.name ?? key), element("code", {}, entry.id ?? key), element("span", { class: "size" }, MB(entry.size_mb))),
    entry.description ? element("p", {}, entry.description) : null,
    element("div", { class: "columns" },
      element("section", { class: "wide" }, element("h3", {}, "Variants"), variantTable(key, entry, onLoad)),
      element("section", {}, element("h3", {}, "Provenance"), table(provenance(entry), "facts")),
      element("section", {}, element("h3", {}, "Evaluation"), metrics.length ? table(metrics, "metrics") : element("p", { class: "muted" }, "No evaluation results published."))));
}

class Loader {
  constructor(root) {
    this.root = root;
    this.bars = new Map();
  }

  reset(title) {
    this.bars.clear();
    this.root.replaceChildren(element("h3", {}, title));
  }

  update(event) {
    if (!event.file) return;
    let bar = this.bars.get(event.file);
    if (!bar) {
      const progress = element("progress", { max: 100, value: 0 });
      const label = element("span", { class: "bytes" });
      bar = { progress, label };
      this.bars.set(event.file, bar);
      this.root.append(element("div", { class: "file", "data-file": event.file }, element("code", {}, event.file), progress, label));
    }
    if (event.status === "progress" && typeof event.progress === "number") {
      bar.progress.value = event.progress;
      if (event.total) bar.label.textContent = `${bytes(event.loaded)} / ${bytes(event.total)}`;
    } else if (event.status === "done") {
      bar.progress.value = 100;
      bar.progress.closest(".file").classList.add("done");
    }
  }
}

async function main() {
  const status = document.querySelector("#status");
  const say = (text, kind = "") => {
    status.textContent = text;
    status.className = kind;
  };
  let config;
  try {
    config = settings(window.location, document);
  } catch (error) {
    say(error.message, "error");
    return;
  }
  const catalogueURL = new URL("models.json", window.location.href);
  let catalogue;
  try {
    const response = await fetch(catalogueURL, { cache: "no-cache" });
    if (!response.ok) throw new Error(`${catalogueURL}: HTTP ${response.status}`);
    catalogue = await response.json();
  } catch (error) {
    say(`Could not read the catalogue: ${error.message}`, "error");
    return;
  }
  const list = document.querySelector("#models");
  const loader = new Loader(document.querySelector("#loader"));
  const chat = document.querySelector("#chat");
  const log = document.querySelector("#log");
  const form = document.querySelector("#ask");
  let tjs = null;
  let loaded = null;
  let messages = [];

  const onLoad = async (key, entry, level, dtype) => {
    document.querySelectorAll("button[data-variant]").forEach((button) => (button.disabled = true));
    loaded = null;
    chat.hidden = true;
    messages = [];
    log.replaceChildren();
    const title = `${entry.name ?? key} · ${level}`;
    loader.reset(`Loading ${title}`);
    say(`Loading ${title}…`, "busy");
    try {
      tjs ??= await import(config.transformers);
      const base = new URL(entry.urls?.base ?? `${entry.id}/`, catalogueURL).href;
      const started = performance.now();
      loaded = await loadModel(tjs, base, dtype, { ort: config.ort, onProgress: (event) => loader.update(event) });
      loaded.title = title;
      say(`${title} loaded in ${((performance.now() - started) / 1000).toFixed(1)} s, ${tjs.env.version ? `transformers.js ${tjs.env.version}` : ""}`, "ready");
      document.querySelector("#chat-title").textContent = title;
      chat.hidden = false;
      document.body.dataset.loaded = `${key}:${level}`;
      form.querySelector("textarea").focus();
    } catch (error) {
      say(`Could not load ${title}: ${error.message ?? error}`, "error");
    } finally {
      document.querySelectorAll("button[data-variant]").forEach((button) => (button.disabled = false));
    }
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = form.querySelector("textarea");
    const text = box.value.trim();
    if (!text || !loaded) return;
    box.value = "";
    const send = form.querySelector("button");
    send.disabled = true;
    messages.push({ role: "user", content: text });
    log.append(element("div", { class: "turn user" }, text));
    const answer = element("div", { class: "turn assistant pending" });
    log.append(answer);
    const maxNewTokens = Number(form.querySelector("#max-tokens").value) || 64;
    try {
      let streamed = "";
      const result = await reply(tjs, loaded, messages, { maxNewTokens, onText: (piece) => { streamed += piece; answer.textContent = streamed; } });
      answer.textContent = result.text || "(no text: the model stopped at once)";
      answer.dataset.tokens = String(result.newIds.length);
      messages.push({ role: "assistant", content: result.text });
    } catch (error) {
      answer.textContent = `Error: ${error.message ?? error}`;
      answer.classList.add("error");
    } finally {
      answer.classList.remove("pending");
      send.disabled = false;
    }
  });

  const entries = Object.entries(catalogue);
  list.replaceChildren(...entries.map(([key, entry]) => card(key, entry, onLoad)));
  say(entries.length ? `${entries.length} model${entries.length === 1 ? "" : "s"} in ${catalogueURL.pathname}` : "The catalogue is empty: publish a model first.", "ready");
  document.body.dataset.ready = "true";
}

if (typeof document !== "undefined" && document.querySelector("#foundry-catalogue")) {
  main();
}
