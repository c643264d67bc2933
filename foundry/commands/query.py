"""`foundry query MODEL PROMPT`: one answer from a model, for a quick look at a result.

MODEL is a model folder, `RECIPE/KEY` in the store (a merge or finetune key: PyTorch; a
quantize key: ONNX), a published variant folder, or any model reference (`tiny:NAME`, a
hub id). This command imports torch, unlike the rest of the submitter, so only here.
"""

import re
import sys
from pathlib import Path

import typer

from foundry.errors import UserError
from foundry.store import open_store, resolve_store_url

_STAGE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/(merge|finetune|evaluate|quantize|publish)-[0-9a-f]{12}$")


def query_model(model: str, prompt: str, *, variant: str | None, system: str | None, max_new_tokens: int, raw: bool, store_flag: str | None, trust_remote_code: bool) -> None:
    from jobs.tools.query import open_generator

    folder = resolve_model(model, store_flag, trust_remote_code)
    answer = open_generator(folder, variant=variant, trust_remote_code=trust_remote_code).generate(prompt, max_new_tokens=max_new_tokens, system=system, raw=raw)
    typer.echo(answer.text)
    rate = answer.new_tokens / answer.seconds if answer.seconds else 0.0
    print(f"({answer.prompt_tokens} prompt tokens, {answer.new_tokens} new, {answer.seconds:.2f}s, {rate:.1f} tokens/s; {folder})", file=sys.stderr)


def resolve_model(model: str, store_flag: str | None, trust_remote_code: bool) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if _STAGE_KEY.match(model):
        recipe, _, key = model.partition("/")
        store = open_store(resolve_store_url(store_flag))
        if store.is_committed(recipe, key):
            return store.fetch(recipe, key)
        raise UserError(f"{model}: no committed key {key!r} of recipe {recipe!r} in {store.url}; `foundry plan RECIPE` lists a recipe's keys")
    from foundry import modelref

    if modelref.parse(model).kind in ("tiny", "hub"):
        from jobs.sources.resolve import materialize

        return materialize(model, trust_remote_code=trust_remote_code)
    raise UserError(f"{model}: no such folder; give a model folder, RECIPE/KEY from the store, a published variant folder, tiny:NAME or a hub id")
