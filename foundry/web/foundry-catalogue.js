// Foundry's catalogue page: lists what models.json holds, loads a variant with transformers.js
// and talks to it. Published beside models.json by the publish stage (foundry/web/assets.py).
//
// The loading code is exported and has no DOM in it, so the real-client test
// (tests/test_web_client.py) runs this very code in Node and in Chromium.
//
// Each variant loads in a module worker of its own, running this same file (`serveWorker`
// below): transformers.js 4.3.2 chains every session creation and every run of a page on one
// promise, so once one fails every later one in that page fails too; a fresh worker per load
// keeps a failure to its own variant. The page runs a variant on WebGPU when the browser has
// an adapter with the features the variant's `devices` (models.json) asks for, on WebAssembly
// otherwise, and the user can switch.
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
// transformers.js `device` values the page offers, most preferred first (foundry/web/devices.py).
export const DEVICE_LABELS = { webgpu: "WebGPU", wasm: "WebAssembly" };
// What an entry published before models.json recorded `devices` is taken to need: WebAssembly,
// where every dtype above runs.
const UNRECORDED_DEVICES = { wasm: { features: [] } };

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

/** Tokenizer and model of one variant on `device` (transformers.js's default when null);
 * `onProgress(event)` gets transformers.js's per-file events. */
export async function loadModel(tjs, base, dtype, { ort = null, device = null, onProgress = null } = {}) {
  const model = configure(tjs, base, ort);
  const progress_callback = onProgress ?? undefined;
  const tokenizer = await tjs.AutoTokenizer.from_pretrained(model, { progress_callback });
  const lm = await tjs.AutoModelForCausalLM.from_pretrained(model, { dtype, progress_callback, ...(device ? { device } : {}) });
  return { tokenizer, model: lm };
}

/** The ids that end a reply: the generation config's eos ids and the tokenizer's. */
export function stopIds(generationConfig, tokenizer) {
  const eos = generationConfig?.eos_token_id;
  const ids = new Set(Array.isArray(eos) ? eos : eos == null ? [] : [eos]);
  if (tokenizer?.eos_token_id != null) ids.add(tokenizer.eos_token_id);
  return ids;
}

/** Greedy reply to `messages` through the chat template; `onText` streams the decoded text.
 * `timing`: first_token_ms from the call to the first new token (templating and prefill),
 * tokens_per_s over the tokens after the first (decoding alone), seconds in all. */
export async function reply(tjs, { tokenizer, model }, messages, { maxNewTokens = 64, onText = null } = {}) {
  const started = performance.now();
  let firstToken = null;
  const inputs = tokenizer.chat_template
    ? tokenizer.apply_chat_template(messages, { add_generation_prompt: true, return_dict: true })
    : tokenizer(messages.at(-1).content);
  const promptIds = Array.from(inputs.input_ids.data, Number);
  const streamer = new tjs.TextStreamer(tokenizer, {
    skip_prompt: true, skip_special_tokens: true, callback_function: onText ?? (() => {}),
    token_callback_function: () => (firstToken ??= performance.now()),
  });
  const output = await model.generate({ ...inputs, max_new_tokens: maxNewTokens, do_sample: false, streamer });
  const finished = performance.now();
  const generated = Array.from(output.data, Number).slice(promptIds.length);
  const stops = stopIds(model.generation_config, tokenizer);
  const end = generated.findIndex((token) => stops.has(token));
  const newIds = end < 0 ? generated : generated.slice(0, end);
  const timing = {
    tokens: generated.length,
    seconds: (finished - started) / 1000,
    first_token_ms: firstToken === null ? null : firstToken - started,
    tokens_per_s: generated.length > 1 && finished > firstToken ? (generated.length - 1) / ((finished - firstToken) / 1000) : null,
  };
  return { promptIds, newIds, text: tokenizer.decode(newIds, { skip_special_tokens: true }).trim(), timing };
}

// --- devices -------------------------------------------------------------------------------

/** The browser's WebGPU adapter: {adapter: {vendor, architecture, description, isFallbackAdapter},
 * features: [...]}, or {adapter: null, reason} saying why there is none. */
export async function probeWebGPU(scope = globalThis) {
  const gpu = scope.navigator?.gpu;
  if (!gpu) {
    const reason = scope.isSecureContext === false ? "WebGPU needs a secure origin (https:// or http://localhost)" : "this browser has no WebGPU (navigator.gpu)";
    return { adapter: null, features: [], reason };
  }
  let adapter;
  try {
    adapter = await gpu.requestAdapter();
  } catch (error) {
    return { adapter: null, features: [], reason: `requestAdapter failed: ${error?.message ?? error}` };
  }
  if (!adapter) return { adapter: null, features: [], reason: "the browser offers no WebGPU adapter (GPU blocked or WebGPU disabled)" };
  const info = adapter.info ?? {};
  return {
    adapter: { vendor: info.vendor ?? "", architecture: info.architecture ?? "", description: info.description ?? "", isFallbackAdapter: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter) },
    features: [...adapter.features].sort(),
    reason: null,
  };
}

/** The device the page starts on: WebGPU when there is an adapter, WebAssembly otherwise. */
export const preferredDevice = (webgpu) => (webgpu?.adapter ? "webgpu" : "wasm");

/** Whether a catalogue variant runs on `device` here: {ok: true} or {ok: false, reason}, from
 * what models.json says it needs (its `devices`) and what the WebGPU probe found. */
export function availability(variant, device, webgpu) {
  const dtype = variant.dtype;
  if (!BROWSER_DTYPES.has(dtype)) return { ok: false, native: true, reason: `transformers.js cannot run dtype ${dtype}; ONNX Runtime outside the browser can` };
  const needs = (variant.devices ?? UNRECORDED_DEVICES)[device];
  if (!needs) {
    return { ok: false, reason: variant.devices ? `not published for ${DEVICE_LABELS[device] ?? device}` : `published without device support in models.json: ${DEVICE_LABELS.wasm} only` };
  }
  if (device === "webgpu") {
    if (!webgpu?.adapter) return { ok: false, reason: webgpu?.reason ?? "no WebGPU adapter" };
    const missing = (needs.features ?? []).filter((feature) => !webgpu.features.includes(feature));
    if (missing.length) return { ok: false, reason: `needs the WebGPU feature ${missing.join(", ")}, which this adapter lacks` };
  }
  return { ok: true, reason: null };
}

// --- one variant per worker ----------------------------------------------------------------

/** A module worker that loads one variant and answers with it; terminate it to unload. */
export class VariantWorker {
  constructor(script = import.meta.url) {
    this.worker = new Worker(script, { type: "module" });
    this.waiting = null;
    this.worker.onmessage = ({ data }) => this.receive(data);
    this.worker.onerror = (event) => {
      event.preventDefault?.();
      this.settle(new Error(event.message || "the model's worker failed to start"));
    };
  }

  /** {load_s, version, device} once loaded; `request`: {transformers, ort, base, dtype, device}. */
  load(request, { onProgress = null } = {}) {
    return this.call({ type: "load", ...request }, { onProgress });
  }

  /** reply()'s result, computed in the worker; `onText` streams the text. */
  reply(messages, { maxNewTokens = 64, onText = null } = {}) {
    return this.call({ type: "reply", messages, maxNewTokens }, { onText });
  }

  terminate() {
    this.worker.terminate();
    this.settle(new Error("the model was unloaded"));
  }

  call(message, handlers) {
    if (this.waiting) return Promise.reject(new Error("the model's worker is busy"));
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject, ...handlers };
      this.worker.postMessage(message);
    });
  }

  receive(data) {
    if (data.type === "progress") this.waiting?.onProgress?.(data.event);
    else if (data.type === "text") this.waiting?.onText?.(data.text);
    else this.settle(data.type === "error" ? new Error(data.message) : null, data.result);
  }

  settle(error, result) {
    const waiting = this.waiting;
    this.waiting = null;
    if (waiting) error ? waiting.reject(error) : waiting.resolve(result);
  }
}

/** The worker's side of VariantWorker: one model, loaded once, answering one request at a time. */
function serveWorker(scope) {
  let tjs = null;
  let loaded = null;
  const post = (message) => scope.postMessage(message);
  const handlers = {
    async load({ transformers, ort, base, dtype, device }) {
      tjs = await import(transformers);
      const started = performance.now();
      const onProgress = (event) => post({ type: "progress", event: JSON.parse(JSON.stringify(event)) });
      loaded = await loadModel(tjs, base, dtype, { ort, device, onProgress });
      return { load_s: (performance.now() - started) / 1000, version: tjs.env.version, device };
    },
    async reply({ messages, maxNewTokens }) {
      if (!loaded) throw new Error("no model is loaded in this worker");
      return reply(tjs, loaded, messages, { maxNewTokens, onText: (text) => post({ type: "text", text }) });
    },
  };
  scope.onmessage = async ({ data }) => {
    try {
      post({ type: "result", result: await handlers[data.type](data) });
    } catch (error) {
      post({ type: "error", message: String(error?.message ?? error) });
    }
  };
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

const ms = (value) => (typeof value === "number" ? `${value.toFixed(0)} ms` : "–");
const seconds = (value) => (typeof value === "number" ? `${value.toFixed(2)} s` : "–");
const rate = (value) => (typeof value === "number" ? value.toFixed(1) : "–");

function variantTable(key, entry, device, webgpu, onLoad) {
  const head = element("tr", {}, ["variant", "size", "chunks", "top-1 agreement", ""].map((title) => element("th", {}, title)));
  const rows = Object.entries(entry.variants ?? {}).map(([level, variant]) => {
    const dtype = variant.dtype ?? level;
    const can = availability({ ...variant, dtype }, device, webgpu);
    const agreement = typeof variant.top1_agreement === "number" ? `${(variant.top1_agreement * 100).toFixed(1)}%` : "–";
    const action = can.ok
      ? element("button", { type: "button", "data-model": key, "data-variant": level, onclick: () => onLoad(key, entry, level, dtype) }, "Load")
      : can.native
        ? element("span", { class: "native", title: can.reason }, "native only")
        : element("span", { class: "unavailable", "data-reason": can.reason }, `unavailable on ${DEVICE_LABELS[device]}: ${can.reason}`);
    return element("tr", { class: level === entry.default_variant ? "default" : null, "data-variant": level },
      element("td", {}, level, level === entry.default_variant ? element("small", {}, " default") : null),
      element("td", {}, MB(variant.size_mb)), element("td", {}, variant.chunks ?? "–"), element("td", {}, agreement), element("td", {}, action));
  });
  return element("table", { class: "variants" }, element("thead", {}, head), element("tbody", {}, rows));
}

function card(key, entry, device, webgpu, onLoad) {
  const metrics = metricRows(entry);
  return element("article", { class: "model", "data-model": key },
    element("header", {}, element("h2", {}, entry.name ?? key), element("code", {}, entry.id ?? key), element("span", { class: "size" }, MB(entry.size_mb))),
    entry.description ? element("p", {}, entry.description) : null,
    element("div", { class: "columns" },
      element("section", { class: "wide" }, element("h3", {}, "Variants"), variantTable(key, entry, device, webgpu, onLoad)),
      element("section", {}, element("h3", {}, "Provenance"), table(provenance(entry), "facts")),
      element("section", {}, element("h3", {}, "Evaluation"), metrics.length ? table(metrics, "metrics") : element("p", { class: "muted" }, "No evaluation results published."))));
}

function adapterText(webgpu) {
  if (!webgpu.adapter) return `No WebGPU: ${webgpu.reason}.`;
  const { vendor, architecture, description, isFallbackAdapter } = webgpu.adapter;
  const name = [vendor, architecture, description].filter(Boolean).join(" · ") || "unnamed adapter";
  const f16 = webgpu.features.includes("shader-f16") ? "with shader-f16" : "without shader-f16";
  return `WebGPU adapter: ${name}${isFallbackAdapter ? " (fallback adapter, software)" : ""}, ${f16}.`;
}

/** The device choice: one radio button per device, WebGPU disabled when there is no adapter. */
function devicePicker(root, webgpu, chosen, onChange) {
  const buttons = Object.entries(DEVICE_LABELS).map(([device, label]) =>
    element("label", {}, element("input", {
      type: "radio", name: "device", value: device, checked: device === chosen, disabled: device === "webgpu" && !webgpu.adapter,
      onchange: () => onChange(device),
    }), ` ${label}`));
  root.replaceChildren(element("h3", {}, "Device"), element("div", { class: "devices" }, buttons),
    element("p", { id: "adapter", class: "muted", "data-fallback": webgpu.adapter ? String(webgpu.adapter.isFallbackAdapter) : null }, adapterText(webgpu)));
}

/** The table of tries: one row per load, with the figures of its last reply. */
class Tries {
  constructor(root) {
    this.root = root;
    this.body = root.querySelector("tbody");
  }

  start(title, device) {
    const cells = { load: element("td", {}, "loading…"), first: element("td", {}, "–"), rate: element("td", {}, "–") };
    const row = element("tr", { "data-state": "loading", "data-device": device }, element("td", {}, title), element("td", {}, DEVICE_LABELS[device]), cells.load, cells.first, cells.rate);
    this.body.prepend(row);
    this.root.hidden = false;
    return {
      loaded: (load_s) => {
        Object.assign(row.dataset, { state: "loaded", loadS: String(load_s) });
        cells.load.textContent = seconds(load_s);
      },
      failed: (message) => {
        Object.assign(row.dataset, { state: "failed", error: message });
        cells.load.textContent = "failed";
        cells.load.title = message;
      },
      replied: ({ first_token_ms, tokens_per_s, tokens }) => {
        Object.assign(row.dataset, { firstTokenMs: String(first_token_ms), tokensPerS: String(tokens_per_s), tokens: String(tokens) });
        cells.first.textContent = ms(first_token_ms);
        cells.rate.textContent = rate(tokens_per_s);
      },
    };
  }
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
  const webgpu = await probeWebGPU(window);
  let device = preferredDevice(webgpu);
  const list = document.querySelector("#models");
  const loader = new Loader(document.querySelector("#loader"));
  const tries = new Tries(document.querySelector("#tries"));
  const chat = document.querySelector("#chat");
  const log = document.querySelector("#log");
  const form = document.querySelector("#ask");
  let worker = null;
  let current = null;     // {title, try} of the variant the worker holds
  let messages = [];

  const onLoad = async (key, entry, level, dtype) => {
    document.querySelectorAll("button[data-variant]").forEach((button) => (button.disabled = true));
    worker?.terminate();
    worker = new VariantWorker();
    current = null;
    delete document.body.dataset.loaded;
    chat.hidden = true;
    messages = [];
    log.replaceChildren();
    const title = `${entry.name ?? key} · ${level}`;
    const on = DEVICE_LABELS[device];
    const row = tries.start(title, device);
    loader.reset(`Loading ${title} on ${on}`);
    say(`Loading ${title} on ${on}…`, "busy");
    try {
      const base = new URL(entry.urls?.base ?? `${entry.id}/`, catalogueURL).href;
      const loaded = await worker.load({ transformers: config.transformers, ort: config.ort, base, dtype, device }, { onProgress: (event) => loader.update(event) });
      row.loaded(loaded.load_s);
      current = { title, row };
      say(`${title} loaded on ${on} in ${loaded.load_s.toFixed(1)} s, transformers.js ${loaded.version}`, "ready");
      document.querySelector("#chat-title").textContent = `${title} · ${on}`;
      chat.hidden = false;
      document.body.dataset.loaded = `${key}:${level}:${device}`;
      form.querySelector("textarea").focus();
    } catch (error) {
      // The worker goes with its failure; the next Load starts a fresh one.
      worker.terminate();
      worker = null;
      row.failed(error.message ?? String(error));
      say(`Could not load ${title} on ${on}: ${error.message ?? error}`, "error");
    } finally {
      document.querySelectorAll("button[data-variant]").forEach((button) => (button.disabled = false));
    }
  };

  const render = () => list.replaceChildren(...Object.entries(catalogue).map(([key, entry]) => card(key, entry, device, webgpu, onLoad)));
  devicePicker(document.querySelector("#device"), webgpu, device, (chosen) => {
    device = chosen;
    render();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = form.querySelector("textarea");
    const text = box.value.trim();
    if (!text || !current) return;
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
      const result = await worker.reply(messages, { maxNewTokens, onText: (piece) => { streamed += piece; answer.textContent = streamed; } });
      answer.textContent = result.text || "(no text: the model stopped at once)";
      answer.dataset.tokens = String(result.newIds.length);
      current.row.replied(result.timing);
      messages.push({ role: "assistant", content: result.text });
    } catch (error) {
      answer.textContent = `Error: ${error.message ?? error}`;
      answer.classList.add("error");
    } finally {
      answer.classList.remove("pending");
      send.disabled = false;
    }
  });

  render();
  const count = Object.keys(catalogue).length;
  say(count ? `${count} model${count === 1 ? "" : "s"} in ${catalogueURL.pathname}` : "The catalogue is empty: publish a model first.", "ready");
  document.body.dataset.ready = "true";
}

if (typeof document !== "undefined" && document.querySelector("#foundry-catalogue")) {
  main();
} else if (typeof WorkerGlobalScope !== "undefined" && globalThis instanceof WorkerGlobalScope) {
  serveWorker(globalThis);
}
