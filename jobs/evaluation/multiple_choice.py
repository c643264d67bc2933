"""Multiple-choice suites scored by log-likelihood, exactly as lm-evaluation-harness scores them.

Each choice is the continuation `" " + choice` of the item's query. The pair is tokenized as
lm-eval's HF model does: trailing spaces of the query move to the continuation, the whole
text and the query are encoded with the tokenizer's own special tokens, and the
continuation's tokens are what the whole has beyond the query's; the score is the summed
log-probability of the continuation's tokens after the query's, the two left-truncated
together to the model's length plus one.

    acc        1 when the choice with the highest score is the gold one
    acc_norm   the same with each score divided by its choice's length in characters

An item's choices share its query: the backend runs the query once and each choice on its
cache (backends.py). Items are sorted longest first and scored `batch_size` choices at a
time (less padding, and the first batch shows at once whether memory suffices); results
return in the items' order.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jobs.evaluation.backends import Scorer
from jobs.evaluation.suites import ChoiceItem

TARGET_DELIMITER = " "


def score(scorer: Scorer, items: list[ChoiceItem], *, batch_size: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The suite's metrics (acc, acc_norm) and one result per item, in order."""
    import numpy as np

    lls = [[0.0] * len(item.choices) for item in items]
    groups = _groups(scorer.max_length, encode(scorer.tokenizer, items))
    groups.sort(key=lambda group: -(len(group.context) + max(map(len, group.continuations))))
    for batch in _batches(groups, batch_size):
        for group, scores in zip(batch, scorer.loglikelihoods([(group.context, group.continuations) for group in batch]), strict=True):
            for choice, value in zip(group.choices, scores, strict=True):
                lls[group.item][choice] = value
    results = []
    for item, scores in zip(items, lls, strict=True):
        lengths = np.array([float(len(choice)) for choice in item.choices])
        pred, pred_norm = int(np.argmax(scores)), int(np.argmax(np.array(scores) / lengths))
        results.append({
            "line": item.line, "gold": item.gold, "pred": pred, "pred_norm": pred_norm,
            "acc": float(pred == item.gold), "acc_norm": float(pred_norm == item.gold), "loglikelihoods": scores,
        })
    count = max(len(results), 1)
    return {"acc": sum(r["acc"] for r in results) / count, "acc_norm": sum(r["acc_norm"] for r in results) / count}, results


@dataclass(frozen=True)
class _Group:
    item: int
    choices: list[int]
    context: list[int]
    continuations: list[list[int]]


def _groups(max_length: int, requests: list[list[tuple[list[int], list[int]]]]) -> list[_Group]:
    """One group per item, its query shared by its choices; an item too long for the model
    becomes one group per choice, each the last max_length + 1 tokens of its query and
    choice, as lm-eval truncates them."""
    groups = []
    for index, pairs in enumerate(requests):
        if all(len(context) + len(continuation) <= max_length + 1 for context, continuation in pairs):
            groups.append(_Group(index, list(range(len(pairs))), pairs[0][0], [continuation for _, continuation in pairs]))
            continue
        for choice, (context, continuation) in enumerate(pairs):
            kept = (context + continuation)[-(max_length + 1):]
            groups.append(_Group(index, [choice], kept[: len(kept) - len(continuation)], [continuation]))
    return groups


def _batches(groups: list[_Group], batch_size: int) -> Iterator[list[_Group]]:
    """Groups in order, at most `batch_size` continuations a batch (a bigger group alone)."""
    batch: list[_Group] = []
    size = 0
    for group in groups:
        if batch and size + len(group.continuations) > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(group)
        size += len(group.continuations)
    if batch:
        yield batch


def encode(tokenizer: Any, items: list[ChoiceItem]) -> list[list[tuple[list[int], list[int]]]]:
    """(context tokens, continuation tokens) for every choice of every item, as lm-eval's
    `_encode_pair` makes them; the tokenizer runs on whole batches of texts."""
    contexts, wholes = [], []
    for item in items:
        query = item.query.rstrip()
        moved = item.query[len(query):]
        contexts.append(query)
        wholes.extend(query + moved + TARGET_DELIMITER + choice for choice in item.choices)
    context_ids = _encode_all(tokenizer, contexts)
    whole_ids = iter(_encode_all(tokenizer, wholes))
    requests = []
    for item, context in zip(items, context_ids, strict=True):
        requests.append([(context, next(whole_ids)[len(context):]) for _ in item.choices])
    return requests


def _encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """lm-eval's tok_encode over many texts: the tokenizer's default special tokens, except
    for a text that already starts with the prefix token (BOS, else EOS)."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prefix = tokenizer.decode(prefix_id) if prefix_id is not None else None
    starts = [bool(prefix) and text.startswith(prefix) for text in texts]
    encoded: list[list[int]] = [[] for _ in texts]
    for has_prefix in (False, True):
        chosen = [at for at, flag in enumerate(starts) if flag == has_prefix]
        if chosen:
            extra = {"add_special_tokens": False} if has_prefix else {}
            for at, ids in zip(chosen, tokenizer([texts[at] for at in chosen], **extra)["input_ids"], strict=True):
                encoded[at] = list(ids)
    return encoded
