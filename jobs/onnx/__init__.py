"""The ONNX toolkit the quantize and publish stages use: export, the PyTorch reference the
variants are checked against, variants, chunked external data, and running a graph as
transformers.js feeds it."""
