// transformers.js in Node (its bundled onnxruntime-node) against a published model on a
// loopback server: prints {"version", "results"} as one JSON document (see generate_each.mjs).
//
//   node tests/web/node_generate.mjs '{"base": "http://127.0.0.1:PORT/models/tiny-demo-q4/",
//        "variants": ["fp32", "q4"], "messages": [{"role": "user", "content": "hi"}],
//        "max_new_tokens": 16, "cache_dir": "/tmp/new-empty-folder"}'
import * as tjs from "@huggingface/transformers";

import * as catalogue from "../../foundry/web/foundry-catalogue.js";
import { generateEach, inProcess } from "./generate_each.mjs";

const request = JSON.parse(process.argv[2]);
// onnxruntime-node reads external data from files: transformers.js downloads into this cache.
tjs.env.cacheDir = request.cache_dir;
const results = await generateEach(inProcess(tjs, catalogue, request), request);
process.stdout.write(JSON.stringify({ version: tjs.env.version, results }) + "\n");
