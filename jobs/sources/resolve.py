"""Turn a model reference into a local folder a stage can load, safely.

Safetensors only: a folder whose weights exist only as pickles (`.bin`, `.pt`, `.pth`,
`.ckpt`) is refused unless the recipe sets `allow_pickle: true`, and hub downloads do not
even fetch pickles otherwise. Remote code is a separate opt-in, checked where models load.
"""

import os
from pathlib import Path

from foundry.errors import UserError
from foundry.modelref import MODEL_FILES, PICKLE_SUFFIXES, ModelRef, parse


def materialize(reference: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Path:
    ref = parse(reference)
    if ref.kind == "tiny":
        from jobs.tiny.models import build

        return build(ref.path.removeprefix("tiny:"))
    if ref.kind == "local":
        folder = ref.local_path
        if not folder.is_dir():
            raise UserError(f"model {reference}: no such folder; check the path (relative paths are read from {os.getcwd()})")
    elif ref.kind == "hub":
        folder = _download(ref, allow_pickle)
    else:
        from jobs.sources.s3 import download_model

        folder = download_model(reference, pickle_suffixes=PICKLE_SUFFIXES, allow_pickle=allow_pickle)
    check_weight_format(folder, reference, allow_pickle=allow_pickle)
    return folder


def check_weight_format(folder: Path, reference: str, *, allow_pickle: bool) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UserError(
            f"model {reference}: weights are pickles only ({', '.join(pickles[:3])}); loading a pickle can run "
            "arbitrary code, so convert them to safetensors, or set `allow_pickle: true` in the recipe if you trust the source"
        )
    if not pickles:
        raise UserError(f"model {reference}: no weights found in {folder} (expected *.safetensors)")


def _download(ref: ModelRef, allow_pickle: bool) -> Path:
    from httpx2 import HTTPError as TransportError
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = list(MODEL_FILES) + ([f"*{suffix}" for suffix in PICKLE_SUFFIXES] if allow_pickle else [])
    try:
        return Path(snapshot_download(ref.path, revision=ref.revision, allow_patterns=patterns))
    except GatedRepoError:
        raise UserError(f"model {ref.path}: gated on the Hugging Face hub; accept its licence there and provide a token in HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"model {ref.path}: not found on the Hugging Face hub (or private: set HF_TOKEN); check the id") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, TransportError, OSError) as error:
        raise UserError(f"model {ref.path}: could not be downloaded from the Hugging Face hub ({type(error).__name__}); check the network or pre-fill the cache") from None
