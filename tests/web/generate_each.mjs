// One greedy reply per variant of a published model, through the catalogue page's own loading
// code (foundry/web/foundry-catalogue.js); shared by the Node and the Chromium harness.
//
// request: {base, variants, messages, max_new_tokens, ort?}. Returns {"<variant>": {prompt_ids,
// new_ids, text, files, seconds: {load, generate}}}, or {error, files} for a variant that failed;
// new_ids stops before the first stop token (as jobs/query.py's OnnxGenerator does), files are
// the files transformers.js fetched for that variant.
export async function generateEach(tjs, catalogue, request) {
  const results = {};
  for (const variant of request.variants) {
    const files = [];
    const onProgress = (event) => {
      if (event.status === "done") files.push(event.file);
    };
    try {
      const started = performance.now();
      const loaded = await catalogue.loadModel(tjs, request.base, variant, { ort: request.ort ?? null, onProgress });
      const generating = performance.now();
      const { promptIds, newIds, text } = await catalogue.reply(tjs, loaded, request.messages, { maxNewTokens: request.max_new_tokens });
      const seconds = { load: (generating - started) / 1000, generate: (performance.now() - generating) / 1000 };
      results[variant] = { prompt_ids: promptIds, new_ids: newIds, text, files, seconds };
      await loaded.model.dispose();
    } catch (error) {
      results[variant] = { error: String(error?.message ?? error), files };
    }
  }
  return results;
}
