"""The on-disk store of a run folder: SQLite in WAL mode, one committed transaction per finished result.

An answer or verdict exists for the harness only once its transaction is committed (``synchronous=FULL``), so
a kill -9 at any point loses at most the requests that were in flight. Keys are content hashes: an answer is
reused only for the identical request to the same model, a verdict only for the identical judge call.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


Op = tuple[str, tuple[Any, ...]]


class Store:
    """SQLite store of one run folder: reads on the event loop's connection, batched writes via GroupCommitter."""

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

    @staticmethod
    def answer_ops(
        key: str, task: str, item_id: str, model: str, c: Completion, latency_s: float
    ) -> list[Op]:
        return [
            ("INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?)",
             (key, task, item_id, model, c.text or "", c.finish_reason, c.prompt_tokens, c.completion_tokens,
              c.endpoint, latency_s, time.time())),
            ("DELETE FROM errors WHERE key=?", (key,)),
        ]  # fmt: skip

    def put_answer(
        self, key: str, task: str, item_id: str, model: str, c: Completion, latency_s: float
    ) -> None:
        self.apply(self.answer_ops(key, task, item_id, model, c, latency_s))

    def apply(self, ops: list[Op]) -> None:
        """Run the writes in one transaction; it is on disk (fsync) when this returns."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, params in ops:
                self._db.execute(sql, params)

    # ------------------------------------------------------------------ verdicts
    def get_verdict(self, key: str) -> Verdict | None:
        row = self._db.execute(
            "SELECT rating, status, replies, usage FROM verdicts WHERE key=?", (key,)
        ).fetchone()
        return Verdict(row[0], row[1], json.loads(row[2]), json.loads(row[3])) if row else None

    @staticmethod
    def verdict_ops(key: str, item_id: str, judge_model: str, v: Verdict) -> list[Op]:
        return [
            ("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?)",
             (key, item_id, judge_model, v.rating, v.status, json.dumps(v.replies), json.dumps(v.usage),
              time.time())),
            ("DELETE FROM errors WHERE key=?", (key,)),
        ]  # fmt: skip

    def put_verdict(self, key: str, item_id: str, judge_model: str, v: Verdict) -> None:
        self.apply(self.verdict_ops(key, item_id, judge_model, v))

    # ------------------------------------------------------------------ errors (retried on the next run)
    @staticmethod
    def error_ops(key: str, item_id: str, stage: str, error: str) -> list[Op]:
        return [
            ("INSERT OR REPLACE INTO errors VALUES (?,?,?,?,?)", (key, item_id, stage, error, time.time()))
        ]

    def put_error(self, key: str, item_id: str, stage: str, error: str) -> None:
        self.apply(self.error_ops(key, item_id, stage, error))

    def get_error(self, key: str) -> tuple[str, str] | None:
        row = self._db.execute("SELECT stage, error FROM errors WHERE key=?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def counts(self) -> dict[str, Any]:
        return {
            t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("answers", "verdicts", "errors")
        }


class GroupCommitter:
    """Commits the writes of concurrently finishing items together, in a writer thread: one transaction, one fsync.

    ``await commit(ops)`` returns only once those writes are on disk, so an item still counts only after its
    commit. While one fsync runs (off the event loop, which keeps sending requests), the items finishing meanwhile
    queue up and share the next one. The writer has its own connection: WAL readers never see its uncommitted rows.
    """

    def __init__(self, store: Store) -> None:
        self._path = store.path
        self._pending: list[tuple[list[Op], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-store-writer")
        self._writer: Store | None = None

    def _apply(self, ops: list[Op]) -> None:
        if self._writer is None:  # created in the writer thread, used only there
            self._writer = Store(self._path)
        self._writer.apply(ops)

    async def commit(self, ops: list[Op]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((ops, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(future)  # a cancelled item must not cancel the others' commit

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(
                    self._executor, self._apply, [op for ops, _ in batch for op in ops]
                )
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
            else:
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)

    async def aclose(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            await loop.run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)
