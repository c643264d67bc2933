"""S3 transfers and errors against a real S3 HTTP endpoint on loopback (moto's server), with
real faults injected by a proxy in front of it (tests/s3_proxy.py): throttling, a server
that stops mid-upload, a bucket in another region. No S3 call is mocked."""

import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from foundry.errors import UserError
from foundry.s3 import client as s3client
from foundry.s3.transfer import MIB, Download, IntegrityError, TransferConfig, TransferError, Upload, _Window, download_files, upload_files
from foundry.store import SUCCESS_MARKER, build_record, open_store
from foundry.store.s3 import S3Store
from tests.s3_proxy import FaultyProxy

REPO = Path(__file__).resolve().parent.parent
SMALL_PARTS = TransferConfig(workers=4, part_size=5 * MIB, multipart_threshold=6 * MIB, attempts=4, backoff_seconds=0.01)


@pytest.fixture
def proxy(s3_env: str, monkeypatch: pytest.MonkeyPatch):
    """A proxy in front of the endpoint, made the endpoint; botocore's own retries off, so the
    faults reach Foundry's."""
    faulty = FaultyProxy(s3_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    yield faulty
    faulty.close()


def _files(folder: Path, sizes: dict[str, int]) -> dict[str, str]:
    digests = {}
    for index, (name, size) in enumerate(sizes.items()):
        data = hashlib.shake_256(f"{name}-{index}".encode()).digest(size) if size else b""
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- transfers -----------------------------------------------------------------------------

def test_round_trip_whole_and_multipart_with_sha256_checked(bucket: str, tmp_path: Path) -> None:
    sizes = {"empty.json": 0, "config.json": 1000, "onnx/model.onnx_data": 300_000, "model.safetensors": 13 * MIB + 17}
    digests = _files(tmp_path / "up", sizes)
    s3 = s3client.client()
    sent = upload_files(s3, bucket, [Upload(tmp_path / "up" / name, f"m/{name}", digests[name]) for name in sizes], SMALL_PARTS, progress=True)
    assert sent == {f"m/{name}": digest for name, digest in digests.items()}
    parts = s3.head_object(Bucket=bucket, Key="m/model.safetensors", PartNumber=1)
    assert parts.get("PartsCount") == 3, "a file over the threshold goes in 5 MiB parts"
    received = download_files(s3, bucket, [Download(f"m/{name}", tmp_path / "down" / name, size, digests[name]) for name, size in sizes.items()], SMALL_PARTS)
    assert received == sent
    assert all(_sha(tmp_path / "down" / name) == digests[name] for name in sizes)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_file_that_changed_since_it_was_hashed_is_refused(bucket: str, tmp_path: Path) -> None:
    digests = _files(tmp_path, {"a.bin": 1000, "big.bin": 7 * MIB})
    s3 = s3client.client()
    for name in digests:
        with pytest.raises(IntegrityError, match=f"{name}: sha256 of the bytes uploaded"):
            upload_files(s3, bucket, [Upload(tmp_path / name, name, "0" * 64)], SMALL_PARTS)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [], "the unfinished multipart upload was aborted"


def test_corrupted_or_truncated_downloads_are_refused(bucket: str, tmp_path: Path) -> None:
    digests = _files(tmp_path, {"a.bin": 1000, "big.bin": 7 * MIB})
    s3 = s3client.client()
    upload_files(s3, bucket, [Upload(tmp_path / name, name) for name in digests], SMALL_PARTS)
    with pytest.raises(IntegrityError, match=r"big.bin: sha256 .* \(corrupted\)"):
        download_files(s3, bucket, [Download("big.bin", tmp_path / "x", 7 * MIB, digests["a.bin"])], SMALL_PARTS)
    with pytest.raises(IntegrityError, match="a.bin: 1000 bytes arrived, 1001 expected"):
        download_files(s3, bucket, [Download("a.bin", tmp_path / "y", 1001, None)], SMALL_PARTS)


def test_throttling_is_retried_with_backoff(bucket: str, tmp_path: Path, proxy: FaultyProxy, caplog: pytest.LogCaptureFixture) -> None:
    digests = _files(tmp_path / "up", {"a.bin": 1000, "b.bin": 2000, "big.bin": 11 * MIB})
    s3 = s3client.client()
    proxy.slow_down(6)
    with caplog.at_level(logging.WARNING, logger="foundry.transfer"):
        upload_files(s3, bucket, [Upload(tmp_path / "up" / name, name, digest) for name, digest in digests.items()], SMALL_PARTS)
    assert sum("SlowDown" in record.getMessage() and "retrying" in record.getMessage() for record in caplog.records) == 6
    proxy.slow_down(3)
    download_files(s3, bucket, [Download(name, tmp_path / "down" / name, (tmp_path / "up" / name).stat().st_size, digest) for name, digest in digests.items()], SMALL_PARTS)
    assert all(_sha(tmp_path / "down" / name) == digest for name, digest in digests.items())


def test_throttling_that_never_stops_fails_naming_the_object(bucket: str, tmp_path: Path, proxy: FaultyProxy) -> None:
    _files(tmp_path, {"a.bin": 10})
    proxy.slow_down(100)
    with pytest.raises(TransferError, match=f"upload to s3://{bucket}/a.bin failed: ClientError.*SlowDown"):
        upload_files(s3client.client(), bucket, [Upload(tmp_path / "a.bin", "a.bin")], SMALL_PARTS)


def test_the_window_bounds_what_is_in_flight() -> None:
    running, peak, lock = [0], [0], threading.Lock()
    finished: list[int] = []

    def task(index: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01 * (index % 3))
        with lock:
            running[0] -= 1
        return index

    with ThreadPoolExecutor(8) as pool:
        window = _Window(pool, 3)
        for index in range(20):
            window.submit(lambda index=index: task(index), then=finished.append)
        window.drain()
    assert peak[0] <= 3 and finished == list(range(20)), "at most `size` in flight, results taken in order"


# --- an interrupted commit -----------------------------------------------------------------

def _stage(store: S3Store, digests_out: dict[str, str]) -> tuple[Path, dict]:
    staging = store.new_staging("r", "quantize-1")
    digests_out.update(_files(staging, {"config.json": 500, "onnx/model.onnx": 40_000, "onnx/model.onnx_data": 3 * MIB, "onnx/model.onnx_data_1": 3 * MIB}))
    return staging, build_record(staging, key="quantize-1", stage="quantize", recipe="r", started=0.0, extra={})


def _objects(bucket: str, prefix: str) -> dict[str, str]:
    s3 = s3client.client()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: hashlib.sha256(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()).hexdigest() for item in listed if not item["Key"].endswith(SUCCESS_MARKER)}


def test_a_commit_cut_off_mid_upload_leaves_nothing_committed_and_a_rerun_is_identical(bucket: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digests: dict[str, str] = {}
    reference = open_store(f"s3://{bucket}/reference")
    staging, record = _stage(reference, digests)
    reference.commit("r", "quantize-1", staging, record)

    faulty = FaultyProxy(s3_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    try:
        store = S3Store(s3client.parse(f"s3://{bucket}/run", "store"), config=SMALL_PARTS)
        staging, record = _stage(store, {})
        faulty.cut_after(4 * MIB)           # the endpoint stops with about half the bytes sent
        with pytest.raises(TransferError):
            store.commit("r", "quantize-1", staging, record)
        assert faulty.down
    finally:
        faulty.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    store = open_store(f"s3://{bucket}/run")
    assert not store.is_committed("r", "quantize-1") and list(store.list_committed()) == []
    assert [leftover.kind for leftover in store.leftovers()] in (["uncommitted key"], [])

    staging, record = _stage(store, {})     # the re-run: the same stage writes the same bytes
    store.commit("r", "quantize-1", staging, record)
    assert store.verify("r", "quantize-1") == []
    assert [leftover.kind for leftover in store.leftovers()] in (["abandoned attempt"], []), "the cut-off attempt, if any, is gc's"
    for leftover in store.leftovers():
        store.remove_leftover(leftover)
    rerun, committed = _committed_objects(store, bucket), _committed_objects(reference, bucket)
    assert rerun == committed and sorted(rerun) == sorted(digests)
    assert sorted(_objects(bucket, "run/")) == sorted(store.files_location("r", "quantize-1", store.marker("r", "quantize-1")).child(name).key for name in digests)


def _committed_objects(store: S3Store, bucket: str) -> dict[str, str]:
    """The sha256 of each file of the key's committed attempt, by its path in the key."""
    folder = store.files_location("r", "quantize-1", store.marker("r", "quantize-1") or {})
    return {key.removeprefix(folder.prefix): digest for key, digest in _objects(bucket, folder.prefix).items()}


def test_a_stage_killed_mid_upload_leaves_no_marker(bucket: str, s3_env: str, tmp_path: Path) -> None:
    """A real crash: the committing process is SIGKILLed while its upload is stalled."""
    faulty = FaultyProxy(s3_env)
    code = (
        "import sys; from pathlib import Path\n"
        "from foundry.store import open_store, build_record\n"
        "store = open_store(sys.argv[1]); staging = store.new_staging('r', 'k')\n"
        "(staging / 'big.bin').write_bytes(bytes(3 * 1024 * 1024)); (staging / 'small.json').write_text('{}')\n"
        "print('committing', flush=True)\n"
        "store.commit('r', 'k', staging, build_record(staging, key='k', stage='merge', recipe='r', started=0.0, extra={}))\n"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": faulty.url, "PYTHONPATH": str(REPO)}
    try:
        faulty.cut_after(MIB)
        process = subprocess.Popen([sys.executable, "-c", code, f"s3://{bucket}/store"], env=env, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stdout.readline().strip() == "committing"
        deadline = time.monotonic() + 30
        while not faulty.down and time.monotonic() < deadline:
            time.sleep(0.02)
        process.kill()
        process.wait(timeout=30)
    finally:
        faulty.close()
    store = open_store(f"s3://{bucket}/store")
    assert not store.is_committed("r", "k") and list(store.list_committed()) == []


# --- errors the user can fix: one line, endpoint and bucket named, nothing written ---------

def test_a_missing_bucket(s3_env: str) -> None:
    with pytest.raises(UserError) as error:
        open_store("s3://no-such-bucket/artifacts")
    assert str(error.value) == f"store s3://no-such-bucket/artifacts: endpoint {s3_env}, bucket no-such-bucket: the bucket does not exist; check the bucket name, or create it"


def test_refused_credentials(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)     # moto checks keys against its IAM: ours are unknown
    with pytest.raises(UserError, match=f"bucket {bucket}: credentials refused \\(InvalidAccessKeyId\\); check AWS_ACCESS_KEY_ID"):
        open_store(f"s3://{bucket}/artifacts")


def test_no_credentials_at_all(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="bucket b-1: no credentials found; set AWS_ACCESS_KEY_ID"):
        open_store("s3://b-1/x")


def test_an_unreachable_endpoint(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:              # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(UserError) as error:
        open_store("s3://models/x")
    assert str(error.value) == (f"store s3://models/x: endpoint http://127.0.0.1:{port}, bucket models: cannot reach the endpoint (connection refused); "
                                "check AWS_ENDPOINT_URL or FOUNDRY_S3_ENDPOINT and that the server is up")


@pytest.mark.parametrize(("status", "code"), [(400, "AuthorizationHeaderMalformed"), (301, "PermanentRedirect")])
def test_a_wrong_region(proxy: FaultyProxy, status: int, code: str) -> None:
    """moto serves every region from one endpoint and never refuses one, so the proxy answers as
    S3 does for a bucket in another region (the body and header of S3's real answer)."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>the region \'us-east-1\' is wrong; '
            f"expecting 'eu-west-3'</Message><Region>eu-west-3</Region></Error>").encode()
    proxy.respond(status, body, {"x-amz-bucket-region": "eu-west-3"})
    with pytest.raises(UserError, match="bucket models: the bucket is in region eu-west-3, not us-east-1; set AWS_REGION=eu-west-3"):
        open_store("s3://models/x")


def test_the_cli_says_it_in_one_line_with_exit_code_2(s3_env: str) -> None:
    result = subprocess.run([sys.executable, "-m", "foundry", "artifacts", "ls", "--store", "s3://no-such-bucket/x"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: store s3://no-such-bucket/x: endpoint {s3_env}, bucket no-such-bucket: the bucket does not exist; check the bucket name, or create it"]


def test_path_style_addressing_for_minio(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_S3_ADDRESSING", "path")
    assert s3client.client().meta.config.s3["addressing_style"] == "path"
    open_store(f"s3://{bucket}/x")
    monkeypatch.setenv("FOUNDRY_S3_ADDRESSING", "sideways")
    with pytest.raises(UserError, match="FOUNDRY_S3_ADDRESSING=sideways: expected one of auto, path, virtual"):
        s3client.client()


def test_foundry_s3_endpoint_wins_over_aws_endpoint_url(bucket: str, s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FOUNDRY_S3_ENDPOINT", s3_env)
    assert s3client.client().meta.endpoint_url == s3_env
    open_store(f"s3://{bucket}/x")
