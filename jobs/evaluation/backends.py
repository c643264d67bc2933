"""What a suite is scored on: a PyTorch model folder, or an ONNX variant as browsers run it.

Both wrap the generator `foundry query` uses (jobs/tools/query.py), so a model is loaded once for
a recipe's multiple-choice and generation suites alike, and add `loglikelihoods`: for a
batch of (context, continuations) groups, the summed log-probability of each continuation
after its context. The context runs once and its key/value cache is copied to each of its
continuations (a multiple-choice item's query is computed once, not once per choice),
with attention masks and position ids that make every score what the context followed by
that continuation alone, unpadded, would give. The ONNX graph gets the same feeds a browser
sends (past key values, attention mask, position ids from the mask).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jobs.tools.query import Generator, OnnxGenerator, TorchGenerator, open_generator

# lm-evaluation-harness's fallbacks when neither the config nor the tokenizer bounds the context.
_DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_UNBOUNDED = 10**20
_LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


class Scorer(Protocol):
    tokenizer: Any
    max_length: int

    def loglikelihoods(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        """For each (context, continuations) group, sum log P(continuation | context) for
        every continuation: the context runs once, its key/value cache is shared by all."""
        ...


@dataclass(frozen=True)
class Backend:
    name: str  # "torch" or "onnx"
    variant: str | None
    generator: Generator
    scorer: Scorer


def open_backend(folder: Path, *, variant: str | None = None, trust_remote_code: bool = False) -> Backend:
    """PyTorch for a folder with weights; ONNX Runtime for a variant of a published or
    quantize-stage folder (the one named, else its default), as `foundry query` chooses."""
    generator = open_generator(folder, variant=variant, trust_remote_code=trust_remote_code)
    config = _config(folder)
    if isinstance(generator, OnnxGenerator):
        return Backend("onnx", generator.variant, generator, OnnxScorer(generator, max_length(config, generator.tokenizer)))
    assert isinstance(generator, TorchGenerator)
    return Backend("torch", None, generator, TorchScorer(generator, max_length(config, generator.tokenizer)))


def max_length(config: dict[str, Any], tokenizer: Any) -> int:
    """The longest window the model takes, found as lm-evaluation-harness finds it."""
    for source in (config.get("text_config") or {}, config):
        for key in _LENGTH_KEYS:
            if isinstance(source.get(key), int):
                return int(source[key])
    bound = getattr(tokenizer, "model_max_length", None)
    return int(bound) if isinstance(bound, int) and bound < _TOKENIZER_UNBOUNDED else _DEFAULT_MAX_LENGTH


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class SharedPrefix:
    """A batch of groups laid out for two passes. Pass 1 runs the contexts (right-padded);
    the logits at each context's last position score every continuation's first token.
    Pass 2 runs the continuations but their last token, each on a copy of its context's
    cache, and scores their other tokens. One-token continuations need no pass 2."""

    context_ids: Any  # [groups, width] int64
    context_mask: Any  # [groups, width]
    owner: Any  # [continuations]: the group of each continuation
    first: Any  # [continuations]: each continuation's first token
    longer: Any  # indices of the continuations with more than one token
    feed_ids: Any  # [len(longer), n] their tokens but the last, right-padded
    feed_mask: Any
    targets: Any  # [len(longer), n] their tokens but the first, right-padded (feed_mask says which count)
    counts: list[int]  # continuations per group

    @classmethod
    def of(cls, groups: list[tuple[list[int], list[list[int]]]]) -> "SharedPrefix":
        import numpy as np

        continuations = [continuation for _, group in groups for continuation in group]
        longer = [at for at, continuation in enumerate(continuations) if len(continuation) > 1]
        context_ids, context_mask = _padded([context for context, _ in groups])
        feed_ids, feed_mask = _padded([continuations[at][:-1] for at in longer])
        targets, _ = _padded([continuations[at][1:] for at in longer])
        return cls(
            context_ids, context_mask, np.array([g for g, (_, group) in enumerate(groups) for _ in group], dtype=np.int64),
            np.array([continuation[0] for continuation in continuations], dtype=np.int64), np.array(longer, dtype=np.int64),
            feed_ids, feed_mask, targets, [len(group) for _, group in groups],
        )

    def regroup(self, scores: list[float]) -> list[list[float]]:
        it = iter(scores)
        return [[next(it) for _ in range(count)] for count in self.counts]


def _padded(rows: list[list[int]]) -> tuple[Any, Any]:
    """Rows right-padded into one int64 array, and the mask of their real tokens."""
    import numpy as np

    width = max((len(row) for row in rows), default=0)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for at, row in enumerate(rows):
        ids[at, : len(row)] = row
        mask[at, : len(row)] = 1
    return ids, mask


class TorchScorer:
    def __init__(self, generator: TorchGenerator, max_length: int) -> None:
        import inspect

        self.model = generator.model
        self.tokenizer = generator.tokenizer
        self.max_length = max_length
        # Logits at the contexts' last positions only, where the model can (big vocabularies).
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def loglikelihoods(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        import torch

        batch = SharedPrefix.of(groups)
        device = self.model.device
        ids, mask = torch.from_numpy(batch.context_ids).to(device), torch.from_numpy(batch.context_mask).to(device)
        last = mask.sum(-1) - 1
        owner = torch.from_numpy(batch.owner).to(device)
        with torch.inference_mode():
            kept = torch.unique(last)
            extra = {"logits_to_keep": kept} if self.keeps_logits else {}
            # No mask: causal attention keeps the right padding out of every real position,
            # and the model takes its fast causal path (as lm-evaluation-harness calls it).
            first = self.model(input_ids=ids, use_cache=bool(len(batch.longer)), **extra)
            column = torch.searchsorted(kept, last) if self.keeps_logits else last
            ends = first.logits[torch.arange(len(groups), device=device), column].float().log_softmax(-1)
            scores = ends[owner, torch.from_numpy(batch.first).to(device)]
            if len(batch.longer):
                longer = torch.from_numpy(batch.longer).to(device)
                cache = first.cache  # transformers 5.25 renamed past_key_values to cache
                cache.batch_select_indices(owner[longer])
                feed_mask = torch.from_numpy(batch.feed_mask).to(device)
                positions = (last[owner[longer]] + 1)[:, None] + torch.arange(feed_mask.shape[1], device=device)[None, :]
                logits = self.model(
                    input_ids=torch.from_numpy(batch.feed_ids).to(device), attention_mask=self._cache_mask(mask[owner[longer]], feed_mask.shape[1]),
                    position_ids=positions, cache=cache, use_cache=False,
                ).logits
                picked = logits.float().log_softmax(-1).gather(-1, torch.from_numpy(batch.targets).to(device)[..., None])[..., 0]
                scores = scores.index_add(0, longer, (picked * feed_mask).sum(-1))
        return batch.regroup(scores.tolist())

    def _cache_mask(self, context_mask: Any, length: int) -> Any:
        """The 4D additive mask of pass 2: each new token sees its context's real tokens and
        the tokens before it. Given whole, transformers uses it as is (no per-call mask
        building, which costs more than a small model's forward)."""
        import torch

        rows, width = context_mask.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=context_mask.device).tril()
        seen = torch.cat([context_mask.bool()[:, None, :].expand(rows, length, width), causal.expand(rows, length, length)], dim=-1)
        dtype = self.model.dtype
        return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(~seen, torch.finfo(dtype).min)[:, None]


class OnnxScorer:
    def __init__(self, generator: OnnxGenerator, max_length: int) -> None:
        self.session = generator.session
        self.tokenizer = generator.tokenizer
        self.max_length = max_length
        self.outputs = [spec.name for spec in self.session.get_outputs()]

    def loglikelihoods(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        import numpy as np

        from jobs.onnx.decoder import decoder_feeds, empty_past, next_past

        batch = SharedPrefix.of(groups)
        run = dict(zip(self.outputs, self.session.run(self.outputs, decoder_feeds(self.session, batch.context_ids, batch.context_mask, empty_past(self.session, len(groups)))), strict=True))
        last = batch.context_mask.sum(-1) - 1
        ends = _log_softmax(run["logits"][np.arange(len(groups)), last])
        scores = ends[batch.owner, batch.first].astype(np.float64)
        # Pass 2, one continuation at a time on its own context's cache, cut to the context's
        # real length: GroupQueryAttention (the builder's graphs) takes a batch of several
        # tokens over a cache only one row at a time, and no padding inside the cache at all.
        past = next_past(run)
        for at, (index, row) in enumerate(zip(batch.longer, batch.owner[batch.longer], strict=True)):
            context, feed = int(batch.context_mask[row].sum()), int(batch.feed_mask[at].sum())
            row_past = {name: value[row:row + 1, :, :context] for name, value in past.items()}
            ids = batch.feed_ids[at:at + 1, :feed]
            logits = self.session.run(["logits"], decoder_feeds(self.session, ids, np.ones((1, context + feed), dtype=np.int64), row_past))[0]
            picked = np.take_along_axis(_log_softmax(logits), batch.targets[at:at + 1, :feed, None], axis=-1)[..., 0]
            scores[index] += float(picked.sum())
        return batch.regroup(scores.tolist())


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    values = logits.astype(np.float32)
    shifted = values - values.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
