"""Anti-entropy in real node processes: a replica that missed thousands of writes and deletes is healed by
Merkle exchanges alone, and tombstones are reaped only once every replica holds them.

Both tests keep read repair out of the way (no reads until the replicas have converged) and switch hinted
handoff off, so whatever heals the returning node is anti-entropy.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from antientropy.merkle import MerkleTree
from dynamostore.kv import versioning as v
from dynamostore.services.merkle_trees import PartitionTrees
from dynamostore.kv.replica import LocalReplica
from dynamostore.storage.store import Storage
from dynamostore.storage.keys import split_data_key
from tests.harness import Cluster, wait_for

NO_HANDOFF: dict[str, Any] = {"handoff": {"enabled": False}}


async def _bounded(jobs: Iterable[Awaitable[None]], limit: int = 32) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(job: Awaitable[None]) -> None:
        async with sem:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


async def _ae(c: Cluster, nid: str) -> dict[str, Any]:
    doc: dict[str, Any] = (await c.status(nid))["antientropy"]
    return doc


async def _roots_equal(c: Cluster, nids: list[str]) -> bool:
    docs = [await _ae(c, n) for n in nids]
    if any(d["trees_built"] != d["trees_total"] for d in docs):
        return False
    roots = [{p: s["root"] for p, s in d["partitions"].items()} for d in docs]
    return all(r == roots[0] for r in roots[1:])


async def _entries(c: Cluster, nid: str) -> int:
    return int((await c.status(nid))["storage"]["entries_data"])


async def _write_all(c: Cluster, keys: list[str], value: Callable[[str], bytes], nodes: list[str],
                     headers: dict[str, str] | None = None) -> dict[str, str]:
    """PUT every key (round-robin over `nodes`); returns each key's X-Context."""
    ctx: dict[str, str] = {}

    async def put(i: int, key: str) -> None:
        status, h, body = await c.put(nodes[i % len(nodes)], key, value(key), headers)
        assert status == 204, (status, body)
        ctx[key] = h["X-Context"]

    await _bounded(put(i, k) for i, k in enumerate(keys))
    return ctx


async def _delete_all(c: Cluster, ctx: dict[str, str], nodes: list[str]) -> None:
    async def delete(i: int, key: str) -> None:
        status, _, body = await c.delete(nodes[i % len(nodes)], key, {"X-Context": ctx[key]})
        assert status == 204, (status, body)

    await _bounded(delete(i, k) for i, k in enumerate(sorted(ctx)))


@pytest.mark.cluster
async def test_anti_entropy_alone_heals_missed_writes_and_deletes(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, NO_HANDOFF)  # anti-entropy at its default settings
    old = [f"old{i}" for i in range(600)]
    old_ctx = await _write_all(c, old, lambda k: b"v1-" + k.encode(), c.ids, {"X-Consistency-Level": "ALL"})

    c.kill("n3")  # kill -9: n3 has no tree snapshot and rebuilds its trees from a scan
    for nid in ("n1", "n2"):
        await wait_for(lambda nid=nid: c.sees(nid, "n3", False), 10, f"{nid} to see n3 down")
    new = [f"new{i}" for i in range(2000)]
    await _write_all(c, new, lambda k: b"v2-" + k.encode(), ["n1", "n2"])
    deleted = {k: old_ctx[k] for k in old[:300]}
    await _delete_all(c, deleted, ["n1", "n2"])
    assert await _entries(c, "n1") == 2600 and await _entries(c, "n2") == 2600

    started = time.monotonic()
    c.start("n3")
    await c.wait_healthy("n3")
    await wait_for(lambda: _roots_equal(c, c.ids), 60, "every replica's Merkle roots to be equal")
    converged = time.monotonic() - started
    print(f"\nanti-entropy converged {converged:.1f}s after restarting n3 (2,000 writes + 300 deletes missed)")
    assert converged < 60

    ae3 = await _ae(c, "n3")
    # Every key n3 missed was repaired in n3's own store, by exchanges n3 ran or answered.
    assert sum(p["repairs"] for p in ae3["partitions"].values()) >= 2300
    assert all(p["root"] and len(p["root"]) == 32 for p in ae3["partitions"].values())
    assert any(p["last_exchange"] for p in ae3["partitions"].values())
    metrics = (await (await c.http()).get(c.url("n3") + "/metrics")).content
    text = (await metrics.read()).decode()
    repaired = [ln for ln in text.splitlines() if ln.startswith("dynamostore_antientropy_keys_repaired_total")]
    assert repaired and float(repaired[0].split()[-1]) >= 2300
    assert await _entries(c, "n3") == 2600

    # Only n3 left: every key reads its current version from n3's copy alone (R=1); no delete undone.
    c.kill("n1", signal.SIGTERM)
    c.kill("n2", signal.SIGTERM)
    await wait_for(lambda: c.sees("n3", "n1", False), 10, "n3 to see n1 down")
    await wait_for(lambda: c.sees("n3", "n2", False), 10, "n3 to see n2 down")
    one = {"X-Consistency-Level": "ONE"}

    async def check(key: str) -> None:
        status, _, body = await c.get("n3", key, one)
        if key in deleted:
            assert status == 404, (key, status, body)
        else:
            assert status == 200, (key, status, body)
            assert body == (b"v2-" if key.startswith("new") else b"v1-") + key.encode()

    await _bounded(check(k) for k in old + new)


@pytest.mark.cluster
async def test_tombstones_are_reaped_only_once_every_replica_holds_them(make_cluster: Callable[..., Any]) -> None:
    settings = {"antientropy": {"tombstone_grace_s": 0.5, "sweep_interval_s": 0.5, "exchange_interval_s": 2.0}}
    c: Cluster = await make_cluster(3, settings)
    keys = [f"k{i}" for i in range(100)]
    ctx = await _write_all(c, keys, lambda k: b"value-" + k.encode(), c.ids, {"X-Consistency-Level": "ALL"})
    await _write_all(c, ["kept"], lambda k: b"stays", c.ids, {"X-Consistency-Level": "ALL"})

    # n3 stops holding the live values; n1 and n2 get the tombstones. The grace period passes, but
    # n3 would resurrect the values if n1 and n2 reaped now (Cassandra's gc_grace problem): they must wait.
    c.kill("n3", signal.SIGTERM)  # clean stop: n3 restarts from its tree snapshot
    for nid in ("n1", "n2"):
        await wait_for(lambda nid=nid: c.sees(nid, "n3", False), 10, f"{nid} to see n3 down")
    await _delete_all(c, ctx, ["n1", "n2"])

    async def deferred_twice(nid: str) -> bool:
        return int((await _ae(c, nid))["totals"]["tombstones"]["deferred"]) >= 200

    for nid in ("n1", "n2"):
        await wait_for(lambda nid=nid: deferred_twice(nid), 20, f"{nid} to defer reaping in two sweeps")
        assert (await _ae(c, nid))["totals"]["tombstones"]["reaped"] == 0
        assert await _entries(c, nid) == 101

    # n3 comes back with the old values; anti-entropy gives it the tombstones, then all three reap.
    c.start("n3")
    await c.wait_healthy("n3")

    async def all_reaped() -> bool:
        return all([await _entries(c, nid) == 1 for nid in c.ids])

    await wait_for(all_reaped, 30, "every replica to reap the 100 tombstones")
    reaped = [(await _ae(c, nid))["totals"]["tombstones"]["reaped"] for nid in c.ids]
    assert all(r >= 100 for r in reaped), reaped

    # Nothing comes back: let every node run another round of exchanges with both peers, then look again.
    before = {nid: (await _ae(c, nid))["totals"]["exchanges_ok"] for nid in c.ids}

    async def more_exchanges() -> bool:
        for nid in c.ids:
            if (await _ae(c, nid))["totals"]["exchanges_ok"] < before[nid] + 2 * 64:
                return False
        return True

    await wait_for(more_exchanges, 30, "another round of exchanges")
    await wait_for(lambda: _roots_equal(c, c.ids), 10, "equal roots")
    for nid in c.ids:
        assert await _entries(c, nid) == 1
    for key in keys[:20]:
        status, _, _ = await c.get("n1", key, {"X-Consistency-Level": "ALL"})
        assert status == 404
    status, _, body = await c.get("n2", "kept", {"X-Consistency-Level": "ALL"})
    assert status == 200 and body == b"stays"


# --- in-process: the tree bookkeeping the cluster tests rely on -----------------------------------------

PARTS, SEGS = 4, 64


async def _replica(path: Path) -> tuple[Storage, LocalReplica, PartitionTrees]:
    storage = await Storage.open(path, sync_interval=None)
    replica = await LocalReplica.open("n1", storage, partitions=PARTS, segments=SEGS, max_siblings=64,
                                      warn_siblings=16)
    trees = PartitionTrees(storage, range(PARTS), SEGS, scan_keys_per_sec=10**9, scan_chunk=37)
    replica.on_change = trees.on_change
    return storage, replica, trees


async def _truth(storage: Storage) -> dict[int, MerkleTree]:
    """Trees built from scratch from everything in storage right now."""
    items: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTS)}
    for skey, raw in await storage.scan("data", b"", limit=1 << 20):
        p, _, key = split_data_key(skey)
        digest = v.digest(v.decode(raw))
        assert digest is not None
        items[p].append((key, digest))
    return {p: MerkleTree.build(its, SEGS) for p, its in items.items()}


async def test_tree_build_is_exact_while_writes_race_the_scan(tmp_path: Path) -> None:
    storage, replica, trees = await _replica(tmp_path / "s")
    rng = random.Random(7)

    async def write(i: int) -> None:
        key = b"k%d" % rng.randrange(3000)
        await replica.coordinate(replica.ref(key), {}, None if i % 5 == 0 else b"x%d" % i, "text/plain",
                                 durable=False)

    await asyncio.gather(*(write(i) for i in range(2000)))
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            await asyncio.gather(*(write(i + j) for j in range(8)))  # group-committed batches
            i += 8

    writer = asyncio.create_task(churn())
    await asyncio.gather(*(trees.verify_partition(p) for p in range(PARTS)))
    stop.set()
    await writer
    assert trees.built == set(range(PARTS))
    truth = await _truth(storage)
    for p in range(PARTS):
        assert trees.trees[p].root() == truth[p].root(), p
    await storage.close()


async def test_snapshot_round_trip_and_crash_forces_rebuild(tmp_path: Path) -> None:
    storage, replica, trees = await _replica(tmp_path / "s")
    for i in range(300):
        key = b"k%d" % i
        await replica.coordinate(replica.ref(key), {}, b"v", "text/plain", durable=False)
    for p in range(PARTS):
        await trees.verify_partition(p)
    roots = {p: trees.trees[p].root() for p in range(PARTS)}
    assert await trees.save() == PARTS
    again = PartitionTrees(storage, range(PARTS), SEGS, scan_keys_per_sec=10**9)
    assert await again.load() == PARTS and again.built == set(range(PARTS))
    assert {p: again.trees[p].root() for p in range(PARTS)} == roots
    # load() consumed the snapshot: a crash from here on finds none and rebuilds by scanning
    assert await PartitionTrees(storage, range(PARTS), SEGS, scan_keys_per_sec=10**9).load() == 0
    await storage.close()


async def test_a_drifted_leaf_is_found_and_fixed_by_a_segment_rescan(tmp_path: Path) -> None:
    storage, replica, trees = await _replica(tmp_path / "s")
    ref = replica.ref(b"lost")
    await replica.coordinate(ref, {}, b"v", "text/plain", durable=False)
    for p in range(PARTS):
        await trees.verify_partition(p)
    good = trees.trees[ref.partition].root()
    replica.on_change = None  # a write whose delta never arrives (e.g. its caller was cancelled)
    await replica.coordinate(replica.ref(b"lost"), {}, b"w", "text/plain", durable=False)
    assert trees.trees[ref.partition].root() == good
    assert await trees.verify_segments(ref.partition, [ref.segment]) == 1
    assert trees.trees[ref.partition].root() == (await _truth(storage))[ref.partition].root() != good
    await storage.close()


async def test_segment_reads_agree_whichever_scan_is_used(tmp_path: Path) -> None:
    storage, replica, trees = await _replica(tmp_path / "s")
    for i in range(500):
        await replica.coordinate(replica.ref(b"k%d" % i), {}, b"v", "text/plain", durable=False)
    await trees.verify_partition(1)
    wanted = list(range(3, SEGS, 2))
    ranged = await trees.segment_items(1, wanted)  # a small partition: one range scan
    trees.counts[1] = 10**9  # pretend it is huge: one scan per segment
    single = await trees.segment_items(1, wanted)
    assert ranged == single and set(ranged) == set(wanted)
    expected = {
        key: v.digest(v.decode(raw))
        for skey, raw in await storage.scan("data", b"", limit=10_000)
        for p, seg, key in [split_data_key(skey)] if p == 1 and seg in wanted
    }
    assert {k: d for items in ranged.values() for k, d in items.items()} == expected
    await storage.close()
