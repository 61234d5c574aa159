"""LMDB engine: one environment per data directory, one named sub-database per namespace.

Two sync modes (`LmdbSync`, `[storage] lmdb_sync`):

* `"nometasync"` (the default; LMDB's MDB_NOMETASYNC): every commit fdatasync()s the pages it wrote, and the
  meta page that points to them is flushed by the next commit or `sync()`. LMDB documents this mode as keeping
  the environment intact across an OS crash or power loss: at worst the last committed transaction(s) are
  undone. A commit therefore waits for the disk, so the facade runs commits in its writer thread
  (`writes_on_loop` is False) and group-commits what queues up meanwhile.
* `"nosync"` (MDB_NOSYNC, the old fast mode): a commit is pwrite()s into the page cache, which survives
  `kill -9` of the process but not an OS crash; LMDB documents that an OS crash in this mode may corrupt the
  environment, not just lose its tail. Commits take microseconds, so the facade commits on the loop.

In both modes a durable write and the periodic background sync call mdb_env_sync(force): everything committed
so far, meta page included, is on disk when it returns.

Reads are MVCC snapshots that never wait on the writer and cost ~3 us (measured in docs/storage.md), so
`reads_on_loop` is True. writemap is off by default: with it a full disk turns into SIGBUS on a page fault
instead of an error from write(), and a stray pointer write could scribble on the map (measured trade-off in
docs/storage.md).
"""

from __future__ import annotations

import pathlib
from typing import Final, Literal, get_args

import lmdb

from .engine import NAMESPACES, Namespace, disk_bytes, prefix_end, scan_start

_MAX_READERS: Final = 256

LmdbSync = Literal["nometasync", "nosync"]
LMDB_SYNC_MODES: Final[tuple[str, ...]] = get_args(LmdbSync)
DEFAULT_LMDB_SYNC: Final[LmdbSync] = "nometasync"   # LMDB documents it as safe across power loss


class LmdbWriteTxn:
    __slots__ = ("_durable", "_engine", "_txn")

    def __init__(self, engine: LmdbEngine, durable: bool) -> None:
        self._engine = engine
        self._durable = durable
        self._txn = engine.env.begin(write=True)

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        value: bytes | None = self._txn.get(key, db=self._engine.dbs[ns])
        return value

    def put(self, ns: Namespace, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._engine.dbs[ns])

    def delete(self, ns: Namespace, key: bytes) -> None:
        self._txn.delete(key, db=self._engine.dbs[ns])

    def commit(self) -> None:
        self._txn.commit()              # nometasync: fdatasync()s the transaction's pages before returning
        if self._durable:
            self._engine.sync()         # and the meta page pointing to them

    def abort(self) -> None:
        self._txn.abort()


class LmdbEngine:
    name = "lmdb"
    reads_on_loop = True

    def __init__(self, path: pathlib.Path, *, map_size: int, writemap: bool = False,
                 sync_mode: LmdbSync = DEFAULT_LMDB_SYNC) -> None:
        if sync_mode not in LMDB_SYNC_MODES:
            raise ValueError(f"unknown LMDB sync mode {sync_mode!r}; expected one of {LMDB_SYNC_MODES}")
        self.path = path
        self.sync_mode = sync_mode
        # nosync: a commit is pwrite()s into the page cache (tens of us per batch), fine on the loop;
        # nometasync: a commit waits for fdatasync(), so it belongs in a thread.
        self.writes_on_loop = sync_mode == "nosync"
        self.env = lmdb.open(
            str(path), map_size=map_size, subdir=True, max_dbs=len(NAMESPACES), max_readers=_MAX_READERS,
            sync=sync_mode == "nometasync", metasync=False, writemap=writemap, readahead=False, meminit=False,
            lock=True,
        )
        try:
            self.env.reader_check()     # free reader slots left by a process that was killed mid-read
            self.dbs = {ns: self.env.open_db(ns.encode()) for ns in NAMESPACES}
        except BaseException:
            self.env.close()
            raise

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        with self.env.begin(db=self.dbs[ns]) as txn:
            value: bytes | None = txn.get(key)
            return value

    def scan(self, ns: Namespace, prefix: bytes, start_after: bytes | None,
             limit: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if limit <= 0:
            return out
        start, exclusive = scan_start(prefix, start_after)
        end = prefix_end(prefix)
        with self.env.begin(db=self.dbs[ns]) as txn, txn.cursor() as cur:
            if not cur.set_range(start):
                return out
            if exclusive and cur.key() == start and not cur.next():
                return out
            for key, value in cur.iternext(keys=True, values=True):
                if end is not None and key >= end:
                    break
                out.append((key, value))
                if len(out) >= limit:
                    break
        return out

    def count(self, ns: Namespace, prefix: bytes) -> int:
        with self.env.begin(db=self.dbs[ns]) as txn:
            if not prefix:
                entries: int = txn.stat(self.dbs[ns])["entries"]
                return entries
            end = prefix_end(prefix)
            n = 0
            with txn.cursor() as cur:
                if not cur.set_range(prefix):
                    return 0
                for key in cur.iternext(keys=True, values=False):
                    if end is not None and key >= end:
                        break
                    n += 1
            return n

    def begin(self, durable: bool) -> LmdbWriteTxn:
        return LmdbWriteTxn(self, durable)

    def sync(self) -> None:
        self.env.sync(True)

    def stats(self) -> dict[str, int | float]:
        info = self.env.info()
        out: dict[str, int | float] = {
            "map_size": info["map_size"],
            "map_used_bytes": (info["last_pgno"] + 1) * self.env.stat()["psize"],
            "disk_bytes": disk_bytes(self.path),
        }
        with self.env.begin() as txn:
            for ns in NAMESPACES:
                out[f"entries_{ns}"] = txn.stat(self.dbs[ns])["entries"]
        return out

    def close(self) -> None:
        self.env.close()
