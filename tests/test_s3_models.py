"""s3:// model references: a model folder kept in a bucket is downloaded whole, once, and
again only when the bucket's copy changes; pickles stay in the bucket unless allowed."""

from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.s3 import client as s3client
from jobs.sources.resolve import materialize
from jobs.tiny.models import build


def upload_folder(bucket: str, prefix: str, folder: Path) -> list[str]:
    s3 = s3client.client()
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    for name in names:
        s3.upload_file(str(folder / name), bucket, f"{prefix}/{name}")
    return names


def test_a_model_in_a_bucket_is_downloaded_whole_and_cached(bucket: str) -> None:
    source = build("llama-a")
    names = upload_folder(bucket, "models/llama-a", source)
    folder = materialize(f"s3://{bucket}/models/llama-a")
    for name in names:
        assert (folder / name).read_bytes() == (source / name).read_bytes()
    marker = folder / "config.json"
    stat = marker.stat()
    assert materialize(f"s3://{bucket}/models/llama-a/") == folder
    assert marker.stat().st_mtime_ns == stat.st_mtime_ns     # the cached copy, not a new download
    s3client.client().put_object(Bucket=bucket, Key="models/llama-a/config.json", Body=b'{"changed": true}')
    assert (materialize(f"s3://{bucket}/models/llama-a") / "config.json").read_text() == '{"changed": true}'


def test_pickles_are_not_fetched_unless_allowed(bucket: str) -> None:
    s3 = s3client.client()
    s3.put_object(Bucket=bucket, Key="models/old/config.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="models/old/pytorch_model.bin", Body=b"not really a pickle")
    with pytest.raises(UserError, match="no weights found"):
        materialize(f"s3://{bucket}/models/old")
    folder = materialize(f"s3://{bucket}/models/old", allow_pickle=True)
    assert (folder / "pytorch_model.bin").exists()


def test_an_empty_prefix_and_a_missing_bucket_are_named(bucket: str) -> None:
    with pytest.raises(UserError, match=f"no objects under s3://{bucket}/models/none/"):
        materialize(f"s3://{bucket}/models/none")
    with pytest.raises(UserError, match="foundry-no-such-bucket"):
        materialize("s3://foundry-no-such-bucket/models/x")
