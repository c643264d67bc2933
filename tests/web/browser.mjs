// Headless Chromium (Debian's, driven by playwright-core) against a loopback server; prints one
// JSON document. Every request off the loopback is refused and reported, so nothing comes
// from a CDN or the Hub. With "webgpu": true Chromium offers WebGPU (--enable-unsafe-webgpu:
// with no GPU, SwiftShader's software adapter), on a secure origin such as http://127.0.0.1.
//
//   node tests/web/browser.mjs '{"mode": "generate", "chromium": "/usr/bin/chromium", "webgpu": true,
//        "url": "http://127.0.0.1:PORT/_harness/harness.html", "request": {...generate_each.mjs...}}'
//   node tests/web/browser.mjs '{"mode": "page", "chromium": "/usr/bin/chromium", "webgpu": true,
//        "url": "http://127.0.0.1:PORT/models/?transformers=...", "screenshot": "/tmp/page.png",
//        "steps": [{"device": "webgpu", "model": "tiny-demo", "variant": "q4", "prompt": "Hello", "max_new_tokens": 16}]}'
//
// A page step picks the device (the page's own choice when absent), reads every card's variants
// (loadable, or the reason why not), and with a model and variant presses Load, waits for the
// try to load or fail, and with a prompt sends it and waits for the reply; a variant the page
// does not offer on that device gives {unavailable: reason} instead.
import { chromium } from "playwright-core";

const TIMEOUT_MS = 120_000;     // each wait, unless the job gives timeout_ms
// The flags this machine's Chromium needs (no sandbox as root, no GPU, no background traffic).
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const job = JSON.parse(process.argv[2]);
const browser = await chromium.launch({ executablePath: job.chromium, headless: true, args: [...FLAGS, ...(job.webgpu ? ["--enable-unsafe-webgpu"] : [])] });
const offsite = [];
const errors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (["127.0.0.1", "localhost", "[::1]"].includes(url.hostname) || url.protocol === "blob:" || url.protocol === "data:") return route.continue();
    offsite.push(url.href);
    return route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(job.timeout_ms ?? TIMEOUT_MS);
  page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(job.url);
  await page.waitForSelector("body[data-ready]", { state: "attached" });
  const result = job.mode === "generate" ? await page.evaluate((request) => window.generate(request), job.request) : await usePage(page, job);
  process.stdout.write(JSON.stringify({ ...result, offsite, errors }) + "\n");
} finally {
  await browser.close();
}

/** The catalogue page as a person uses it: pick a device, read the list, load variants, talk. */
async function usePage(page, job) {
  const steps = [];
  try {
    for (const step of job.steps) {
      if (step.device) await page.check(`input[name="device"][value="${step.device}"]`);
      const done = { device: await page.$eval('input[name="device"]:checked', (input) => input.value), models: await cards(page) };
      try {
        if (step.variant) Object.assign(done, await load(page, step));
      } catch (error) {
        // A step that timed out: said, and the next one goes on (its Load ends the busy worker).
        Object.assign(done, { error: String(error?.message ?? error).split("\n")[0], try: await page.$eval("#tries tbody tr", (row) => ({ ...row.dataset })).catch(() => null) });
      }
      steps.push(done);
    }
  } finally {
    if (job.screenshot) await page.screenshot({ path: job.screenshot, fullPage: true });     // also when a step failed
  }
  const devices = await page.$$eval('input[name="device"]', (inputs) => inputs.map((input) => ({ device: input.value, disabled: input.disabled })));
  return { adapter: await page.textContent("#adapter"), devices, steps };
}

function cards(page) {
  return page.$$eval("article.model", (articles) =>
    articles.map((card) => ({
      key: card.dataset.model,
      text: card.innerText,
      variants: [...card.querySelectorAll("table.variants tbody tr")].map((row) => ({
        level: row.dataset.variant,
        loadable: !!row.querySelector("button[data-variant]"),
        reason: row.querySelector(".unavailable")?.dataset.reason ?? null,
      })),
    })));
}

async function load(page, step) {
  const button = `button[data-model="${step.model}"][data-variant="${step.variant}"]`;
  if (!(await page.$(button))) {
    const row = `article.model[data-model="${step.model}"] tr[data-variant="${step.variant}"]`;
    return { unavailable: await page.$eval(row, (node) => node.querySelector(".unavailable")?.dataset.reason ?? node.querySelector(".native")?.title ?? "no Load button") };
  }
  const before = await page.$$eval("#tries tbody tr", (rows) => rows.length);
  await page.click(button);
  await page.waitForFunction((count) => {
    const rows = document.querySelectorAll("#tries tbody tr");
    return rows.length > count && rows[0].dataset.state !== "loading";
  }, before);
  const status = await page.textContent("#status");
  const files = await page.$$eval("#loader .file", (rows) => rows.map((row) => ({ file: row.dataset.file, done: row.classList.contains("done"), value: row.querySelector("progress").value })));
  let reply = null;
  if (step.prompt && (await page.evaluate(() => !!document.body.dataset.loaded))) {
    await page.fill("#ask textarea", step.prompt);
    await page.fill("#max-tokens", String(step.max_new_tokens ?? 16));
    await page.click("#ask button[type=submit]");
    const answer = await page.waitForSelector(".turn.assistant:not(.pending)");
    reply = { text: await answer.textContent(), tokens: Number(await answer.getAttribute("data-tokens")), error: await answer.evaluate((node) => node.classList.contains("error")) };
  }
  const tried = await page.$eval("#tries tbody tr", (row) => ({ ...row.dataset }));
  return { status, files, reply, try: tried, loaded: await page.evaluate(() => document.body.dataset.loaded ?? null) };
}
