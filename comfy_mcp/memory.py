"""A local history of every generation, kept in one SQLite file.

Each generation gets a short id that people can say ("#3"), remembers what it was made
from (its parent, the template, the parameters and the exact graph sent to ComfyUI) and
what came back (files, timings, status), plus a note the assistant may attach. The
history lets an assistant vary an earlier result by id, show how a picture evolved, and
re-run a generation exactly after comfy-mcp or ComfyUI restarted.

One ``GenerationStore`` holds one connection guarded by a lock: every method is short
and safe to call from several threads (``anyio.to_thread.run_sync``). The file uses WAL
mode and a busy timeout, so two comfy-mcp processes may share it.

The schema version lives in ``PRAGMA user_version``; ``_MIGRATIONS[n]`` upgrades a file
from version ``n`` to ``n + 1``. ``PRAGMA application_id`` marks the file as ours, so a
stray ``COMFY_MCP_DB`` never writes tables into another program's database.

Errors, all ``ComfyError``::

    HistoryError            the history could not be read or written
      HistoryUnreadable     the file is damaged, someone else's, or from a newer comfy-mcp
      GenerationNotFound    no generation has this id (also a ``LookupError``)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from comfy_mcp.errors import ComfyError

__all__ = [
    "DB_FILENAME",
    "KINDS",
    "SCHEMA_VERSION",
    "STATUSES",
    "GenerationNotFound",
    "GenerationRecord",
    "GenerationStore",
    "HistoryError",
    "HistoryUnreadable",
    "Lineage",
    "LineageEntry",
    "StoredFile",
    "default_db_path",
    "describe_changes",
    "graph_diff",
    "param_diff",
]

logger = logging.getLogger(__name__)

Kind = Literal["new", "refine", "vary", "img2img", "rerun"]
Status = Literal["success", "failed", "still_running", "cancelled"]
Diff = dict[str, tuple[Any, Any]]

KINDS: tuple[str, ...] = ("new", "refine", "vary", "img2img", "rerun")
STATUSES: tuple[str, ...] = ("success", "failed", "still_running", "cancelled")
DB_FILENAME = "generations.sqlite3"
APP_DIR = "comfy-mcp"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x436F6D66  # "Comf": marks the file as a comfy-mcp history
LINEAGE_LIMIT = 500

_BUSY_SECONDS = 5.0
_SHOWN_VALUE_CHARS = 60

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        """
        CREATE TABLE generations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            parent_id INTEGER REFERENCES generations(id) ON DELETE SET NULL,
            created_at TEXT NOT NULL,
            kind TEXT NOT NULL,
            template TEXT,
            params TEXT NOT NULL,
            seed TEXT, -- text: ComfyUI seeds reach 2**64 - 1, past SQLite's integers
            checkpoint TEXT,
            graph TEXT NOT NULL,
            prompt_id TEXT,
            backend_url TEXT,
            files TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            elapsed_seconds REAL,
            execution_seconds REAL,
            note TEXT
        )
        """,
        "CREATE INDEX generations_parent ON generations (parent_id)",
        "CREATE INDEX generations_prompt ON generations (prompt_id)",
        "CREATE INDEX generations_seed ON generations (seed)",
        "CREATE INDEX generations_checkpoint ON generations (checkpoint)",
    ),
)


# -- errors -----------------------------------------------------------------------------


class HistoryError(ComfyError):
    """Raised when the generation history cannot be read or written."""


class HistoryUnreadable(HistoryError):
    """Raised when the history file is damaged, another program's, or from a newer version."""

    def __init__(self, path: Path, reason: str, hint: str = "") -> None:
        self.path = path
        self.reason = reason
        hint = hint or (
            f"Move the file aside (for example rename it to {path.name}.broken) and "
            "comfy-mcp starts a new, empty history there, or set COMFY_MCP_DB to another file"
        )
        super().__init__(f"cannot use the generation history {path}: {reason}. {hint}.")


class GenerationNotFound(HistoryError, LookupError):
    """Raised when no recorded generation has the id asked for."""

    def __init__(self, generation_id: int, newest: int | None = None) -> None:
        self.generation_id = generation_id
        if newest is None:
            known = "the history is empty"
        else:
            known = f"ids run up to #{newest}"
        super().__init__(
            f"no generation #{generation_id} in the history ({known}); list the recent "
            "generations to see which ids exist"
        )


# -- records ----------------------------------------------------------------------------


class _OutputLike(Protocol):
    node_id: str
    filename: str
    subfolder: str
    type: str
    media: str


class SavedLike(Protocol):
    """What ``service.SavedFile`` offers; kept as a protocol to avoid importing it."""

    output: _OutputLike
    path: Path | None
    width: int | None
    height: int | None
    error: str | None


class GenerationLike(Protocol):
    """What ``service.Generation`` offers to ``GenerationStore.add_generation``."""

    prompt_id: str
    template: str | None
    values: dict[str, Any]
    files: list[Any]
    execution_seconds: float | None
    elapsed_seconds: float


@dataclass(frozen=True)
class StoredFile:
    """One output file: ComfyUI's name for it and where our copy was saved.

    ``exists`` is looked up on disk each time a record is read, never stored.
    """

    node_id: str
    filename: str
    subfolder: str = ""
    type: str = "output"
    media: str = "image"
    path: Path | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    exists: bool = False

    @classmethod
    def from_saved(cls, saved: SavedLike) -> StoredFile:
        out = saved.output
        return cls(out.node_id, out.filename, out.subfolder, out.type, out.media,
                   saved.path, saved.width, saved.height, saved.error)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "filename": self.filename, "subfolder": self.subfolder,
            "type": self.type, "media": self.media,
            "path": None if self.path is None else str(self.path),
            "width": self.width, "height": self.height, "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredFile:
        path = Path(data["path"]) if isinstance(data.get("path"), str) else None
        return cls(
            node_id=str(data.get("node_id", "")), filename=str(data.get("filename", "")),
            subfolder=str(data.get("subfolder") or ""), type=str(data.get("type") or "output"),
            media=str(data.get("media") or "file"), path=path,
            width=_int_or_none(data.get("width")), height=_int_or_none(data.get("height")),
            error=data.get("error") if isinstance(data.get("error"), str) else None,
            exists=_is_file(path),
        )


@dataclass(frozen=True)
class GenerationRecord:
    """One recorded generation, as stored."""

    id: int
    parent_id: int | None
    created_at: datetime
    kind: str
    template: str | None
    params: dict[str, Any]
    seed: int | None
    checkpoint: str | None
    graph: dict[str, Any]
    prompt_id: str | None
    backend_url: str | None
    files: tuple[StoredFile, ...]
    status: str
    error: str | None
    elapsed_seconds: float | None
    execution_seconds: float | None
    note: str | None

    @property
    def label(self) -> str:
        return f"#{self.id}"

    @property
    def missing_files(self) -> list[StoredFile]:
        """Files that were saved once but are no longer on disk."""
        return [f for f in self.files if f.path is not None and not f.exists]


@dataclass(frozen=True)
class LineageEntry:
    """A generation in a lineage, with what changed since its parent.

    ``changes`` is the parameter diff from the parent (empty for the oldest shown);
    ``graph_changes`` is filled only when the parameters are equal but the graphs are not.
    ``depth`` counts generations from the oldest one shown (0).
    """

    record: GenerationRecord
    depth: int
    changes: Diff = field(default_factory=dict)
    graph_changes: Diff = field(default_factory=dict)

    @property
    def summary(self) -> str:
        if self.record.parent_id is None:
            return "original"
        return describe_changes(self.changes, self.graph_changes)


@dataclass(frozen=True)
class Lineage:
    """A generation with all its ancestors and all its descendants.

    ``ancestors`` run from the root down to the parent; ``descendants`` are in tree order
    (each child right after its parent, siblings by id). ``truncated`` is set when more
    than ``LINEAGE_LIMIT`` generations on either side were left out.
    """

    focus: LineageEntry
    ancestors: tuple[LineageEntry, ...]
    descendants: tuple[LineageEntry, ...]
    truncated: bool = False

    @property
    def entries(self) -> tuple[LineageEntry, ...]:
        return (*self.ancestors, self.focus, *self.descendants)


# -- diffs ------------------------------------------------------------------------------


def param_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> Diff:
    """Parameters that differ from ``a`` to ``b``: name -> (old, new); absent is ``None``."""
    names = list(a) + [name for name in b if name not in a]
    return {name: (a.get(name), b.get(name)) for name in names if a.get(name) != b.get(name)}


def graph_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> Diff:
    """Node-level differences between two API-format graphs.

    Keys are ``"<node>"`` for a node added or removed (values are class types),
    ``"<node>.class_type"`` and ``"<node>.<input>"`` for changed nodes.
    """
    diff: Diff = {}
    for node_id in list(a) + [n for n in b if n not in a]:
        old, new = a.get(node_id), b.get(node_id)
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            if old != new:
                diff[str(node_id)] = (_class_of(old), _class_of(new))
            continue
        if old.get("class_type") != new.get("class_type"):
            diff[f"{node_id}.class_type"] = (old.get("class_type"), new.get("class_type"))
        old_inputs, new_inputs = old.get("inputs") or {}, new.get("inputs") or {}
        for name, change in param_diff(old_inputs, new_inputs).items():
            diff[f"{node_id}.{name}"] = change
    return diff


def describe_changes(changes: Diff, graph_changes: Diff | None = None) -> str:
    """One line such as ``cfg: 7 -> 9; prompt: 'a fox' -> 'a red fox'``."""
    parts = [f"{name}: {_shown(old)} -> {_shown(new)}" for name, (old, new) in changes.items()]
    parts += [f"graph {name}: {_shown(old)} -> {_shown(new)}"
              for name, (old, new) in (graph_changes or {}).items()]
    return "; ".join(parts) or "no changes"


def _class_of(node: Any) -> Any:
    return node.get("class_type") if isinstance(node, Mapping) else node


def _shown(value: Any) -> str:
    text = "(none)" if value is None else repr(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


# -- location ---------------------------------------------------------------------------


def default_db_path(
    environ: Mapping[str, str], *, platform: str = sys.platform, home: Path | None = None
) -> Path:
    """Where the history lives: ``COMFY_MCP_DB``, else the platform's per-user data folder.

    Linux and other Unixes: ``$XDG_DATA_HOME/comfy-mcp`` (``~/.local/share/comfy-mcp``);
    macOS: ``~/Library/Application Support/comfy-mcp``; Windows: ``%LOCALAPPDATA%\\comfy-mcp``.
    """
    override = environ.get("COMFY_MCP_DB")
    if override:
        return Path(override).expanduser()
    return _data_dir(environ, platform, home or Path.home()) / DB_FILENAME


def _data_dir(environ: Mapping[str, str], platform: str, home: Path) -> Path:
    if platform == "win32":
        local = environ.get("LOCALAPPDATA")
        return (Path(local) if local else home / "AppData" / "Local") / APP_DIR
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP_DIR
    xdg = environ.get("XDG_DATA_HOME")
    # The XDG spec says to ignore a relative path.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / APP_DIR


# -- the store --------------------------------------------------------------------------


class GenerationStore:
    """The generation history in one SQLite file; every method is thread-safe."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: Path | str) -> GenerationStore:
        """Open (creating it and its folder if needed) and upgrade the history at ``path``."""
        path = Path(path).expanduser()
        connection = _connect(path)
        try:
            _prepare(connection, path)
        except BaseException:
            connection.close()
            raise
        logger.debug("generation history at %s", path)
        return cls(path, connection)

    def __enter__(self) -> GenerationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- writing ----------------------------------------------------------------------

    def add(
        self,
        *,
        graph: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        template: str | None = None,
        parent_id: int | None = None,
        kind: Kind = "new",
        prompt_id: str | None = None,
        backend_url: str | None = None,
        files: Sequence[StoredFile] = (),
        status: Status = "success",
        error: str | None = None,
        elapsed_seconds: float | None = None,
        execution_seconds: float | None = None,
        note: str | None = None,
        seed: int | None = None,
        checkpoint: str | None = None,
    ) -> GenerationRecord:
        """Record one generation and return it with its new id.

        ``seed`` and ``checkpoint`` default to the ``seed`` / ``checkpoint`` parameters,
        else to the first seed / ``ckpt_name`` input found in the graph.
        """
        _check_choice("kind", kind, KINDS)
        _check_choice("status", status, STATUSES)
        params = dict(params or {})
        row = {
            "parent_id": parent_id, "created_at": datetime.now(UTC).isoformat(),
            "kind": kind, "template": template, "params": _dumps(params),
            "seed": _seed_column(seed if seed is not None else _seed_of(params, graph)),
            "checkpoint": checkpoint or _checkpoint_of(params, graph),
            "graph": _dumps(graph), "prompt_id": prompt_id, "backend_url": backend_url,
            "files": _files_json(files), "status": status, "error": error,
            "elapsed_seconds": elapsed_seconds, "execution_seconds": execution_seconds,
            "note": note or None,
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        with self._write() as db:
            if parent_id is not None:
                self._require(db, parent_id)
            cursor = db.execute(f"INSERT INTO generations ({columns}) VALUES ({marks})", row)
            new_id = int(cursor.lastrowid or 0)
        logger.debug("recorded generation #%d (%s, prompt %s)", new_id, kind, prompt_id)
        return self.get(new_id)

    def add_generation(
        self,
        generation: GenerationLike,
        *,
        graph: Mapping[str, Any],
        backend_url: str | None = None,
        parent_id: int | None = None,
        kind: Kind = "new",
        status: Status = "success",
        error: str | None = None,
    ) -> GenerationRecord:
        """Record a finished ``service.Generation`` (prompt id, template, values, files)."""
        return self.add(
            graph=graph, params=generation.values, template=generation.template,
            parent_id=parent_id, kind=kind, prompt_id=generation.prompt_id,
            backend_url=backend_url, status=status, error=error,
            files=[StoredFile.from_saved(item) for item in generation.files],
            elapsed_seconds=generation.elapsed_seconds,
            execution_seconds=generation.execution_seconds,
        )

    def update_result(
        self,
        generation_id: int,
        *,
        status: Status,
        files: Sequence[StoredFile] | None = None,
        error: str | None = None,
        elapsed_seconds: float | None = None,
        execution_seconds: float | None = None,
    ) -> GenerationRecord:
        """Store how a job recorded as ``still_running`` ended (files and timings if given).

        ``error`` replaces the stored error text, so a success clears an old one.
        """
        _check_choice("status", status, STATUSES)
        changes: dict[str, Any] = {"status": status, "error": error}
        if files is not None:
            changes["files"] = _files_json(files)
        if elapsed_seconds is not None:
            changes["elapsed_seconds"] = elapsed_seconds
        if execution_seconds is not None:
            changes["execution_seconds"] = execution_seconds
        self._update(generation_id, changes)
        return self.get(generation_id)

    def set_note(self, generation_id: int, text: str | None) -> GenerationRecord:
        """Replace the note (the assistant's critique); empty text removes it."""
        self._update(generation_id, {"note": (text or "").strip() or None})
        return self.get(generation_id)

    def _update(self, generation_id: int, changes: Mapping[str, Any]) -> None:
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        with self._write() as db:
            cursor = db.execute(f"UPDATE generations SET {assignments} WHERE id = :id",
                                {**changes, "id": generation_id})
            if cursor.rowcount == 0:
                raise GenerationNotFound(generation_id, _newest(db))

    # -- reading ----------------------------------------------------------------------

    def get(self, generation_id: int) -> GenerationRecord:
        """The generation with this id; ``GenerationNotFound`` if there is none."""
        with self._read() as db:
            row = db.execute(f"SELECT {_FIELDS} FROM generations WHERE id = ?",
                             (generation_id,)).fetchone()
            if row is None:
                raise GenerationNotFound(generation_id, _newest(db))
        return _record(row)

    def by_prompt_id(self, prompt_id: str) -> GenerationRecord | None:
        """The newest generation submitted under this ComfyUI prompt id, if any."""
        with self._read() as db:
            row = db.execute(f"SELECT {_FIELDS} FROM generations WHERE prompt_id = ? "
                             "ORDER BY id DESC LIMIT 1", (prompt_id,)).fetchone()
        return None if row is None else _record(row)

    def recent(self, limit: int = 20, offset: int = 0) -> list[GenerationRecord]:
        """The newest generations first, skipping ``offset`` of them."""
        if limit < 1 or offset < 0:
            raise ValueError(f"limit must be at least 1 and offset at least 0, "
                             f"got limit={limit}, offset={offset}")
        with self._read() as db:
            rows = db.execute(f"SELECT {_FIELDS} FROM generations ORDER BY id DESC "
                              "LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [_record(row) for row in rows]

    def count(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM generations").fetchone()[0])

    def lineage(self, generation_id: int) -> Lineage:
        """The generation, every ancestor up to its root and every descendant, with diffs."""
        with self._read() as db:
            db.execute("BEGIN")  # one snapshot for both queries
            try:
                up = db.execute(_ANCESTORS, (generation_id, LINEAGE_LIMIT)).fetchall()
                if not up:
                    raise GenerationNotFound(generation_id, _newest(db))
                down = db.execute(_DESCENDANTS, (generation_id, LINEAGE_LIMIT + 2)).fetchall()
            finally:
                db.execute("COMMIT")
        chain = [_record(row) for row in reversed(up)]  # root first, focus last
        below = [_record(row) for row in down if row[0] != generation_id]
        truncated = len(up) > LINEAGE_LIMIT + 1 or len(below) > LINEAGE_LIMIT
        return _build_lineage(chain[-LINEAGE_LIMIT - 1:], below[:LINEAGE_LIMIT], truncated)

    # -- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translate():
            yield self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translate():
            # IMMEDIATE takes the write lock at once, so two processes never deadlock
            # upgrading a read lock.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _translate(self) -> Iterator[None]:
        if self._closed:
            raise HistoryError(f"the generation history {self.path} is already closed")
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise HistoryError(
                f"could not use the generation history {self.path}: {exc}; check that the "
                "disk has room and the file is writable"
            ) from exc
        except sqlite3.IntegrityError:
            raise  # a bug of ours, not the user's file
        except sqlite3.DatabaseError as exc:
            raise HistoryUnreadable(self.path, str(exc)) from exc

    def _require(self, db: sqlite3.Connection, generation_id: int) -> None:
        if db.execute("SELECT 1 FROM generations WHERE id = ?", (generation_id,)).fetchone():
            return
        raise GenerationNotFound(generation_id, _newest(db))


# Columns in the order ``_record`` reads them; named, so a later migration may add more.
_COLUMNS = ("id", "parent_id", "created_at", "kind", "template", "params", "seed",
            "checkpoint", "graph", "prompt_id", "backend_url", "files", "status", "error",
            "elapsed_seconds", "execution_seconds", "note")
_FIELDS = ", ".join(_COLUMNS)
_G_FIELDS = ", ".join(f"g.{column}" for column in _COLUMNS)

_ANCESTORS = f"""
WITH RECURSIVE up(id, depth) AS (
    SELECT id, 0 FROM generations WHERE id = ?1
    UNION ALL
    SELECT g.parent_id, up.depth + 1 FROM generations g JOIN up ON g.id = up.id
    WHERE g.parent_id IS NOT NULL AND up.depth <= ?2
)
SELECT {_G_FIELDS} FROM up JOIN generations g ON g.id = up.id ORDER BY up.depth
"""

_DESCENDANTS = f"""
WITH RECURSIVE down(id) AS (
    SELECT id FROM generations WHERE id = ?1
    UNION ALL
    SELECT g.id FROM generations g JOIN down ON g.parent_id = down.id
    LIMIT ?2
)
SELECT {_G_FIELDS} FROM down JOIN generations g ON g.id = down.id ORDER BY g.id
"""


def _build_lineage(
    chain: list[GenerationRecord], descendants: list[GenerationRecord], truncated: bool
) -> Lineage:
    """``chain`` runs from the root to the focus; descendants come in id order."""
    entries: list[LineageEntry] = []
    for depth, record in enumerate(chain):
        entries.append(_entry(record, chain[depth - 1] if depth else None, depth))
    focus = entries.pop()
    by_id = {record.id: record for record in chain}
    by_id.update((record.id, record) for record in descendants)
    children: dict[int, list[GenerationRecord]] = {}
    for record in descendants:
        children.setdefault(record.parent_id or 0, []).append(record)
    below: list[LineageEntry] = []
    stack = [(child, focus.depth + 1) for child in reversed(children.get(focus.record.id, []))]
    while stack:
        record, depth = stack.pop()
        below.append(_entry(record, by_id.get(record.parent_id or 0), depth))
        stack += [(child, depth + 1) for child in reversed(children.get(record.id, []))]
    return Lineage(focus, tuple(entries), tuple(below), truncated)


def _entry(record: GenerationRecord, parent: GenerationRecord | None, depth: int) -> LineageEntry:
    if parent is None:
        return LineageEntry(record, depth)
    changes = param_diff(parent.params, record.params)
    graph_changes: Diff = {}
    if not changes and parent.graph != record.graph:
        graph_changes = graph_diff(parent.graph, record.graph)
    return LineageEntry(record, depth, changes, graph_changes)


# -- opening and upgrading --------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # The history holds the user's prompts: create it readable by them alone.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return sqlite3.connect(path, timeout=_BUSY_SECONDS, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise HistoryUnreadable(
            path, f"it cannot be opened ({exc})",
            "Check that its folder exists and is writable, or set COMFY_MCP_DB to a file "
            "in a folder you can write",
        ) from exc


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            logger.info("history %s uses journal mode %s (WAL not available)", path, mode)
        db.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
        db.execute("PRAGMA foreign_keys = ON")
        _check_identity(db, path)
        _migrate(db, path)
    except sqlite3.DatabaseError as exc:
        raise HistoryUnreadable(path, f"it is not a readable SQLite database ({exc})") from exc


def _check_identity(db: sqlite3.Connection, path: Path) -> None:
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if app_id not in (0, APPLICATION_ID):
        raise HistoryUnreadable(path, f"it belongs to another program (application id "
                                f"{app_id:#x})", "Set COMFY_MCP_DB to another file")
    if version > SCHEMA_VERSION:
        raise HistoryUnreadable(
            path, f"it was written by a newer comfy-mcp (schema {version}, this one knows "
            f"up to {SCHEMA_VERSION})", "Upgrade comfy-mcp, or set COMFY_MCP_DB to another file")
    tables = db.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()[0]
    if version == 0 and tables:
        raise HistoryUnreadable(path, "it is an SQLite database of another program",
                                "Set COMFY_MCP_DB to another file")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    if db.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have upgraded meanwhile.
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for target in range(version + 1, len(_MIGRATIONS) + 1):
            for statement in _MIGRATIONS[target - 1]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
            logger.info("history %s upgraded to schema %d", path, target)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# -- rows -------------------------------------------------------------------------------


def _record(row: tuple[Any, ...]) -> GenerationRecord:
    (id_, parent_id, created_at, kind, template, params, seed, checkpoint, graph, prompt_id,
     backend_url, files, status, error, elapsed, execution, note) = row
    return GenerationRecord(
        id=id_, parent_id=parent_id, created_at=_time(created_at), kind=kind,
        template=template, params=_loads_dict(params, id_, "params"), seed=_seed_value(seed),
        checkpoint=checkpoint, graph=_loads_dict(graph, id_, "graph"), prompt_id=prompt_id,
        backend_url=backend_url, files=_files(files, id_), status=status, error=error,
        elapsed_seconds=elapsed, execution_seconds=execution, note=note,
    )


def _newest(db: sqlite3.Connection) -> int | None:
    return db.execute("SELECT max(id) FROM generations").fetchone()[0]


def _dumps(value: Any) -> str:
    # default=str: a stray Path or enum in the parameters must not lose the record.
    # ensure_ascii: a lone surrogate from a hostile file name still encodes.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


def _files_json(files: Sequence[StoredFile]) -> str:
    return _dumps([item.to_json() for item in files])


def _loads_dict(text: str, generation_id: int, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        logger.warning("generation #%d: stored %s is not a JSON object", generation_id, column)
        return {}
    return value


def _files(text: str, generation_id: int) -> tuple[StoredFile, ...]:
    try:
        items = json.loads(text)
    except (TypeError, ValueError):
        items = None
    if not isinstance(items, list):
        logger.warning("generation #%d: stored files are not a JSON list", generation_id)
        return ()
    return tuple(StoredFile.from_json(item) for item in items if isinstance(item, dict))


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return datetime.fromtimestamp(0, UTC)


def _is_file(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        return path.is_file()
    except OSError:  # a name too long, a permission problem: the file is not usable
        return False


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _seed_of(params: Mapping[str, Any], graph: Mapping[str, Any]) -> int | None:
    seed = _int_or_none(params.get("seed"))
    if seed is not None:
        return seed
    return _first_input(graph, ("seed", "noise_seed"), int)


def _seed_column(seed: int | None) -> str | None:
    return None if seed is None else str(seed)


def _seed_value(text: Any) -> int | None:
    try:
        return int(text) if text is not None else None
    except (TypeError, ValueError):
        return None


def _checkpoint_of(params: Mapping[str, Any], graph: Mapping[str, Any]) -> str | None:
    checkpoint = params.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        return checkpoint
    return _first_input(graph, ("ckpt_name",), str)


def _first_input(graph: Mapping[str, Any], names: tuple[str, ...], kind: type) -> Any:
    """The first literal value of one of ``names`` among the graph's nodes, by node id."""
    for node_id in sorted(graph, key=_node_order):
        inputs = graph[node_id].get("inputs") if isinstance(graph[node_id], Mapping) else None
        for name in names:
            value = (inputs or {}).get(name)
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
    return None


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if str(node_id).isdigit() else (sys.maxsize, str(node_id))
