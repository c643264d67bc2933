// One greedy reply per variant of a published model, through the catalogue page's own loading
// code (foundry/web/foundry-catalogue.js); shared by the Node and the Chromium harness.
//
// request: {base, variants, messages, max_new_tokens, ort?, device?}; a variant is a dtype
// ("q4") or {name, dtype, base} (another folder, under its own name). Returns {"<name>":
// {prompt_ids, new_ids, text, files, timing}}, or {error, files} for a variant that failed;
// new_ids stops before the first stop token (as jobs/tools/query.py's OnnxGenerator does), files
// are the files transformers.js fetched for that variant. `open(run, onProgress)` loads one
// variant and gives {reply(messages, options), close()}: in this process (inProcess) or in a
// worker of its own (inWorker, the catalogue page's way).
export async function generateEach(open, request) {
  const results = {};
  for (const variant of request.variants) {
    const run = typeof variant === "string" ? { name: variant, dtype: variant, base: request.base } : variant;
    const files = [];
    const onProgress = (event) => {
      if (event.status === "done") files.push(event.file);
    };
    try {
      const started = performance.now();
      const session = await open(run, onProgress);
      const load_s = (performance.now() - started) / 1000;
      try {
        const { promptIds, newIds, text, timing } = await session.reply(request.messages, { maxNewTokens: request.max_new_tokens });
        results[run.name] = { prompt_ids: promptIds, new_ids: newIds, text, files, timing: { load_s, ...timing } };
      } finally {
        await session.close();
      }
    } catch (error) {
      results[run.name] = { error: String(error?.message ?? error), files };
    }
  }
  return results;
}

/** Every variant in this page or process, one after the other. */
export const inProcess = (tjs, catalogue, request) => async (run, onProgress) => {
  const loaded = await catalogue.loadModel(tjs, run.base, run.dtype, { ort: request.ort ?? null, device: request.device ?? null, onProgress });
  return { reply: (messages, options) => catalogue.reply(tjs, loaded, messages, options), close: () => loaded.model.dispose() };
};

/** Each variant in a fresh catalogue.VariantWorker (URLs absolute: the worker resolves none). */
export const inWorker = (catalogue, request) => async (run, onProgress) => {
  const worker = new catalogue.VariantWorker();
  const absolute = (url) => (url ? new URL(url, location.href).href : null);
  try {
    await worker.load({ transformers: absolute(request.transformers), ort: absolute(request.ort), base: run.base, dtype: run.dtype, device: request.device ?? null }, { onProgress });
  } catch (error) {
    worker.terminate();
    throw error;
  }
  return { reply: (messages, options) => worker.reply(messages, options), close: () => worker.terminate() };
};
