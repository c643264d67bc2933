"""The store's commit discipline, the same tests against file:// and s3:// (moto's server on
loopback): nothing is done until its marker is written, last; readers trust only that."""

import json
import os
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.s3 import client as s3client
from foundry.s3.files import list_objects
from foundry.store import SUCCESS_MARKER, DamagedKey, Store, build_record, open_store, resolve_store_url
from foundry.store.local import LocalStore
from foundry.store.s3 import S3Store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    return open_store(f"s3://{request.getfixturevalue('bucket')}/artifacts")


def _stage_output(store: Store, key: str, content: bytes = b"weights") -> Path:
    staging = store.new_staging("r", key)
    (staging / "sub").mkdir()
    (staging / "sub" / "model.bin").write_bytes(content)
    (staging / "config.json").write_text("{}")
    return staging


def _commit(store: Store, key: str, content: bytes = b"weights", **extra: object) -> dict:
    staging = _stage_output(store, key, content)
    return store.commit("r", key, staging, build_record(staging, key=key, stage="merge", recipe="r", started=0.0, extra=dict(extra)))


def _plant(store: Store, recipe: str, key: str, path: str, data: bytes | None) -> None:
    """Write (or, with None, delete) one stored file behind the store's back, as a crash or bit rot would."""
    if isinstance(store, LocalStore):
        target = store.root / recipe / key / path
        if data is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return
    assert isinstance(store, S3Store)
    record = store.marker(recipe, key)
    folder = store.files_location(recipe, key, record) if record and path != SUCCESS_MARKER else store.root.child(recipe, key)
    object_key = folder.child(path).key
    if data is None:
        store.s3.delete_object(Bucket=store.root.bucket, Key=object_key)
    else:
        store.s3.put_object(Bucket=store.root.bucket, Key=object_key, Body=data)


def test_commit_writes_files_then_marker(store: Store) -> None:
    staging = _stage_output(store, "merge-1")
    assert staging.name == "merge-1", "staging is named like the key, so tools that record it write the same bytes"
    assert not store.is_committed("r", "merge-1")
    store.commit("r", "merge-1", staging, build_record(staging, key="merge-1", stage="merge", recipe="r", started=0.0, extra={}))
    marker = store.marker("r", "merge-1")
    assert marker is not None and marker["size_bytes"] == len(b"weights") + 2
    assert sorted(entry["path"] for entry in marker["files"]) == ["config.json", "sub/model.bin"]
    assert not staging.exists()
    assert [(k.recipe, k.key, k.size_bytes) for k in store.list_committed("r")] == [("r", "merge-1", 9)]
    assert [k.key for k in store.list_committed()] == ["merge-1"] and list(store.list_committed("other")) == []
    fetched = store.fetch("r", "merge-1")
    assert (fetched / "sub" / "model.bin").read_bytes() == b"weights" and (fetched / "config.json").read_text() == "{}"


def test_uncommitted_key_is_garbage_and_is_replaced(store: Store) -> None:
    _plant(store, "r", "merge-1", "half-written.bin", b"\0" * 10)
    assert not store.is_committed("r", "merge-1")
    assert list(store.list_committed()) == []
    assert [(item.recipe, item.name, item.kind, item.size_bytes) for item in store.leftovers()] == [("r", "merge-1", "uncommitted key", 10)]
    _commit(store, "merge-1")
    assert list(store.leftovers()) == []
    assert store.verify("r", "merge-1") == [], "the crashed attempt's file is gone"


def test_discard_unmarks_before_removing(store: Store) -> None:
    _commit(store, "k")
    store.discard("r", "k")
    assert not store.is_committed("r", "k") and list(store.leftovers()) == []
    store.discard("r", "never-was")


def test_marker_is_whole_json(store: Store) -> None:
    _commit(store, "k", result={"a": 1})
    assert store.marker("r", "k")["result"] == {"a": 1}
    if isinstance(store, LocalStore):
        assert json.loads((store.root / "r" / "k" / SUCCESS_MARKER).read_text())["result"] == {"a": 1}
        assert not list((store.root / "r" / "k").glob(".*"))


def test_verify_names_corrupted_missing_and_unlisted_files(store: Store) -> None:
    _commit(store, "k", b"0123456789")
    assert store.verify("r", "k") == []
    _plant(store, "r", "k", "sub/model.bin", b"0123456780")
    _plant(store, "r", "k", "config.json", None)
    _plant(store, "r", "k", "stray.txt", b"x")
    assert store.verify("r", "k") == [
        "config.json: missing",
        "sub/model.bin: sha256 differs from _SUCCESS.json (corrupted)",
        "stray.txt: not listed in _SUCCESS.json",
    ]
    assert store.verify("r", "absent") == ["_SUCCESS.json: missing (the key is not committed)"]


def test_leftovers_are_removed_one_by_one(store: Store) -> None:
    _commit(store, "done")
    _plant(store, "r", "crashed", "part.bin", b"abc")
    _plant(store, "_runs", "run-1", "status.json", b"{}")       # the store's own records are never garbage
    [leftover] = store.leftovers()
    assert (leftover.name, leftover.kind) == ("crashed", "uncommitted key") and leftover.modified > 0
    store.remove_leftover(leftover)
    assert list(store.leftovers()) == [] and store.is_committed("r", "done")


def test_staging_folders_of_crashed_local_runs_are_leftovers(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    staging = _stage_output(store, "k")
    [leftover] = store.leftovers()
    assert leftover.kind == "staging folder" and leftover.size_bytes == len(b"weights") + 2
    store.remove_leftover(leftover)
    assert not staging.exists()


def test_documents_beside_the_keys(store: Store) -> None:
    store.put_document("_runs/a/status.json", {"state": "running"})
    store.put_document("_runs/a/status.json", {"state": "done"})
    store.put_document("_runs/b/status.json", {"state": "running"})
    assert store.get_document("_runs/a/status.json") == {"state": "done"}
    assert store.get_document("_runs/none.json") is None
    assert store.list_documents("_runs") == ["_runs/a/status.json", "_runs/b/status.json"]
    assert list(store.list_committed()) == [] and list(store.leftovers()) == []


# --- s3 only: the local cache, its integrity, the layout -----------------------------------

@pytest.fixture
def s3_store(bucket: str) -> S3Store:
    store = open_store(f"s3://{bucket}/artifacts/")
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/artifacts"
    return store


def test_s3_layout_is_prefix_recipe_key_marker_and_attempt(s3_store: S3Store) -> None:
    attempt = _commit(s3_store, "merge-1")["attempt"]
    listed = s3client.client().list_objects_v2(Bucket=s3_store.root.bucket)["Contents"]
    folder = f"artifacts/r/merge-1/.attempts/{attempt}"
    assert sorted(item["Key"] for item in listed) == [f"{folder}/config.json", f"{folder}/sub/model.bin", "artifacts/r/merge-1/_SUCCESS.json"]
    assert s3_store.location("r", "merge-1") == f"s3://{s3_store.root.bucket}/artifacts/r/merge-1/"


def test_fetch_downloads_once_and_reuses_the_cache(s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    _commit(s3_store, "k", b"abc")
    cached = s3_store.fetch("r", "k")
    assert cached.is_relative_to(tmp_path / "cache" / "store") and (cached / "sub" / "model.bin").read_bytes() == b"abc"
    # the committing machine already holds the bytes: the staging folder became the cache
    _plant(s3_store, "r", "k", "sub/model.bin", None)
    assert s3_store.fetch("r", "k") == cached and (cached / "sub" / "model.bin").read_bytes() == b"abc"
    # another machine (an empty cache) downloads, verifying every file against the marker
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(DamagedKey, match=r"artifacts/r/k/sub/model.bin: missing: key r/k is damaged .* --repair"):
        s3_store.fetch("r", "k")
    _plant(s3_store, "r", "k", "sub/model.bin", b"abd")
    with pytest.raises(DamagedKey, match=r"artifacts/r/k/sub/model.bin: sha256 .* \(corrupted\): key r/k is damaged"):
        s3_store.fetch("r", "k")
    assert not any((tmp_path / "cache2").rglob("model.bin")), "nothing half-fetched is left to be trusted"
    _plant(s3_store, "r", "k", "sub/model.bin", b"abc")
    fetched = s3_store.fetch("r", "k")
    assert (fetched / "sub" / "model.bin").read_bytes() == b"abc" and json.loads((fetched / SUCCESS_MARKER).read_text())["key"] == "k"


def test_a_recommitted_key_replaces_a_stale_cache(s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FOUNDRY_SCRATCH", str(tmp_path / "elsewhere"))
    _commit(s3_store, "k", b"one")
    first = s3_store.fetch("r", "k")
    _commit(s3_store, "k", b"two")
    assert s3_store.fetch("r", "k") == first and (first / "sub" / "model.bin").read_bytes() == b"two"
    assert sorted(p.name for p in first.parent.iterdir()) == [".k.lock", "k"], "no temporary folder left beside the cache"


def test_unfinished_multipart_uploads_are_leftovers(s3_store: S3Store) -> None:
    s3 = s3_store.s3
    upload = s3.create_multipart_upload(Bucket=s3_store.root.bucket, Key="artifacts/r/merge-9/model.safetensors")
    [leftover] = s3_store.leftovers()
    assert (leftover.recipe, leftover.name, leftover.kind) == ("r", "merge-9/model.safetensors", "unfinished upload")
    s3_store.remove_leftover(leftover)
    assert s3.list_multipart_uploads(Bucket=s3_store.root.bucket).get("Uploads", []) == []
    assert upload["UploadId"]


# --- opening a store -----------------------------------------------------------------------

def test_store_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_STORE", "/from/env")
    assert resolve_store_url("/from/flag") == "/from/flag"
    assert resolve_store_url(None) == "/from/env"
    monkeypatch.delenv("FOUNDRY_STORE")
    assert resolve_store_url(None) == "./.foundry/store"


def test_unsupported_scheme_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unsupported scheme"):
        open_store("gs://bucket/x")


@pytest.mark.parametrize("url", ["s3://", "s3://a/x", "s3://Bad Bucket/x", "s3://bucket/../x"])
def test_malformed_s3_urls_are_user_errors(url: str) -> None:
    with pytest.raises(UserError, match="store"):
        open_store(url)


def test_opening_an_s3_store_writes_nothing(bucket: str) -> None:
    open_store(f"s3://{bucket}/artifacts")
    assert s3client.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


# --- damage is never passed on ---------------------------------------------------------------

def _flip(path: Path, offset: int = 1) -> None:
    """One byte changed in place, size kept: what bit rot or a stray write does."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_fetch_refuses_a_damaged_local_key(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    _commit(store, "k", b"0123456789")
    _flip(store.root / "r" / "k" / "sub" / "model.bin")
    with pytest.raises(DamagedKey) as refused:
        store.fetch("r", "k")
    assert str(refused.value) == (f"{store.root}/r/k/sub/model.bin: sha256 differs from _SUCCESS.json (corrupted): key r/k is damaged and was not used; "
                                  "`foundry verify r/k --repair` deletes it so that the next run rebuilds it")
    assert isinstance(refused.value, UserError), "exit 2: no retry fixes it"
    _plant(store, "r", "k", "extra.bin", b"x")
    with pytest.raises(DamagedKey, match=r"\(and 1 more problem\(s\)\)"):
        store.fetch("r", "k")


def test_a_damaged_cache_copy_is_downloaded_again_never_used(s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    _commit(s3_store, "k", b"0123456789")
    cached = s3_store.fetch("r", "k")
    _flip(cached / "sub" / "model.bin")
    assert (s3_store.fetch("r", "k") / "sub" / "model.bin").read_bytes() == b"0123456789"
    (cached / "sub" / "model.bin").write_bytes(b"012345678")         # truncated
    assert (s3_store.fetch("r", "k") / "sub" / "model.bin").read_bytes() == b"0123456789"
    # damaged in the bucket too: refused, naming the object, and the cache copy is not used
    _flip(cached / "sub" / "model.bin")
    _plant(s3_store, "r", "k", "sub/model.bin", b"0123456780")
    with pytest.raises(DamagedKey, match=r"artifacts/r/k/sub/model.bin: sha256 .* \(corrupted\): key r/k is damaged"):
        s3_store.fetch("r", "k")


@pytest.mark.parametrize("marker", [b"\xff\xfe{}", b'{"key": "k", "files": [', b"[1, 2]", b'{"key": "k"}'], ids=["not-utf8", "truncated", "list", "no-files"])
def test_a_broken_marker_is_a_broken_key_never_committed(store: Store, marker: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    from foundry.commands.artifacts import list_artifacts
    from foundry.commands.verify import verify_target

    _commit(store, "good")
    _commit(store, "k")
    _plant(store, "r", "k", SUCCESS_MARKER, marker)
    assert store.marker("r", "k") is None and not store.is_committed("r", "k")
    [(recipe, key, reason)] = store.broken_keys()
    assert (recipe, key) == ("r", "k") and reason.startswith(SUCCESS_MARKER)
    [problem] = store.verify("r", "k")
    assert problem.startswith(f"{SUCCESS_MARKER} ") and problem.endswith("(a broken key: counted as not committed)")
    list_artifacts(None, store.url)
    out, err = capsys.readouterr()
    assert err.startswith(f"broken key r/k: {reason};") and err.count("\n") == 1 and "good" in out and " k " not in out
    assert verify_target("r/k", store.url) is False
    assert capsys.readouterr().err.count("\n") == 1
    assert verify_target(None, store.url, repair=True) is True, "--repair deletes the broken key"
    assert "deleted r/k" in capsys.readouterr().out
    assert list(store.broken_keys()) == [] and store.is_committed("r", "good")
    _plant(store, "r", "k", SUCCESS_MARKER, marker)
    _commit(store, "k")
    assert store.verify("r", "k") == [], "a commit replaces a broken key"


def test_gc_lists_a_broken_local_key_as_a_leftover(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    _commit(store, "k")
    _plant(store, "r", "k", SUCCESS_MARKER, b"[]")
    [leftover] = store.leftovers()
    assert (leftover.name, leftover.kind) == ("k", "broken key")
    store.remove_leftover(leftover)
    assert not (store.root / "r" / "k").exists()


def test_concurrent_commits_of_one_key_all_succeed(tmp_path: Path) -> None:
    """Runs started together commit the same key at once: none fails, the key ends whole."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(str(tmp_path / "store"))
    stagings = [_stage_output(store, "k", b"same bytes") for _ in range(12)]
    records = [build_record(staging, key="k", stage="merge", recipe="r", started=0.0, extra={}) for staging in stagings]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda pair: store.commit("r", "k", *pair), zip(stagings, records, strict=True)))
    assert store.verify("r", "k") == [] and list(store.leftovers()) == []
    assert sorted(p.name for p in (store.root / "r").iterdir()) == [".staging", "k"] and not any((store.root / "r" / ".staging").iterdir())


def _all_objects(store: S3Store) -> list[str]:
    return sorted(item.key for item in list_objects(store.s3, store.root.bucket, store.root.prefix))


@pytest.mark.parametrize("committers", [12])
def test_concurrent_commits_of_one_s3_key_leave_one_whole_marker(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committers: int) -> None:
    """Runs committing one uncommitted key at once, each with bytes of its own: one marker wins,
    every file it lists is there with its hashes, the losers leave nothing, fetch works."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    for round_ in range(3):
        key = f"merge-{round_}"
        stores = [open_store(f"s3://{bucket}/artifacts") for _ in range(committers)]
        stagings = [_stage_output(store, key, f"attempt {index} ".encode() * (index + 1)) for index, store in enumerate(stores)]
        for index, staging in enumerate(stagings):
            (staging / f"only-{index}.bin").write_bytes(b"x" * index)
        records = [build_record(staging, key=key, stage="merge", recipe="r", started=0.0, extra={}) for staging in stagings]
        with ThreadPoolExecutor(committers) as pool:
            returned = list(pool.map(lambda triple, key=key: triple[0].commit("r", key, triple[1], triple[2]), zip(stores, stagings, records, strict=True)))
        store = stores[0]
        marker = store.marker("r", key)
        assert marker is not None and store.verify("r", key) == [], f"round {round_}: the marker lists files that are gone or another attempt's"
        assert all(record["files"] == marker["files"] for record in returned), "every committer reports the marker that won"
        assert list(store.leftovers()) == [], "the losers removed their own files"
        listed = {entry["path"] for entry in marker["files"]}
        files_at = store.files_location("r", key, marker).prefix
        assert [name for name in _all_objects(store) if name.startswith(store._key("r", key).prefix)] == sorted(
            [store._key("r", key).child(SUCCESS_MARKER).key] + [files_at + path for path in listed])
        monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / f"cache-{round_}"))        # another machine: downloads
        fetched = store.fetch("r", key)
        assert sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()) == sorted(listed | {SUCCESS_MARKER})


def test_a_recommit_replaces_the_attempt_and_gc_takes_abandoned_ones(s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced re-run's commit swaps the marker and deletes the files it replaced; an attempt
    no marker names (a crash after its upload) is a leftover until gc removes it."""
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    first = _commit(s3_store, "k", b"one")
    crashed = s3_store.root.child("r", "k", ".attempts", "0123456789abcdef", "model.bin")
    s3_store.s3.put_object(Bucket=s3_store.root.bucket, Key=crashed.key, Body=b"half")
    second = _commit(s3_store, "k", b"two")
    assert second["attempt"] != first["attempt"] and s3_store.marker("r", "k") == second and s3_store.verify("r", "k") == []
    assert not any(f"/{first['attempt']}/" in name for name in _all_objects(s3_store)), "the replaced attempt's files are deleted"
    [leftover] = s3_store.leftovers()
    assert (leftover.name, leftover.kind, leftover.size_bytes) == ("k/.attempts/0123456789abcdef", "abandoned attempt", 4)
    assert [item.size_bytes for item in s3_store.list_committed()] == [len(b"two") + 2], "sized by the attempt its marker names"
    s3_store.remove_leftover(leftover)
    assert list(s3_store.leftovers()) == [] and crashed.key not in _all_objects(s3_store)
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache2"))
    assert (s3_store.fetch("r", "k") / "sub" / "model.bin").read_bytes() == b"two"


def test_a_marker_written_before_attempts_is_read_at_the_key_root(s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    staging = _stage_output(s3_store, "k", b"old layout")
    record = build_record(staging, key="k", stage="merge", recipe="r", started=0.0, extra={})
    where = s3_store.root.child("r", "k")
    for entry in record["files"]:
        s3_store.s3.put_object(Bucket=where.bucket, Key=where.child(entry["path"]).key, Body=(staging / entry["path"]).read_bytes())
    s3_store.s3.put_object(Bucket=where.bucket, Key=where.child(SUCCESS_MARKER).key, Body=json.dumps(record).encode())
    assert s3_store.verify("r", "k") == [] and [item.size_bytes for item in s3_store.list_committed()] == [record["size_bytes"]]
    assert (s3_store.fetch("r", "k") / "sub" / "model.bin").read_bytes() == b"old layout"
    _commit(s3_store, "k", b"new layout")
    assert _all_objects(s3_store) == sorted([where.child(SUCCESS_MARKER).key] + [s3_store.files_location("r", "k", s3_store.marker("r", "k")).child(p).key
                                                                                 for p in ("config.json", "sub/model.bin")]), "the old root files are deleted"


@pytest.mark.parametrize("attempt", ["../../elsewhere", 7], ids=["path", "number"])
def test_a_marker_naming_no_attempt_id_is_broken(s3_store: S3Store, attempt: object) -> None:
    _commit(s3_store, "k")
    record = {**s3_store.marker("r", "k"), "attempt": attempt}
    _plant(s3_store, "r", "k", SUCCESS_MARKER, json.dumps(record).encode())
    assert not s3_store.is_committed("r", "k") and list(s3_store.list_committed()) == []
    [(_, key, reason)] = s3_store.broken_keys()
    assert key == "k" and reason == f"{SUCCESS_MARKER} names attempt {attempt!r}, not an attempt id"
    [leftover] = s3_store.leftovers()
    assert leftover.kind == "broken key"
    s3_store.remove_leftover(leftover)
    assert _all_objects(s3_store) == []


def test_artifacts_ls_of_a_bucket_leaves_a_broken_key_out_of_its_table(s3_store: S3Store, s3_env: str) -> None:
    from typer.testing import CliRunner

    from foundry.cli import app

    _commit(s3_store, "merge-good")
    _commit(s3_store, "merge-bad")
    _plant(s3_store, "r", "merge-bad", SUCCESS_MARKER, b'{"key": "merge-bad", "files": [')
    for args in (["artifacts", "ls"], ["artifacts", "ls", "r"]):
        result = CliRunner().invoke(app, [*args, "--store", s3_store.url])
        assert result.exit_code == 0, result.output
        assert "merge-good" in result.stdout and "merge-bad" not in result.stdout and "1 key(s)" in result.stdout
        assert result.stderr.startswith("broken key r/merge-bad: _SUCCESS.json is truncated or not JSON")


def test_a_key_recommitted_while_it_is_fetched_is_fetched_from_its_new_marker(s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced re-run replaces the key (deleting the old attempt) while another machine
    downloads it: that download finds its files gone, and fetches the new commit instead of
    calling the key damaged."""
    from foundry.store import s3 as s3_module

    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FOUNDRY_SCRATCH", str(tmp_path / "elsewhere"))
    _commit(s3_store, "k", b"one")
    real_download, calls = s3_module.download_files, []

    def download_after_a_recommit(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            with monkeypatch.context() as committer:        # the re-run's own machine
                committer.setenv("FOUNDRY_CACHE", str(tmp_path / "committer"))
                _commit(open_store(s3_store.url), "k", b"two")
        return real_download(*args, **kwargs)

    monkeypatch.setattr(s3_module, "download_files", download_after_a_recommit)
    monkeypatch.setenv("FOUNDRY_CACHE", str(tmp_path / "another-machine"))
    assert (s3_store.fetch("r", "k") / "sub" / "model.bin").read_bytes() == b"two" and len(calls) == 2
