"""SQLite engine (WAL mode) for bench/storage_engines.py: one database file per directory, one WITHOUT ROWID
table per namespace.

The measured alternative to LMDB (docs/storage.md), behind the same synchronous `Engine` interface so the
benchmark can compare the two. It is not part of the package: no node can select it, and the node's storage
facade commits and reads on the event loop, which SQLite's commits (they may wait on the WAL) do not allow.
`synchronous=NORMAL` in WAL mode: a commit is a write() into the WAL (page cache, so it survives `kill -9`),
and an OS crash may lose the unsynced tail but never corrupts the database. A durable transaction switches the
connection to `synchronous=FULL` for its commit, which fsyncs the WAL; SQLite only allows that switch outside a
transaction, hence `begin(durable)`.

Point reads go through a Python connection and cost tens of microseconds, so `reads_on_loop` is False; each
reading thread has its own connection.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
from typing import Final

from dynamostore.storage.engine import NAMESPACES, Namespace, disk_bytes, prefix_end, scan_start

DB_FILE: Final = "store.sqlite3"


def _connect(path: pathlib.Path) -> sqlite3.Connection:
    # Autocommit mode (isolation_level=None): transactions are explicit BEGIN/COMMIT statements.
    # check_same_thread=False only so close() may run on another thread; each connection is used by one.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteWriteTxn:
    __slots__ = ("_conn", "_durable")

    def __init__(self, conn: sqlite3.Connection, durable: bool) -> None:
        self._conn = conn
        self._durable = durable
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            raise

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        row = self._conn.execute(f"SELECT v FROM {ns} WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, ns: Namespace, key: bytes, value: bytes) -> None:
        self._conn.execute(f"INSERT OR REPLACE INTO {ns} (k, v) VALUES (?, ?)", (key, value))

    def delete(self, ns: Namespace, key: bytes) -> None:
        self._conn.execute(f"DELETE FROM {ns} WHERE k = ?", (key,))

    def commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        finally:
            self._restore()

    def abort(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._restore()

    def _restore(self) -> None:
        if self._durable and not self._conn.in_transaction:
            self._conn.execute("PRAGMA synchronous=NORMAL")


class SqliteEngine:
    name = "sqlite"
    reads_on_loop = False
    writes_on_loop = False  # a commit may wait on the WAL checkpoint / busy lock: keep it in the writer thread

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._file = path / DB_FILE
        self._writer = _connect(self._file)
        for ns in NAMESPACES:
            self._writer.execute(f"CREATE TABLE IF NOT EXISTS {ns} (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._file)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        row = self._reader().execute(f"SELECT v FROM {ns} WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def scan(self, ns: Namespace, prefix: bytes, start_after: bytes | None,
             limit: int) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        start, exclusive = scan_start(prefix, start_after)
        end = prefix_end(prefix)
        sql = f"SELECT k, v FROM {ns} WHERE k {'>' if exclusive else '>='} ?"
        args: tuple[bytes | int, ...] = (start,)
        if end is not None:
            sql += " AND k < ?"
            args += (end,)
        rows = self._reader().execute(sql + " ORDER BY k LIMIT ?", args + (limit,)).fetchall()
        return [(bytes(k), bytes(v)) for k, v in rows]

    def count(self, ns: Namespace, prefix: bytes) -> int:
        end = prefix_end(prefix)
        sql = f"SELECT count(*) FROM {ns} WHERE k >= ?"
        args: tuple[bytes, ...] = (prefix,)
        if end is not None:
            sql += " AND k < ?"
            args += (end,)
        n: int = self._reader().execute(sql, args).fetchone()[0]
        return n

    def begin(self, durable: bool) -> SqliteWriteTxn:
        return SqliteWriteTxn(self._writer, durable)

    def sync(self) -> None:
        # fsync() flushes a file's dirty pages whichever descriptor wrote them; the WAL holds every commit
        # not yet checkpointed, the main file everything checkpointed.
        for name in (DB_FILE + "-wal", DB_FILE):
            try:
                fd = os.open(self.path / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def stats(self) -> dict[str, int | float]:
        return {"disk_bytes": disk_bytes(self.path)}

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._writer.close()
