"""Quantized variants and the file names browser runtimes look for.

transformers.js picks `onnx/model<suffix>.onnx` from the `dtype` a web client asks for;
Foundry's levels map onto those names, so a published folder needs no renaming.
"""

VARIANT_FILES: dict[str, str] = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "q8": "model_quantized.onnx",
    "q4": "model_q4.onnx",
    "q2": "model_q2.onnx",
}

# The transformers.js `dtype` option that loads each level.
TRANSFORMERS_JS_DTYPE: dict[str, str] = {"fp32": "fp32", "fp16": "fp16", "q8": "q8", "q4": "q4", "q2": "q2"}

ONNX_FOLDER = "onnx"
