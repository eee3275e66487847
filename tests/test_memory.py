from __future__ import annotations

import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from comfy_mcp import memory
from comfy_mcp.errors import ComfyError
from comfy_mcp.memory import (
    GenerationNotFound,
    GenerationStore,
    HistoryError,
    HistoryUnreadable,
    StoredFile,
    default_db_path,
    describe_changes,
    graph_diff,
    param_diff,
)

GRAPH: dict[str, Any] = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "cfg": 7.0, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "generations.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Any:
    with GenerationStore.open(db_path) as opened:
        yield opened


def graph_with(**inputs: Any) -> dict[str, Any]:
    graph = {node: {**spec, "inputs": dict(spec["inputs"])} for node, spec in GRAPH.items()}
    graph["3"]["inputs"].update(inputs)
    return graph


def saved_file(path: Path, name: str = "cat_00001_.png") -> StoredFile:
    return StoredFile("9", name, "portraits", "output", "image", path, 512, 768)


# -- location -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        pytest.param("linux", {}, "home/.local/share/comfy-mcp", id="linux-default"),
        pytest.param("linux", {"XDG_DATA_HOME": "/xdg"}, "/xdg/comfy-mcp", id="linux-xdg"),
        pytest.param("linux", {"XDG_DATA_HOME": "rel"}, "home/.local/share/comfy-mcp",
                     id="linux-relative-xdg-ignored"),
        pytest.param("darwin", {"XDG_DATA_HOME": "/xdg"},
                     "home/Library/Application Support/comfy-mcp", id="macos"),
        pytest.param("win32", {"LOCALAPPDATA": "/appdata"}, "/appdata/comfy-mcp", id="windows"),
        pytest.param("win32", {}, "home/AppData/Local/comfy-mcp", id="windows-no-env"),
    ],
)
def test_default_db_path(platform: str, environ: dict[str, str], expected: str) -> None:
    path = default_db_path(environ, platform=platform, home=Path("home"))
    assert path == Path(expected) / "generations.sqlite3"


def test_db_path_override(tmp_path: Path) -> None:
    environ = {"COMFY_MCP_DB": "~/elsewhere/h.db", "XDG_DATA_HOME": "/xdg"}
    assert default_db_path(environ) == Path.home() / "elsewhere" / "h.db"


# -- records ------------------------------------------------------------------------------


def test_add_and_get(store: GenerationStore, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"png")
    added = store.add(
        graph=GRAPH, params={"prompt": "a cat", "seed": 7, "checkpoint": "xl.safetensors"},
        template="txt2img", prompt_id="p-1", backend_url="http://127.0.0.1:8188",
        files=[saved_file(image)], elapsed_seconds=3.5, execution_seconds=2.25,
        note="too dark",
    )
    assert added.id == 1 and added.label == "#1"
    got = store.get(1)
    assert got == added
    assert got.params == {"prompt": "a cat", "seed": 7, "checkpoint": "xl.safetensors"}
    assert (got.seed, got.checkpoint) == (7, "xl.safetensors")
    assert got.graph == GRAPH
    assert (got.kind, got.status, got.error, got.parent_id) == ("new", "success", None, None)
    assert (got.elapsed_seconds, got.execution_seconds, got.note) == (3.5, 2.25, "too dark")
    assert got.created_at.tzinfo is not None
    (file,) = got.files
    assert (file.filename, file.subfolder, file.width, file.height) == (
        "cat_00001_.png", "portraits", 512, 768)
    assert file.path == image and file.exists


def test_seed_and_checkpoint_from_graph(store: GenerationStore) -> None:
    record = store.add(graph=GRAPH, params={"prompt": "raw"})
    assert (record.seed, record.checkpoint) == (42, "sd15.safetensors")
    raw = store.add(graph={"1": {"class_type": "Note", "inputs": {}}})
    assert (raw.seed, raw.checkpoint, raw.template, raw.params) == (None, None, None, {})


def test_seed_past_signed_64_bits(store: GenerationStore) -> None:
    seed = 2**64 - 1  # ComfyUI's KSampler accepts up to 0xffffffffffffffff
    record = store.add(graph=graph_with(seed=seed), params={"seed": seed})
    assert record.seed == seed == record.params["seed"]
    assert record.graph["3"]["inputs"]["seed"] == seed


def test_ids_never_reused_across_reopen(db_path: Path) -> None:
    with GenerationStore.open(db_path) as store:
        assert [store.add(graph=GRAPH).id for _ in range(3)] == [1, 2, 3]
    with GenerationStore.open(db_path) as store:
        assert store.add(graph=GRAPH).id == 4


def test_survives_restart(db_path: Path, tmp_path: Path) -> None:
    kept, gone = tmp_path / "kept.png", tmp_path / "gone.png"
    kept.write_bytes(b"1")
    gone.write_bytes(b"2")
    with GenerationStore.open(db_path) as store:
        first = store.add(graph=GRAPH, params={"seed": 1}, prompt_id="p-1",
                          files=[saved_file(kept, "a.png"), saved_file(gone, "b.png")])
        second = store.add(graph=graph_with(cfg=9.0), params={"seed": 1}, parent_id=first.id,
                           kind="refine")
        store.set_note(second.id, "better")
    gone.unlink()
    with GenerationStore.open(db_path) as store:
        again = store.get(first.id)
        assert again.graph == GRAPH and again.prompt_id == "p-1"
        assert [(f.path, f.exists) for f in again.files] == [(kept, True), (gone, False)]
        assert again.missing_files == [again.files[1]]
        assert store.get(second.id).note == "better"
        assert store.lineage(first.id).descendants[0].record.id == second.id


def test_unsaved_file_is_not_missing(store: GenerationStore) -> None:
    failed = StoredFile("9", "x.png", error="HTTP 404")
    record = store.add(graph=GRAPH, files=[failed])
    assert record.files[0].path is None and not record.files[0].exists
    assert record.missing_files == [] and record.files[0].error == "HTTP 404"


def test_add_generation_from_service(store: GenerationStore, tmp_path: Path) -> None:
    from comfy_mcp.jobs import OutputFile
    from comfy_mcp.service import Generation, SavedFile

    path = tmp_path / "out.png"
    path.write_bytes(b"x")
    output = OutputFile("9", "ComfyUI_00001_.png", "", "output", "image")
    gen = Generation("p-9", "txt2img", {"prompt": "fox", "seed": 3},
                     [SavedFile(output, path, 64, 32)], [], execution_seconds=1.5,
                     elapsed_seconds=2.0)
    record = store.add_generation(gen, graph=GRAPH, backend_url="http://127.0.0.1:8188")
    assert (record.prompt_id, record.template, record.seed) == ("p-9", "txt2img", 3)
    assert (record.elapsed_seconds, record.execution_seconds) == (2.0, 1.5)
    assert record.files[0] == StoredFile("9", "ComfyUI_00001_.png", "", "output", "image",
                                         path, 64, 32, None, exists=True)


def test_get_unknown_id(store: GenerationStore) -> None:
    with pytest.raises(GenerationNotFound, match=r"#5.*history is empty.*list"):
        store.get(5)
    store.add(graph=GRAPH)
    with pytest.raises(LookupError, match=r"no generation #5 .*up to #1"):
        store.get(5)
    with pytest.raises(ComfyError):  # so the server shows it as a tool error
        store.get(5)


def test_parent_must_exist(store: GenerationStore) -> None:
    with pytest.raises(GenerationNotFound, match="#3"):
        store.add(graph=GRAPH, parent_id=3, kind="vary")
    assert store.count() == 0


@pytest.mark.parametrize(("field", "value"), [("kind", "remix"), ("status", "ok")])
def test_bad_choice(store: GenerationStore, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        store.add(graph=GRAPH, **{field: value})


def test_by_prompt_id(store: GenerationStore) -> None:
    store.add(graph=GRAPH, prompt_id="a")
    newer = store.add(graph=GRAPH, prompt_id="a")
    assert store.by_prompt_id("a") == newer
    assert store.by_prompt_id("nope") is None


def test_recent(store: GenerationStore) -> None:
    for _ in range(5):
        store.add(graph=GRAPH)
    assert [r.id for r in store.recent()] == [5, 4, 3, 2, 1]
    assert [r.id for r in store.recent(limit=2, offset=1)] == [4, 3]
    assert store.recent(offset=10) == []
    with pytest.raises(ValueError, match="limit"):
        store.recent(limit=0)


def test_update_result(store: GenerationStore, tmp_path: Path) -> None:
    running = store.add(graph=GRAPH, prompt_id="p", status="still_running",
                        error="still running after 600 s")
    done = store.update_result(running.id, status="success",
                               files=[saved_file(tmp_path / "late.png")],
                               elapsed_seconds=700.0, execution_seconds=650.0)
    assert (done.status, done.error, done.elapsed_seconds) == ("success", None, 700.0)
    assert done.files[0].path == tmp_path / "late.png"
    failed = store.update_result(running.id, status="failed", error="OOM")
    assert (failed.status, failed.error, len(failed.files)) == ("failed", "OOM", 1)
    with pytest.raises(GenerationNotFound):
        store.update_result(99, status="cancelled")


def test_set_note(store: GenerationStore) -> None:
    record = store.add(graph=GRAPH)
    assert store.set_note(record.id, "  sky too flat  ").note == "sky too flat"
    assert store.set_note(record.id, "").note is None
    with pytest.raises(GenerationNotFound, match="#2"):
        store.set_note(2, "x")


def test_unreadable_row_values(store: GenerationStore, db_path: Path) -> None:
    record = store.add(graph=GRAPH, params={"a": 1})
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE generations SET params = 'not json', files = '{}', "
                   "created_at = 'yesterday' WHERE id = ?", (record.id,))
    db.close()
    got = store.get(record.id)
    assert (got.params, got.files, got.graph) == ({}, (), GRAPH)


def test_closed_store(db_path: Path) -> None:
    store = GenerationStore.open(db_path)
    store.close()
    store.close()
    with pytest.raises(HistoryError, match="closed"):
        store.recent()


# -- lineage ------------------------------------------------------------------------------


def build_tree(store: GenerationStore) -> None:
    """#1 -> #2 -> #3 (graph-only change), #2 -> #5; #1 -> #4; #6 unrelated."""
    base = {"prompt": "a fox", "cfg": 7, "seed": 1}
    store.add(graph=GRAPH, params=base)
    store.add(graph=GRAPH, params={**base, "cfg": 9}, parent_id=1, kind="refine")
    store.add(graph=graph_with(denoise=0.5), params={**base, "cfg": 9}, parent_id=2,
              kind="img2img")
    store.add(graph=GRAPH, params={**base, "seed": 2}, parent_id=1, kind="vary")
    store.add(graph=GRAPH, params={**base, "cfg": 9, "steps": 30}, parent_id=2)
    store.add(graph=GRAPH, params=base)


def test_lineage_of_middle(store: GenerationStore) -> None:
    build_tree(store)
    lineage = store.lineage(2)
    assert [e.record.id for e in lineage.ancestors] == [1]
    assert lineage.focus.record.id == 2 and lineage.focus.changes == {"cfg": (7, 9)}
    assert [(e.record.id, e.depth) for e in lineage.descendants] == [(3, 2), (5, 2)]
    child3, child5 = lineage.descendants
    assert child3.changes == {} and child3.graph_changes == {"3.denoise": (None, 0.5)}
    assert child5.changes == {"steps": (None, 30)}
    assert lineage.ancestors[0].summary == "original"
    assert not lineage.truncated


def test_lineage_of_root_and_leaf(store: GenerationStore) -> None:
    build_tree(store)
    root = store.lineage(1)
    assert root.ancestors == ()
    assert [e.record.id for e in root.descendants] == [2, 3, 5, 4]  # tree order
    assert [e.depth for e in root.descendants] == [1, 2, 2, 1]
    assert root.descendants[-1].changes == {"seed": (1, 2)}
    leaf = store.lineage(3)
    assert [e.record.id for e in leaf.entries] == [1, 2, 3]
    assert store.lineage(6).entries == (store.lineage(6).focus,)
    with pytest.raises(GenerationNotFound):
        store.lineage(7)


def test_lineage_truncated(store: GenerationStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "LINEAGE_LIMIT", 3)
    parent = None
    for step in range(10):
        parent = store.add(graph=GRAPH, params={"step": step}, parent_id=parent).id
    middle = store.lineage(5)
    assert [e.record.id for e in middle.ancestors] == [2, 3, 4]
    assert [e.record.id for e in middle.descendants] == [6, 7, 8]
    assert middle.truncated
    assert store.lineage(4).truncated  # 6 descendants > 3


# -- diffs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param({"cfg": 7}, {"cfg": 7}, {}, id="same"),
        pytest.param({"cfg": 7}, {"cfg": 8}, {"cfg": (7, 8)}, id="changed"),
        pytest.param({}, {"steps": 30}, {"steps": (None, 30)}, id="added"),
        pytest.param({"seed": 1}, {}, {"seed": (1, None)}, id="removed"),
        pytest.param({"cfg": 7}, {"cfg": 7.0}, {}, id="int-equals-float"),
        pytest.param({"a": [1]}, {"a": [1, 2]}, {"a": ([1], [1, 2])}, id="list"),
    ],
)
def test_param_diff(a: dict, b: dict, expected: dict) -> None:
    assert param_diff(a, b) == expected


def test_graph_diff() -> None:
    changed = graph_with(cfg=8.0)
    changed["4"] = {"class_type": "UNETLoader", "inputs": {"ckpt_name": "sd15.safetensors"}}
    del changed["9"]
    changed["10"] = {"class_type": "PreviewImage", "inputs": {}}
    assert graph_diff(GRAPH, changed) == {
        "3.cfg": (7.0, 8.0),
        "4.class_type": ("CheckpointLoaderSimple", "UNETLoader"),
        "9": ("SaveImage", None),
        "10": (None, "PreviewImage"),
    }
    assert graph_diff(GRAPH, GRAPH) == {}


def test_describe_changes() -> None:
    text = describe_changes({"cfg": (7, 9), "prompt": ("a", "b" * 100)},
                            {"3.denoise": (None, 0.5)})
    assert text.startswith("cfg: 7 -> 9; prompt: 'a' -> 'bbb")
    assert "...; graph 3.denoise: (none) -> 0.5" in text
    assert describe_changes({}) == "no changes"


# -- concurrency --------------------------------------------------------------------------


def test_threads_add_concurrently(store: GenerationStore) -> None:
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        try:
            for i in range(50):
                record = store.add(graph=GRAPH, params={"worker": number, "i": i})
                store.get(record.id)
                with lock:
                    ids.append(record.id)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 400
    assert store.count() == 400
    seen = {(r.params["worker"], r.params["i"]) for r in store.recent(limit=500)}
    assert seen == {(n, i) for n in range(8) for i in range(50)}


def test_two_stores_share_a_file(db_path: Path) -> None:
    """Two comfy-mcp processes (here: two connections) writing the same history."""
    first, second = GenerationStore.open(db_path), GenerationStore.open(db_path)
    ids: list[int] = []

    def worker(store: GenerationStore) -> None:
        ids.extend(store.add(graph=GRAPH).id for _ in range(50))

    threads = [threading.Thread(target=worker, args=(s,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 100 and first.count() == second.count() == 100
    first.close()
    second.close()


# -- the file -----------------------------------------------------------------------------


def test_wal_and_schema_version(store: GenerationStore, db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == memory.SCHEMA_VERSION
        assert db.execute("PRAGMA application_id").fetchone()[0] == memory.APPLICATION_ID
    finally:
        db.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_file_is_private(store: GenerationStore, db_path: Path) -> None:
    assert db_path.stat().st_mode & 0o077 == 0


def test_corrupt_file(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(HistoryUnreadable) as caught:
        GenerationStore.open(db_path)
    message = str(caught.value)
    assert str(db_path) in message
    assert "not a readable SQLite database" in message
    assert "Move the file aside" in message and "COMFY_MCP_DB" in message
    assert caught.value.path == db_path


def test_truncated_file(db_path: Path) -> None:
    with GenerationStore.open(db_path) as store:
        for _ in range(20):
            store.add(graph=GRAPH, params={"prompt": "x" * 500})
    db_path.write_bytes(db_path.read_bytes()[:1500])  # a header and half a page
    for suffix in ("-wal", "-shm"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
    with pytest.raises(HistoryError, match="Move the file aside|could not use") as caught:
        with GenerationStore.open(db_path) as store:
            store.recent()
    assert str(db_path) in str(caught.value)


def test_path_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(HistoryUnreadable, match="cannot be opened.*COMFY_MCP_DB"):
        GenerationStore.open(tmp_path)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(HistoryUnreadable, match="cannot be opened"):
        GenerationStore.open(locked / "sub" / "h.sqlite3")


def test_newer_schema(db_path: Path) -> None:
    GenerationStore.open(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {memory.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(HistoryUnreadable, match="newer comfy-mcp.*Upgrade comfy-mcp"):
        GenerationStore.open(db_path)


def test_other_programs_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    with pytest.raises(HistoryUnreadable, match="another program"):
        GenerationStore.open(db_path)
    with sqlite3.connect(db_path) as db:
        tables = db.execute("SELECT name FROM sqlite_schema WHERE type='table'").fetchall()
    db.close()
    assert tables == [("notes",)]


def test_migration_runs_once_and_keeps_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with GenerationStore.open(db_path) as store:
        store.add(graph=GRAPH, params={"prompt": "kept"})
    extra = ("ALTER TABLE generations ADD COLUMN rating INTEGER",
             "CREATE INDEX generations_status ON generations (status)")
    monkeypatch.setattr(memory, "_MIGRATIONS", (*memory._MIGRATIONS, extra))
    monkeypatch.setattr(memory, "SCHEMA_VERSION", 2)
    for _ in range(2):  # the second open must not run the migration again
        with GenerationStore.open(db_path) as store:
            assert store.get(1).params == {"prompt": "kept"}
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
