"""The evaluate stage's scoring: lm-evaluation-harness's log-likelihood rules on a real tiny
model, batching, the ONNX variant, generation suites, and suites refused row by row."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from foundry.cli import app
from foundry.errors import UserError
from foundry.plan import plan
from foundry.recipe.load import load_recipe
from foundry.stagespec import StageInput, StageSpec
from jobs.evaluation import evaluate_folder, generation, multiple_choice
from jobs.evaluation.backends import Backend, open_backend
from jobs.evaluation.suites import ChoiceItem, QuestionItem, arc_item, builtin_suite, hellaswag_item, load_suite
from jobs.sources.resolve import materialize

ITEMS = [
    ChoiceItem(1, "Question: What colour is the sky?\nAnswer:", ["blue", "green", "a red one"], 0),
    ChoiceItem(2, "The cat sat on the", ["mat", "moon", "idea"], 0),
    ChoiceItem(3, "1 + 1 =", ["2", "3", "eleven"], 2),
    ChoiceItem(4, "Paris is the capital of ", ["France", "Spain"], 1),  # a trailing space moves to the continuation
    ChoiceItem(5, "Emma went to the library with", ["a quiet cat.", "the", "seventeen purple elephants"], 1),
    ChoiceItem(6, "Once upon a time", [", there was", " in", "!"], 0),
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return materialize("tiny:llama-a")


@pytest.fixture(scope="module")
def torch_backend(model_dir: Path) -> Backend:
    return open_backend(model_dir)


def write_suite(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def hand_loglikelihood(model: torch.nn.Module, tokenizer: object, query: str, choice: str) -> float:
    """log P(" " + choice | query), one sequence, one forward, no batching or padding."""
    context = tokenizer(query.rstrip())["input_ids"]
    whole = tokenizer(query + " " + choice)["input_ids"]
    continuation = whole[len(context):]
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation])).logits[0]
    log_probs = torch.log_softmax(logits[len(context) - 1: -1], dim=-1)
    return sum(float(log_probs[at, token]) for at, token in enumerate(continuation))


def test_acc_and_acc_norm_equal_a_hand_computation(torch_backend: Backend) -> None:
    metrics, results = multiple_choice.score(torch_backend.scorer, ITEMS, batch_size=4)
    model, tokenizer = torch_backend.generator.model, torch_backend.generator.tokenizer
    acc = acc_norm = 0
    for item, result in zip(ITEMS, results, strict=True):
        expected = [hand_loglikelihood(model, tokenizer, item.query, choice) for choice in item.choices]
        assert result["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
        best = max(range(len(expected)), key=lambda i: expected[i])
        best_norm = max(range(len(expected)), key=lambda i: expected[i] / len(item.choices[i]))
        assert (result["pred"], result["pred_norm"]) == (best, best_norm)
        acc += best == item.gold
        acc_norm += best_norm == item.gold
    assert metrics == {"acc": acc / len(ITEMS), "acc_norm": acc_norm / len(ITEMS)}
    # the length normalisation changes the verdict somewhere, or the test could not tell them apart
    assert any(result["pred"] != result["pred_norm"] for result in results)


def test_batched_scores_equal_unbatched(torch_backend: Backend) -> None:
    one_by_one = multiple_choice.score(torch_backend.scorer, ITEMS, batch_size=1)
    batched = multiple_choice.score(torch_backend.scorer, ITEMS, batch_size=7)
    assert batched[0] == one_by_one[0]
    for single, together in zip(one_by_one[1], batched[1], strict=True):
        assert together["loglikelihoods"] == pytest.approx(single["loglikelihoods"], rel=1e-6, abs=1e-5)
        assert (together["pred"], together["pred_norm"]) == (single["pred"], single["pred_norm"])


def test_generation_suite_metrics(torch_backend: Backend) -> None:
    prompt = "What colour is the book?"
    said = torch_backend.generator.generate(prompt, max_new_tokens=12).text
    assert len(said) > 3
    items = [QuestionItem(1, prompt, said), QuestionItem(2, prompt, said[1:-1]), QuestionItem(3, prompt, "no model says this"), QuestionItem(4, prompt, said, system="Be brief.")]
    metrics, results = generation.score(torch_backend.generator, items, max_new_tokens=12)
    assert [r["exact_match"] for r in results[:3]] == [1.0, 0.0, 0.0]
    assert [r["success"] for r in results[:3]] == [1.0, 1.0, 0.0]
    assert metrics["exact_match"] == pytest.approx(sum(r["exact_match"] for r in results) / 4)
    assert metrics["success_rate"] == pytest.approx(sum(r["success"] for r in results) / 4)
    assert metrics["tokens_per_answer"] == pytest.approx(sum(r["tokens"] for r in results) / 4) and metrics["tokens_per_answer"] > 0
    assert metrics["mean_latency_s"] > 0 and all(r["output"] for r in results)


def test_batched_generation_answers_as_one_at_a_time(torch_backend: Backend) -> None:
    items = [QuestionItem(1, "Hi", "x"), QuestionItem(2, "Emma asks: what colour is the book on the table?", "x"), QuestionItem(3, "What is 2+2?", "x", system="Be brief.")]
    _, alone = generation.score(torch_backend.generator, items, max_new_tokens=10, batch_size=1)
    _, batched = generation.score(torch_backend.generator, items, max_new_tokens=10, batch_size=3)
    assert [r["output"] for r in batched] == [r["output"] for r in alone] and [r["tokens"] for r in batched] == [r["tokens"] for r in alone]
    assert len({r["seconds"] for r in batched}) == 1  # one batch: each answer waited for it


def test_evaluate_folder_writes_the_contract_document(model_dir: Path, tmp_path: Path) -> None:
    mc = write_suite(tmp_path / "mc.jsonl", [{"query": i.query, "choices": i.choices, "gold": i.gold} for i in ITEMS])
    gen = write_suite(tmp_path / "gen.jsonl", [{"prompt": "Say hello", "answer": "hello"}])
    document = evaluate_folder(model_dir, [str(mc), {"jsonl": str(gen)}], limit=3, batch_size=5, max_new_tokens=4)
    assert document["model"] == {"source": str(model_dir), "backend": "torch", "variant": None}
    assert set(document["metrics"]) == {"mc.acc", "mc.acc_norm", "gen.exact_match", "gen.success_rate", "gen.mean_latency_s", "gen.tokens_per_answer"}
    assert document["suites"]["mc"]["n"] == 3 and [item["line"] for item in document["suites"]["mc"]["items"]] == [1, 2, 3]
    assert document["suites"]["gen"]["kind"] == "generation" and document["suites"]["gen"]["items"][0]["tokens"] <= 4


@pytest.fixture(scope="module")
def quantized(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.stages.quantize import run

    out = tmp_path_factory.mktemp("quantized")
    spec = StageSpec(stage="quantize", recipe="t", key="quantize-0", store="unused", inputs={"model": StageInput(model="tiny:llama-a")}, params={"variants": ["fp32", "q8"], "prompts": ["Hi"]})
    run(spec, {"model": model_dir}, out)
    return out


def test_onnx_variant_scores_close_to_pytorch(torch_backend: Backend, quantized: Path, tmp_path: Path) -> None:
    _, reference = multiple_choice.score(torch_backend.scorer, ITEMS, batch_size=8)
    fp32 = open_backend(quantized, variant="fp32")
    assert (fp32.name, fp32.variant) == ("onnx", "fp32")
    metrics, results = multiple_choice.score(fp32.scorer, ITEMS, batch_size=8)
    _, single = multiple_choice.score(fp32.scorer, ITEMS, batch_size=1)
    for expected, got, alone in zip(reference, results, single, strict=True):
        assert got["loglikelihoods"] == pytest.approx(expected["loglikelihoods"], abs=1e-3)
        assert alone["loglikelihoods"] == pytest.approx(got["loglikelihoods"], abs=1e-4)
        assert (got["pred"], got["pred_norm"]) == (expected["pred"], expected["pred_norm"])
    suite = write_suite(tmp_path / "mc.jsonl", [{"query": i.query, "choices": i.choices, "gold": i.gold} for i in ITEMS])
    q8 = evaluate_folder(quantized, [str(suite)], variant="q8")
    assert q8["model"]["variant"] == "q8"
    gaps = [abs(a - b) for r, q in zip(reference, q8["suites"]["mc"]["items"], strict=True) for a, b in zip(r["loglikelihoods"], q["loglikelihoods"], strict=True)]
    assert max(gaps) < 0.5 * max(abs(v) for r in reference for v in r["loglikelihoods"])


GOOD = {"query": "Q?", "choices": ["a", "b"], "gold": 1}


@pytest.mark.parametrize(("row", "message"), [
    ({"query": "Q?", "gold": 0}, "missing 'choices'"),
    ({"query": "Q?", "choices": ["a", "b"], "gold": 2}, "'gold' is 2, out of range for 2 choices"),
    ({"query": "Q?", "choices": ["a", "b"], "gold": -1}, "'gold' is -1, out of range"),
    ({"query": "Q?", "choices": "a b", "gold": 0}, "'choices' must be a list of at least two strings, got a string"),
    ({"query": "Q?", "choices": ["a"], "gold": 0}, "'choices' must be a list of at least two strings, got 1 item"),
    ({"query": "Q?", "choices": ["a", 3], "gold": 0}, "choices\\[1\\] must be a non-empty string, got a number"),
    ({"query": "Q?", "choices": ["a", "b"], "gold": "1"}, "'gold' must be the index of the right choice \\(an integer\\), got a string"),
    ({"query": "Q?", "choices": ["a", "b"], "gold": True}, "'gold' must be the index .*got a boolean"),
    ({"query": ["Q?"], "choices": ["a", "b"], "gold": 0}, "'query' must be a non-empty string, got a list"),
    ({"prompt": "Q?", "answer": "a"}, "missing 'query'"),
    ("not an object", "a row is a JSON object"),
])
def test_malformed_multiple_choice_rows_fail_with_file_and_line(tmp_path: Path, row: object, message: str) -> None:
    path = write_suite(tmp_path / "suite.jsonl", [GOOD, row])
    with pytest.raises(UserError, match=f"^{path}:2: .*{message}"):
        load_suite({"jsonl": str(path)})


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "Q?"}, "missing 'answer'"),
    ({"prompt": "Q?", "answer": 4}, "'answer' must be a non-empty string, got a number"),
    ({"prompt": "", "answer": "a"}, "'prompt' must be a non-empty string, got an empty one"),
    ({"prompt": "Q?", "answer": "a", "system": ["x"]}, "'system' must be a string, got a list"),
])
def test_malformed_generation_rows_fail_with_file_and_line(tmp_path: Path, row: object, message: str) -> None:
    path = write_suite(tmp_path / "questions.jsonl", [{"prompt": "Q?", "answer": "a"}, row])
    with pytest.raises(UserError, match=f"^{path}:2: {message}"):
        load_suite(str(path))


def test_empty_unknown_and_shapeless_suites_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=f"^{empty}: the suite is empty"):
        load_suite(str(empty))
    odd = write_suite(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(UserError, match=f"^{odd}:1: not a suite row: .*this one has: text"):
        load_suite(str(odd))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(GOOD) + "\n{\"query\": \n")
    with pytest.raises(UserError, match=f"^{broken}:2: not valid JSON"):
        load_suite(str(broken))
    with pytest.raises(UserError, match="suite 'arc_esay': not a builtin"):
        load_suite("arc_esay")


def test_a_suite_edited_after_planning_is_refused(tmp_path: Path) -> None:
    from foundry.hashing import sha256_file

    path = write_suite(tmp_path / "mc.jsonl", [GOOD])
    digest = sha256_file(path)
    assert load_suite({"jsonl": str(path), "sha256": digest}).items[0].gold == 1
    write_suite(path, [GOOD, GOOD])
    with pytest.raises(UserError, match="changed since the recipe was planned"):
        load_suite({"jsonl": str(path), "sha256": digest})


def test_editing_a_local_suite_changes_the_evaluate_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_suite(tmp_path / "mc.jsonl", [GOOD])
    recipe = tmp_path / "r.yml"
    recipe.write_text("models: [{model: tiny:llama-a}]\nevaluate: {suites: [{jsonl: mc.jsonl}], limit: 5}\nquantize: {variants: [q8]}\npublish: {to: ./out}\n")

    def keys() -> dict[str, str]:
        return {stage.stage: stage.key for stage in plan(load_recipe(recipe)).stages}

    before = keys()
    write_suite(tmp_path / "mc.jsonl", [GOOD, {**GOOD, "gold": 0}])
    after = keys()
    assert after["evaluate"] != before["evaluate"] and after["publish"] != before["publish"]
    assert after["quantize"] == before["quantize"]  # the model did not change: its ONNX export is shared
    assert keys() == after


def test_builtin_suites_follow_lm_eval_and_say_what_to_do_offline() -> None:
    arc = arc_item({"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}, "answerKey": "B"}, 0)
    assert (arc.query, arc.choices, arc.gold) == ("Question: Which is a gas?\nAnswer:", ["ice", "steam", "rock"], 1)
    swag = hellaswag_item({
        "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a rug. [title] Vacuum the rug.", "ctx_b": "then",
        "endings": ["[step] rinse it  well.", " shake it [substeps] out. "], "label": "1",
    }, 0)
    assert swag.query == "Home and Garden: How to clean a rug.. Vacuum the rug. Then"
    assert swag.choices == [" rinse it well.", "shake it out."] and swag.gold == 1  # stripped before the brackets go, as lm-eval does
    with pytest.raises(UserError, match="suite arc_easy: its data .*allenai/ai2_arc.* could not be fetched .*use a local JSONL suite"):
        builtin_suite("arc_easy", limit=2)  # tests run with HF_HUB_OFFLINE=1


def test_cli_evaluates_a_folder_and_writes_metrics(model_dir: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mc.jsonl", [{"query": i.query, "choices": i.choices, "gold": i.gold} for i in ITEMS])
    out = tmp_path / "m" / "metrics.json"
    result = CliRunner().invoke(app, ["evaluate", str(model_dir), "--suite", str(suite), "--limit", "4", "--batch-size", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["suites"]["mc"]["n"] == 4 and "mc.acc_norm" in result.output
    assert f"{document['metrics']['mc.acc_norm']:.4f}" in result.output


def test_items_longer_than_the_model_are_truncated_as_lm_eval_does(torch_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the model's length, each choice is scored on the last max_length + 1 tokens of
    its query and choice (left-truncated), so the query is no longer shared."""
    model, tokenizer = torch_backend.generator.model, torch_backend.generator.tokenizer
    monkeypatch.setattr(torch_backend.scorer, "max_length", 12)
    items = [ChoiceItem(1, "Emma went to the library with a quiet cat and then", ["home.", "to the garden again"], 0), ITEMS[2]]
    _, results = multiple_choice.score(torch_backend.scorer, items, batch_size=3)
    for item, result in zip(items, results, strict=True):
        expected = []
        for choice in item.choices:
            context = tokenizer(item.query.rstrip())["input_ids"]
            continuation = tokenizer(item.query + " " + choice)["input_ids"][len(context):]
            window = (context + continuation)[-13:]
            assert item is items[1] or len(context) + len(continuation) > 13  # the first item is cut
            with torch.no_grad():
                log_probs = torch.log_softmax(model(torch.tensor([window[:-1]])).logits[0], dim=-1)
            expected.append(sum(float(log_probs[len(window) - 1 - len(continuation) + at, token]) for at, token in enumerate(continuation)))
        assert result["loglikelihoods"] == pytest.approx(expected, abs=1e-4)


def test_an_s3_suite_is_read_through_the_store_client(bucket: str) -> None:
    import boto3

    body = "".join(json.dumps({"query": i.query, "choices": i.choices, "gold": i.gold}) + "\n" for i in ITEMS[:2])
    boto3.session.Session().client("s3").put_object(Bucket=bucket, Key="eval/capitals.jsonl", Body=body.encode())
    suite = load_suite({"jsonl": f"s3://{bucket}/eval/capitals.jsonl"})
    assert (suite.name, suite.kind, [item.query for item in suite.items]) == ("capitals", "multiple_choice", [ITEMS[0].query, ITEMS[1].query])
    with pytest.raises(UserError, match="no such object"):
        load_suite(f"s3://{bucket}/eval/missing.jsonl")


@pytest.mark.parametrize("name", ["gpt2-a", "qwen2-a"])
def test_other_families_score_as_by_hand(name: str) -> None:
    """The shared-query passes (cache copied per choice, a 4D mask, explicit positions) on
    GPT-2's learned positions and Qwen2's rotary ones, not only Llama's."""
    backend = open_backend(materialize(f"tiny:{name}"))
    _, results = multiple_choice.score(backend.scorer, ITEMS[:4], batch_size=5)
    for item, result in zip(ITEMS[:4], results, strict=True):
        expected = [hand_loglikelihood(backend.generator.model, backend.generator.tokenizer, item.query, choice) for choice in item.choices]
        assert result["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
