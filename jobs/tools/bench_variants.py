"""`foundry bench-variants`: what each quantized variant of a model costs and what it loses.

For every variant in a published folder or a quantize key (fp32, fp16, q8, q4, q2, those
present): its size on disk (graph plus every external-data chunk, what a browser downloads),
ONNX Runtime's session creation time, greedy decoding speed with the same generator as
`foundry query` (jobs/tools/query.py), and its quality against the reference (fp32, else the most
precise variant present):

- with suites: the evaluation suites' metrics (jobs/evaluation.py), as deltas from the reference;
- without: over the quantize stage's fixed prompts, the share of positions whose top-1 next
  token is the reference's (as the quantize stage measures it) and the mean KL divergence
  KL(reference || variant) of the next-token distributions, which still moves when a
  quantization shifts probabilities without flipping the arg-max.

The speed is measured on exactly `tokens` new tokens per prompt, stop tokens ignored, after
one warm-up run, so a variant whose answers end early is not timed on fewer tokens.
"""

import time
from pathlib import Path
from typing import Any

from foundry.errors import UserError
from foundry.plots import BarPanel
from foundry.reports import markdown_table, number
from foundry.variants import ONNX_FOLDER, VARIANT_FILES

SPEED_PROMPTS = 3      # of the quantize stage's default prompts, generated from raw (no chat template)
MIB = 1024 * 1024


def variants_present(folder: Path) -> list[str]:
    return [variant for variant, name in VARIANT_FILES.items() if (folder / ONNX_FOLDER / name).is_file()]


def size_on_disk(folder: Path, variant: str) -> int:
    """The graph file and its external data: `<file>_data` (quantize) or `<file>_data`,
    `<file>_data_1`, ... (publish's chunks)."""
    from jobs.onnx.external_data import chunk_name

    name = VARIANT_FILES[variant]
    files = [folder / ONNX_FOLDER / name]
    while (chunk := folder / ONNX_FOLDER / chunk_name(name, len(files) - 1)).is_file():
        files.append(chunk)
    return sum(path.stat().st_size for path in files)


def bench(folder: Path, *, suites: list[str] | None = None, limit: int | None = None, tokens: int = 32) -> dict[str, Any]:
    import onnxruntime

    from jobs.onnx.reference import tokenize
    from jobs.stages.quantize import DEFAULT_PROMPTS

    present = variants_present(folder)
    if not present:
        raise UserError(f"{folder}: no ONNX variants (none of {', '.join(f'{ONNX_FOLDER}/{name}' for name in VARIANT_FILES.values())}); give a published model folder or a quantize key")
    if tokens < 1:
        raise UserError(f"--tokens {tokens}: must be at least 1")
    if limit is not None and not suites:
        raise UserError(f"--limit {limit}: limits the items of a --suite, and none is given; add --suite, or drop --limit")
    reference = present[0]      # VARIANT_FILES runs from most to least precise
    prompts = list(DEFAULT_PROMPTS)
    token_ids = None if suites else tokenize(folder, prompts, trust_remote_code=False)
    reference_quality: Any = None
    rows = []
    for variant in present:
        row, quality = _measure(folder, variant, token_ids=token_ids, suites=suites, limit=limit, tokens=tokens)
        if variant == reference:
            reference_quality = quality
        row.update(_quality_delta(reference_quality, quality, suites=bool(suites)))
        rows.append(row)
    report: dict[str, Any] = {
        "target": str(folder),
        "reference": reference,
        "onnxruntime": onnxruntime.__version__,
        "tokens": tokens,
        "speed_prompts": SPEED_PROMPTS,
        "quality": "suites" if suites else "next-token agreement",
        "variants": rows,
    }
    if suites:
        report.update(suites=suites, limit=limit)
    else:
        report.update(prompts=len(prompts), positions=sum(len(ids) for ids in token_ids or []))
    return report


def _measure(folder: Path, variant: str, *, token_ids: list[list[int]] | None, suites: list[str] | None, limit: int | None, tokens: int) -> tuple[dict[str, Any], Any]:
    from jobs.stages.quantize import DEFAULT_PROMPTS, onnx_logits
    from jobs.tools.query import OnnxGenerator, prompt_ids

    generator = OnnxGenerator(folder, variant)
    prompts = [prompt_ids(generator.tokenizer, prompt, system=None, raw=True) for prompt in DEFAULT_PROMPTS[:SPEED_PROMPTS]]
    list(generator.token_ids(prompts[0], 2))    # warm-up: ONNX Runtime's first runs allocate
    started = time.perf_counter()
    generated = sum(len(list(generator.token_ids(ids, tokens, stops=set()))) for ids in prompts)     # exactly `tokens` each
    seconds = time.perf_counter() - started
    row = {
        "variant": variant,
        "file": f"{ONNX_FOLDER}/{VARIANT_FILES[variant]}",
        "size_bytes": size_on_disk(folder, variant),
        "load_seconds": round(generator.load_seconds, 4),
        "tokens_per_second": round(generated / seconds, 2),
    }
    del generator       # the measurement below opens its own session: never two copies of a large model at once
    if not suites:
        assert token_ids is not None
        return row, list(onnx_logits(folder / ONNX_FOLDER / VARIANT_FILES[variant], token_ids))
    from foundry.metrics import flat_metrics
    from jobs.evaluation import evaluate_folder

    return row, flat_metrics(evaluate_folder(folder, suites, variant=variant, limit=limit), f"{folder} ({variant})")


def _quality_delta(reference: Any, quality: Any, *, suites: bool) -> dict[str, Any]:
    if suites:
        return {"metrics": quality, "deltas": {name: round(value - reference[name], 6) for name, value in quality.items() if name in reference}}
    from jobs.stages.quantize import agreement

    return {**agreement(zip(reference, quality, strict=True)), "mean_kl": float(f"{mean_kl(reference, quality):.6g}")}


def mean_kl(reference: list[Any], logits: list[Any]) -> float:
    """Mean over every position of KL(P_reference || P_variant), in nats, from raw logits."""
    import numpy as np

    total, positions = 0.0, 0
    for expected, got in zip(reference, logits, strict=True):
        p_log = _log_softmax(np.asarray(expected, dtype=np.float64))
        q_log = _log_softmax(np.asarray(got, dtype=np.float64))
        total += float((np.exp(p_log) * (p_log - q_log)).sum())
        positions += p_log.shape[0]
    return max(0.0, total / positions)


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# --- the report ----------------------------------------------------------------------------

def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows shared by the terminal and the Markdown report."""
    rows = report["variants"]
    reference = report["reference"]
    if report["quality"] == "suites":
        names = sorted({name for row in rows for name in row["metrics"]})
        quality_headers = [f"{name} (Δ)" for name in names]
        quality = [[_value_delta(row["metrics"].get(name), row["deltas"].get(name)) for name in names] for row in rows]
    else:
        quality_headers = [f"top-1 agreement vs {reference}", f"mean KL vs {reference} (nats)"]
        quality = [[number(row["top1_agreement"]), number(row["mean_kl"])] for row in rows]
    headers = ["variant", "size (MiB)", "load (s)", "tokens/s", *quality_headers]
    body = [[row["variant"], f"{row['size_bytes'] / MIB:.3f}", number(row["load_seconds"]), number(row["tokens_per_second"]), *cells] for row, cells in zip(rows, quality, strict=True)]
    return headers, body


def _value_delta(value: float | None, delta: float | None) -> str:
    return number(value) + ("" if delta is None else f" ({number(delta, signed=True)})")


def markdown(report: dict[str, Any]) -> str:
    headers, rows = table(report)
    if report["quality"] == "suites":
        limit = f" (first {report['limit']} items each)" if report.get("limit") else ""
        how = f"Quality: suites {', '.join(report['suites'])}{limit}; Δ against {report['reference']}."
    else:
        how = (f"Quality: over {report['prompts']} fixed prompts ({report['positions']} positions), the share of next tokens equal to "
               f"{report['reference']}'s and the mean KL divergence from {report['reference']}'s next-token distribution.")
    lines = [
        f"# Variants of {report['target']}", "",
        "Size: the graph and all its external data, as downloaded. Load: ONNX Runtime session creation. "
        f"Speed: greedy decoding of {report['tokens']} tokens after each of {report['speed_prompts']} prompts (ONNX Runtime {report['onnxruntime']}, CPU).",
        how, "", markdown_table(headers, rows, right=[False] + [True] * (len(headers) - 1)),
    ]
    return "\n".join(lines)


def chart_panels(report: dict[str, Any]) -> list[BarPanel]:
    rows = report["variants"]
    labels = [row["variant"] for row in rows]
    panels = [
        BarPanel("size (MiB)", labels, [row["size_bytes"] / MIB for row in rows], note="lower is better"),
        BarPanel("session load (s)", labels, [row["load_seconds"] for row in rows], note="lower is better"),
        BarPanel("tokens per second", labels, [row["tokens_per_second"] for row in rows], note="higher is better"),
    ]
    reference = report["reference"]
    if report["quality"] == "suites":
        names = sorted({name for row in rows for name in row["deltas"]})
        panels += [BarPanel(f"{name}: Δ vs {reference}", labels, [row["deltas"].get(name) for row in rows]) for name in names]
    else:
        panels += [
            BarPanel(f"top-1 agreement vs {reference}", labels, [row["top1_agreement"] for row in rows], note="higher is better"),
            BarPanel(f"mean KL vs {reference} (nats)", labels, [row["mean_kl"] for row in rows], note="lower is better"),
        ]
    return panels
