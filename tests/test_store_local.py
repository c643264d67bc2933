"""The local store's commit discipline: nothing is done until its marker is written, last."""

import json
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.store import SUCCESS_MARKER, build_record, open_store, resolve_store_url


def _stage_output(store, key: str, content: bytes = b"weights") -> Path:
    staging = store.new_staging("r", key)
    (staging / "sub").mkdir()
    (staging / "sub" / "model.bin").write_bytes(content)
    (staging / "config.json").write_text("{}")
    return staging


def test_commit_writes_files_then_marker(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    staging = _stage_output(store, "merge-1")
    assert not store.is_committed("r", "merge-1")
    record = build_record(staging, key="merge-1", stage="merge", recipe="r", started=0.0, extra={})
    store.commit("r", "merge-1", staging, record)
    marker = store.marker("r", "merge-1")
    assert marker is not None and marker["size_bytes"] == len(b"weights") + 2
    assert sorted(entry["path"] for entry in marker["files"]) == ["config.json", "sub/model.bin"]
    assert not staging.exists()
    assert [k.key for k in store.list_committed("r")] == ["merge-1"]


def test_uncommitted_key_is_garbage_and_is_replaced(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    crashed = tmp_path / "r" / "merge-1"
    crashed.mkdir(parents=True)
    (crashed / "half-written.bin").write_bytes(b"\0" * 10)
    assert not store.is_committed("r", "merge-1")
    assert list(store.list_committed()) == []
    staging = _stage_output(store, "merge-1")
    store.commit("r", "merge-1", staging, build_record(staging, key="merge-1", stage="merge", recipe="r", started=0.0, extra={}))
    assert not (crashed / "half-written.bin").exists()
    assert (crashed / SUCCESS_MARKER).exists()


def test_discard_unmarks_before_removing(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    staging = _stage_output(store, "k")
    store.commit("r", "k", staging, build_record(staging, key="k", stage="merge", recipe="r", started=0.0, extra={}))
    store.discard("r", "k")
    assert not store.is_committed("r", "k") and not (tmp_path / "r" / "k").exists()


def test_marker_is_whole_json(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    staging = _stage_output(store, "k")
    store.commit("r", "k", staging, build_record(staging, key="k", stage="merge", recipe="r", started=0.0, extra={"result": {"a": 1}}))
    assert json.loads((tmp_path / "r" / "k" / SUCCESS_MARKER).read_text())["result"] == {"a": 1}
    assert not list((tmp_path / "r" / "k").glob(".*.tmp"))


def test_store_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_STORE", "/from/env")
    assert resolve_store_url("/from/flag") == "/from/flag"
    assert resolve_store_url(None) == "/from/env"
    monkeypatch.delenv("FOUNDRY_STORE")
    assert resolve_store_url(None) == "./.foundry/store"


def test_unsupported_scheme_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unsupported scheme"):
        open_store("gs://bucket/x")
