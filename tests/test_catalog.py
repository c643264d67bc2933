"""models.json: reading, the pure merge, atomic rewrites and concurrent local writers."""

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from foundry import catalog
from foundry.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SEED = {
    "my-custom-agent": {
        "id": "my-model-v1-q4", "name": "My Custom Model", "size_mb": 1200, "urls": {"base": "/models/my-model-v1-q4/"},
        "metadata": {"fusion": {"method": "slerp", "sources": ["base/model-1", "base/model-2"], "created_by": "ORION Model Foundry"}},
    },
}


def entry(model_id: str) -> dict:
    return catalog.build_entry(
        model_id=model_id, name=None, size_mb=1.5, base=f"/models/{model_id}/", variants={}, default_variant=None,
        recipe_hash="h", fusion={"method": "linear", "sources": ["a", "b"]},
    )


def test_missing_catalog_is_empty(tmp_path):
    assert catalog.read(tmp_path / "models.json") == {}
    (tmp_path / "empty.json").write_text("  \n")
    assert catalog.read(tmp_path / "empty.json") == {}


def test_invalid_catalog_is_a_user_error_naming_the_file(tmp_path):
    path = tmp_path / "models.json"
    path.write_text('{"a": 1,')
    with pytest.raises(UserError, match=str(path).replace("\\", "\\\\")):
        catalog.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        catalog.read(path)
    with pytest.raises(UserError, match="models.json"):
        catalog.update(path, "k", {"id": "k"})
    assert path.read_text() == "[1, 2]", "an invalid catalogue is never overwritten"


def test_merge_entry_is_pure_and_keeps_everything_else():
    original = json.loads(json.dumps(SEED))
    merged = catalog.merge_entry(original, "dev", entry("dev"))
    assert original == SEED, "the input is not modified"
    assert list(merged) == ["my-custom-agent", "dev"] and merged["my-custom-agent"] == SEED["my-custom-agent"]
    replaced = catalog.merge_entry({"a": 1, "dev": {"old": True}, "z": 2}, "dev", {"new": True})
    assert list(replaced) == ["a", "dev", "z"] and replaced["dev"] == {"new": True}
    assert catalog.remove_entry(replaced, "dev") == {"a": 1, "z": 2}
    with pytest.raises(UserError):
        catalog.merge_entry({}, "", {})


def test_entry_shape_matches_what_clients_read():
    value = entry("orion-dev-polyglot-v1-q4")
    assert value["id"] == value["name"] == "orion-dev-polyglot-v1-q4"
    assert value["urls"] == {"base": "/models/orion-dev-polyglot-v1-q4/"}
    assert value["metadata"]["fusion"] == {"method": "linear", "sources": ["a", "b"], "created_by": value["metadata"]["fusion"]["created_by"]}
    assert value["metadata"]["fusion"]["created_by"].startswith("Foundry ")
    assert value["published"].endswith("Z") and value["recipe_hash"] == "h"


def test_update_rewrites_atomically_and_keeps_other_entries(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps(SEED))
    os.chmod(path, 0o644)
    written = catalog.update(path, "dev", entry("dev"))
    assert json.loads(path.read_text()) == written
    assert written["my-custom-agent"] == SEED["my-custom-agent"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, "a web server can still read it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.json", "models.json.lock"], "no temporary file left"
    assert catalog.remove(path, "dev") is True and catalog.remove(path, "dev") is False
    assert json.loads(path.read_text()) == SEED


def test_twenty_threads_publishing_different_keys_all_end_up_present(tmp_path):
    path = tmp_path / "models.json"
    catalog.write(path, SEED)
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def publish(index: int) -> None:
        try:
            barrier.wait()
            for round_ in range(5):
                catalog.update(path, f"model-{index}", {**entry(f"model-{index}"), "round": round_})
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=publish, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = json.loads(path.read_text())
    assert sorted(final) == sorted(["my-custom-agent", *(f"model-{index}" for index in range(20))])
    assert all(final[f"model-{index}"]["round"] == 4 for index in range(20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.json", "models.json.lock"]


def test_processes_publishing_concurrently_all_end_up_present(tmp_path):
    path = tmp_path / "models.json"
    code = (
        "import sys; from pathlib import Path; from foundry import catalog\n"
        "for i in range(10):\n"
        "    catalog.update(Path(sys.argv[1]), f'p{sys.argv[2]}-{i}', {'id': sys.argv[2], 'i': i})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", code, str(path), str(index)], env=env) for index in range(8)]
    assert [process.wait(timeout=60) for process in processes] == [0] * 8
    final = json.loads(path.read_text())
    assert sorted(final) == sorted(f"p{index}-{i}" for index in range(8) for i in range(10))


def test_locations():
    assert catalog.local_path("/srv/www/models") == Path("/srv/www/models")
    assert catalog.local_path("file:///srv/www/models/") == Path("/srv/www/models")
    assert catalog.local_path("relative/models") == Path("relative/models")
    with pytest.raises(UserError, match="an s3:// URL where a local path is needed"):
        catalog.local_path("s3://bucket/models/")
    with pytest.raises(UserError, match="unsupported scheme"):
        catalog.local_path("https://example.com/models/")
    with pytest.raises(UserError, match="local path"):
        catalog.local_path("file://otherhost/models")


def test_base_url():
    assert catalog.base_url(Path("/srv/public/models"), Path("/srv/public/models/models.json"), "m-q4") == "/models/m-q4/"
    assert catalog.base_url(Path("/srv/public/models"), Path("/srv/public/catalog/models.json"), "m-q4") == "/models/m-q4/"
    assert catalog.base_url(Path("/srv/www/llm"), Path("/srv/www/llm/models.json"), "m-q4") == "m-q4/"
    assert catalog.base_url(Path("/srv/www/llm"), Path("/srv/www/models.json"), "m-q4") == "llm/m-q4/"
    assert catalog.base_url(Path("/srv/www/llm"), Path("/srv/www/api/models.json"), "m q4") == "../llm/m%20q4/"


@pytest.mark.parametrize("bad", ["", "  ", "a/b", "../x", "..", ".x", "x..y", "a\\b", "nul\x00", None, 3])
def test_validate_id_refuses_escapes(bad):
    with pytest.raises(UserError):
        catalog.validate_id(bad)


def test_validate_id_accepts_ordinary_ids():
    for good in ("orion-dev-polyglot-v1-q4", "Model_1.5B", "x.y"):
        assert catalog.validate_id(good) == good
