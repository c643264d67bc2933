// Headless Chromium (Debian's, driven by playwright-core) against a loopback server; prints one
// JSON document. Every request off the loopback is refused and reported, so nothing comes
// from a CDN or the Hub.
//
//   node tests/web/browser.mjs '{"mode": "generate", "chromium": "/usr/bin/chromium",
//        "url": "http://127.0.0.1:PORT/_harness/harness.html", "request": {...generate_each.mjs...}}'
//   node tests/web/browser.mjs '{"mode": "page", "chromium": "/usr/bin/chromium",
//        "url": "http://127.0.0.1:PORT/models/?transformers=...", "model": "tiny-demo",
//        "variant": "q4", "prompt": "Hello", "screenshot": "/tmp/page.png"}'
import { chromium } from "playwright-core";

const TIMEOUT_MS = 60_000;
// The flags this machine's Chromium needs (no sandbox as root, no GPU, no background traffic).
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const job = JSON.parse(process.argv[2]);
const browser = await chromium.launch({ executablePath: job.chromium, headless: true, args: FLAGS });
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
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(job.url);
  await page.waitForSelector("body[data-ready]", { state: "attached" });
  const result = job.mode === "generate" ? await page.evaluate((request) => window.generate(request), job.request) : await usePage(page, job);
  process.stdout.write(JSON.stringify({ ...result, offsite, errors }) + "\n");
} finally {
  await browser.close();
}

/** The catalogue page as a person uses it: read the list, load a variant, say something. */
async function usePage(page, job) {
  const models = await page.$$eval("article.model", (cards) =>
    cards.map((card) => ({
      key: card.dataset.model,
      text: card.innerText,
      variants: [...card.querySelectorAll("table.variants tbody tr")].map((row) => ({
        level: row.cells[0].firstChild.textContent.trim(),
        loadable: !!row.querySelector("button[data-variant]"),
      })),
    })));
  try {
    await page.click(`button[data-model="${job.model}"][data-variant="${job.variant}"]`);
    await page.waitForFunction(() => document.body.dataset.loaded || document.querySelector("#status.error"));
    const status = await page.textContent("#status");
    const files = await page.$$eval("#loader .file", (rows) => rows.map((row) => ({ file: row.dataset.file, done: row.classList.contains("done"), value: row.querySelector("progress").value })));
    let reply = null;
    if (await page.evaluate(() => !!document.body.dataset.loaded)) {
      await page.fill("#ask textarea", job.prompt);
      await page.fill("#max-tokens", String(job.max_new_tokens ?? 16));
      await page.click("#ask button[type=submit]");
      const answer = await page.waitForSelector(".turn.assistant:not(.pending)");
      reply = { text: await answer.textContent(), tokens: Number(await answer.getAttribute("data-tokens")), error: await answer.evaluate((node) => node.classList.contains("error")) };
    }
    return { models, status, files, reply, loaded: await page.evaluate(() => document.body.dataset.loaded ?? null) };
  } finally {
    await page.screenshot({ path: job.screenshot, fullPage: true });     // also when a step failed: for a person to look at
  }
}
