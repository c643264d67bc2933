"""Quantized variants and the file names browser runtimes look for.

transformers.js picks `onnx/model<suffix>.onnx` from the `dtype` a web client asks for;
Foundry's levels map onto those names, so a published folder needs no renaming. `q4f16`
is 4-bit weights with float16 activations and cache: what transformers.js picks for WebGPU.
"""

VARIANT_FILES: dict[str, str] = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "q8": "model_quantized.onnx",
    "q4": "model_q4.onnx",
    "q4f16": "model_q4f16.onnx",
    "q2": "model_q2.onnx",
}

# The transformers.js `dtype` option that loads each level.
TRANSFORMERS_JS_DTYPE: dict[str, str] = {level: level for level in VARIANT_FILES}

ONNX_FOLDER = "onnx"
