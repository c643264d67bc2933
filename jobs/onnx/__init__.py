"""The ONNX toolkit the quantize and publish stages use: export, variants, chunked
external data, and running a graph as transformers.js feeds it."""
