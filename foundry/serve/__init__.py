"""`foundry serve`: a published folder on localhost, for browsers and for scripts.

- target.py: what TARGET holds (a catalogue folder or one model folder), the URL mounts, the
  models the API serves and the check of each served variant against its manifest;
- files.py: static files as browsers need them (content types, ranges, validators);
- openai_api.py: the OpenAI request bodies checked, the response and error bodies built;
- engine.py: ONNX Runtime generation, a model's requests in turn, and the text stream
  (incremental detokenizing, stop strings) each request writes out;
- server.py: the HTTP server (stdlib ThreadingHTTPServer) tying them together;
- latency.py: the client of `foundry bench-latency`.

Everything here but engine.py's generator is stdlib only; onnxruntime and the tokenizer are
imported when a server loads its models.
"""
