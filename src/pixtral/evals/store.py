"""The on-disk store of a run folder: SQLite in WAL mode, one committed transaction per finished result.

An answer or verdict exists for the harness only once its transaction is committed (``synchronous=FULL``), so
a kill -9 at any point loses at most the requests that were in flight. Keys are content hashes: an answer is
reused only for the identical request to the same model, a verdict only for the identical judge call.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixtral.evals.errors import StoreError
from pixtral.evals.judge import Verdict
from pixtral.evals.types import Completion

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, task TEXT NOT NULL, item_id TEXT NOT NULL, model TEXT NOT NULL, text TEXT NOT NULL,
    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, endpoint TEXT, latency_s REAL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY, item_id TEXT NOT NULL, judge_model TEXT NOT NULL, rating REAL NOT NULL,
    status TEXT NOT NULL, replies TEXT NOT NULL, usage TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS errors (
    key TEXT PRIMARY KEY, item_id TEXT NOT NULL, stage TEXT NOT NULL, error TEXT NOT NULL, created REAL NOT NULL);
"""


@dataclass
class StoredAnswer:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """One ``pixtral eval`` per run folder at a time (the OS drops the lock when the process dies, even on kill -9)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(
                f"another `pixtral eval` is running in {folder}; wait for it or use another --output-dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Store:
    """SQLite store; use one instance per process (the event loop thread does every write)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a usable eval store ({exc}); pick a new --output-dir") from exc
        version = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif version[0] != SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by an incompatible harness (schema {version[0]}); use a new folder"
            )
        self.path = path

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ answers
    def answer_keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM answers")}

    def get_answer(self, key: str) -> StoredAnswer | None:
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, latency_s FROM answers WHERE key=?",
            (key,),
        ).fetchone()
        return StoredAnswer(*row) if row else None

    def put_answer(
        self, key: str, task: str, item_id: str, model: str, c: Completion, latency_s: float
    ) -> None:
        with self._db:  # one committed transaction
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (key, task, item_id, model, c.text or "", c.finish_reason, c.prompt_tokens, c.completion_tokens,
                 c.endpoint, latency_s, time.time()),
            )  # fmt: skip
            self._db.execute("DELETE FROM errors WHERE key=?", (key,))

    # ------------------------------------------------------------------ verdicts
    def get_verdict(self, key: str) -> Verdict | None:
        row = self._db.execute(
            "SELECT rating, status, replies, usage FROM verdicts WHERE key=?", (key,)
        ).fetchone()
        return Verdict(row[0], row[1], json.loads(row[2]), json.loads(row[3])) if row else None

    def put_verdict(self, key: str, item_id: str, judge_model: str, v: Verdict) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?)",
                (
                    key,
                    item_id,
                    judge_model,
                    v.rating,
                    v.status,
                    json.dumps(v.replies),
                    json.dumps(v.usage),
                    time.time(),
                ),
            )
            self._db.execute("DELETE FROM errors WHERE key=?", (key,))

    # ------------------------------------------------------------------ errors (retried on the next run)
    def put_error(self, key: str, item_id: str, stage: str, error: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO errors VALUES (?,?,?,?,?)", (key, item_id, stage, error, time.time())
            )

    def get_error(self, key: str) -> tuple[str, str] | None:
        row = self._db.execute("SELECT stage, error FROM errors WHERE key=?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def counts(self) -> dict[str, Any]:
        return {
            t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("answers", "verdicts", "errors")
        }
