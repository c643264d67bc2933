"""Run an exported decoder graph with ONNX Runtime, fed as transformers.js feeds it.

One place for what the quantize stage's agreement check, `foundry query` and the evaluate
stage all do with a variant: open a CPU session, start from an empty past, and build the
feeds a browser sends (`input_ids`, `attention_mask`, `position_ids` where the graph has
them, `past_key_values.N.key/value`), so what they measure is what a web client runs.
"""

from pathlib import Path
from typing import Any

_PAST_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def decoder_session(path: Path) -> Any:
    """A CPU session over the whole graph, for generation (checks run slice by slice: jobs/onnx/slices.py)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(lean=False), providers=["CPUExecutionProvider"])


def session_options(*, lean: bool, prepack_weights: bool | None = None) -> Any:
    """`lean` trades speed for memory: no arena holding on to freed activations and, unless
    `prepack_weights`, no prepacked copies of the weights (ONNX Runtime's default doubles
    an fp32 model's footprint). The quantize stage's checks run lean; generation does not."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if lean:
        options.enable_cpu_mem_arena = False
        if not prepack_weights:
            options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def empty_past(session: Any, batch: int = 1) -> dict[str, Any]:
    """Zero-length past key values for every `past_key_values.*` input of the session."""
    import numpy as np

    feeds = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            shape = [d if isinstance(d, int) else (batch if "batch" in str(d) else 0) for d in spec.shape]
            feeds[spec.name] = np.zeros(shape, dtype=_PAST_DTYPES[spec.type])
    return feeds


def decoder_feeds(session: Any, input_ids: Any, attention_mask: Any, past: dict[str, Any]) -> dict[str, Any]:
    """The feeds for one step: `attention_mask` covers the past and the new tokens, and
    position ids follow it as transformers.js computes them (cumulative sum of the mask,
    minus one, padding at 1), so left- or right-padded batches get the right positions."""
    import numpy as np

    feeds = {"input_ids": input_ids, "attention_mask": attention_mask, **past}
    if any(spec.name == "position_ids" for spec in session.get_inputs()):
        positions = np.cumsum(attention_mask, axis=-1) - 1
        positions[attention_mask == 0] = 1
        feeds["position_ids"] = positions[:, -input_ids.shape[1]:].astype(np.int64)
    return feeds


def next_past(outputs: dict[str, Any]) -> dict[str, Any]:
    """The `present.*` outputs of one step as the `past_key_values.*` feeds of the next."""
    return {"past_key_values." + name.removeprefix("present."): value for name, value in outputs.items() if name.startswith("present.")}
