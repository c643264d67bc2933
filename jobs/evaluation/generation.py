"""Generation suites: ask each question, compare the answer with the expected text.

The prompt goes through the model's chat template (with the row's `system`, if any) and
decoding is greedy, as `foundry query` answers, so a suite measures what a user would get.

    exact_match        the answer, stripped, is the expected text, stripped
    success_rate       the expected text (stripped) occurs in the answer
    mean_latency_s     seconds from question to answer, prompt processing included (with
                       PyTorch, questions go `batch_size` at a time: an answer's seconds are
                       its batch's; an ONNX variant answers one at a time, as a browser does)
    tokens_per_answer  new tokens per answer
"""

from typing import Any

from jobs.evaluation.suites import QuestionItem
from jobs.tools.query import Answer, Generator, TorchGenerator


def score(generator: Generator, items: list[QuestionItem], *, max_new_tokens: int, batch_size: int = 1) -> tuple[dict[str, float], list[dict[str, Any]]]:
    results = []
    for item, answer in zip(items, _answers(generator, items, max_new_tokens, batch_size), strict=True):
        expected = item.answer.strip()
        results.append({
            "line": item.line, "prompt": item.prompt, "answer": item.answer, "output": answer.text,
            "exact_match": float(answer.text.strip() == expected), "success": float(expected in answer.text),
            "seconds": round(answer.seconds, 6), "tokens": answer.new_tokens,
        })
    count = max(len(results), 1)
    return {
        "exact_match": sum(r["exact_match"] for r in results) / count,
        "success_rate": sum(r["success"] for r in results) / count,
        "mean_latency_s": sum(r["seconds"] for r in results) / count,
        "tokens_per_answer": sum(r["tokens"] for r in results) / count,
    }, results


def _answers(generator: Generator, items: list[QuestionItem], max_new_tokens: int, batch_size: int) -> list[Answer]:
    """PyTorch answers `batch_size` questions at a time; an ONNX variant one at a time, as a
    browser does."""
    if not isinstance(generator, TorchGenerator):
        return [generator.generate(item.prompt, max_new_tokens=max_new_tokens, system=item.system) for item in items]
    answers = []
    for start in range(0, len(items), batch_size):
        answers += generator.generate_many([(item.prompt, item.system) for item in items[start:start + batch_size]], max_new_tokens=max_new_tokens)
    return answers
