"""lm-evaluation-harness's side of bench_evaluate: run in the benchmark's own environment
(where lm_eval is installed), never imported by the project.

    python bench/lm_eval_side.py MODEL_DIR TASK_DIR TASK BATCH_SIZE OUT.json

Loads lm-eval's `hf` model once (float32, CPU or CUDA), then times `simple_evaluate` on the
task (end to end: the dataset read, the requests built, scored and aggregated) and, inside
it, the model's `loglikelihood` call (the scoring alone). Writes the metrics, the per-item
log-likelihoods and the timings.
"""

import json
import sys
import time


def main() -> None:
    model_dir, task_dir, task, batch_size, out = sys.argv[1:6]
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_dir, batch_size=int(batch_size), device="cuda" if torch.cuda.is_available() else "cpu", dtype="float32")
    scoring: list[float] = []
    original = HFLM.loglikelihood

    def timed(self, requests, disable_tqdm=False):  # noqa: ANN001, ANN202 - lm-eval's own signature
        started = time.perf_counter()
        answer = original(self, requests, disable_tqdm=True)
        scoring.append(time.perf_counter() - started)
        return answer

    HFLM.loglikelihood = timed
    manager = TaskManager(include_path=task_dir, include_defaults=False)
    started = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, bootstrap_iters=0)
    total = time.perf_counter() - started
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    metrics = results["results"][task]
    with open(out, "w") as handle:
        json.dump({
            "seconds": total, "scoring_seconds": sum(scoring),
            "metrics": {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]},
            "items": [{"loglikelihoods": [float(resp[0][0]) for resp in sample["resps"]], "acc": sample["acc"], "acc_norm": sample["acc_norm"]} for sample in samples],
        }, handle)


if __name__ == "__main__":
    main()
