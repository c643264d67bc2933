"""Which browser devices run each variant: the `devices` a catalogue entry's variant carries.

A web client reads it to choose without probing: transformers.js's `device` names, in the
order a browser should prefer them, each with the WebGPU adapter features it needs. Every
variant runs on WebAssembly; on WebGPU, float16 arithmetic needs the adapter's `shader-f16`
(transformers.js 4.3.2 refuses fp16 on an adapter without it, and a q4f16 session is created
and then fails inside ONNX Runtime: "Program Gather requires f16"). Keyed by variant name
(foundry/variants.py), so a level added there is published with no extra needs until it is
listed here, unless its graph keeps its key/value cache in float16, which needs `shader-f16`
as well. Light: stdlib only.
"""

from typing import Any

# transformers.js `device` values, most preferred first.
DEVICES = ("webgpu", "wasm")
# WebGPU adapter features (GPUAdapter.features) a variant needs beyond plain WebGPU.
WEBGPU_FEATURES: dict[str, tuple[str, ...]] = {"fp16": ("shader-f16",), "q4f16": ("shader-f16",)}


def requirements(level: str, float16_cache: bool = False) -> dict[str, dict[str, Any]]:
    """`devices` of one variant: device -> {"features": [...]}, in DEVICES order."""
    webgpu = WEBGPU_FEATURES.get(level, ("shader-f16",) if float16_cache else ())
    return {device: {"features": list(webgpu) if device == "webgpu" else []} for device in DEVICES}
