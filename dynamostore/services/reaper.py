"""Tombstone reaping: remove a fully deleted key's record once no replica can bring its value back.

The rule (why each part is there is in docs/antientropy.md, "Tombstones"):

1. The key is fully deleted (every sibling a tombstone) and its newest tombstone is older than
   `tombstone_grace_s` (`versioning.reap_tombstones`), by the clock of every node that removes it.
2. Every member of the cluster is up, and answers an `ae.check`: each *primary* replica of the partition
   holds exactly this state (same causal digest), and *no* member holds a hint for the key. A replica
   that missed the write and the delete (digest None), or that still holds the old value (another
   digest), or a hint still waiting to carry an old write home, all block the reap until anti-entropy or
   handoff has brought the tombstone everywhere.
3. The removal is conditional on every node (`ae.reap`, and locally): the record is deleted only if its
   digest is still the confirmed one, inside the storage writer, so a write racing the reap survives.

A reap that reaches only some replicas leaves the tombstone on the others; anti-entropy then copies that
tombstone back, which is harmless (it is a tombstone, not a value) and the next sweep reaps it again.
Candidates are found by the periodic sweep (`PartitionTrees.verify_partition` with a visitor).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynamostore.kv import versioning as v
from dynamostore.services.merkle_trees import PartitionTrees, Visitor
from dynamostore.kv.replica import hint_key
from dynamostore.net.rpc import RpcRemoteError

if TYPE_CHECKING:
    from dynamostore.node import Node

log = logging.getLogger(__name__)

BATCH = 256
CALL_TIMEOUT = 5.0


@dataclass
class ReapStats:
    candidates: int = 0  # tombstones past grace seen by sweeps
    reaped: int = 0  # records this node removed
    deferred: int = 0  # candidates kept because a member was down or not every replica agreed


class TombstoneReaper:
    def __init__(self, node: Node, trees: PartitionTrees, grace_s: float) -> None:
        self.node = node
        self.trees = trees
        self.grace_ms = int(grace_s * 1000)
        self.stats = ReapStats()

    def collector(self, into: dict[int, dict[bytes, bytes]]) -> Visitor:
        """A scan visitor that gathers tombstones past grace: partition -> key -> digest."""
        before = int(time.time() * 1000) - self.grace_ms

        def visit(partition: int, key: bytes, state: v.VersionSet, digest: bytes) -> None:
            if state.is_deleted and v.reap_tombstones(state, before) is None:
                into.setdefault(partition, {})[key] = digest

        return visit

    async def reap(self, partition: int, candidates: dict[bytes, bytes]) -> int:
        """Reap what rule 2 allows among one partition's candidates. Returns records removed here."""
        self.stats.candidates += len(candidates)
        others = [m for m in self.node.members if m != self.node.node_id]
        if any(not self.node.detector.is_up(m) for m in others):
            self.stats.deferred += len(candidates)
            return 0
        primaries = set(self.node.ring.preference_list(partition, self.node.n_val)[0])
        keys = sorted(candidates)
        removed = 0
        for i in range(0, len(keys), BATCH):
            batch = keys[i : i + BATCH]
            agreed = await self._agreed(partition, batch, candidates, others, primaries)
            self.stats.deferred += len(batch) - len(agreed)
            if not agreed:
                continue
            items = [[k, candidates[k]] for k in agreed]
            peers = [m for m in others if m in primaries]
            calls = [self.node.call(m, "ae.reap", [partition, items], CALL_TIMEOUT) for m in peers]
            results = await asyncio.gather(self.reap_local(partition, items), *calls, return_exceptions=True)
            for peer, res in zip(peers, results[1:]):
                if isinstance(res, BaseException):
                    log.info("reap on %s failed (%s); its tombstones stay until the next sweep", peer, res)
            if isinstance(results[0], BaseException):
                raise results[0]
            removed += results[0]
        return removed

    async def _agreed(self, partition: int, keys: list[bytes], candidates: dict[bytes, bytes],
                      others: Sequence[str], primaries: set[str]) -> list[bytes]:
        """The keys every member confirms (rule 2); [] if any member does not answer."""
        replies = await asyncio.gather(
            *(self.node.call(m, "ae.check", [partition, keys], CALL_TIMEOUT) for m in others),
            return_exceptions=True,
        )
        if any(isinstance(r, BaseException) for r in replies):
            return []
        mine = await self.check(keys)
        agreed = []
        for j, key in enumerate(keys):
            ok = not mine[j][1]
            for m, rep in zip(others, replies):
                assert not isinstance(rep, BaseException)  # checked above; says so to mypy
                digest, hinted = rep[j]
                if hinted or (m in primaries and digest != candidates[key]):
                    ok = False
            if ok:
                agreed.append(key)
        return agreed

    # -- what every node runs (locally and behind the RPC methods) -------------------------------------

    async def check(self, keys: Sequence[bytes]) -> list[list[Any]]:
        """[digest or None, holds a hint for the key] per key."""
        replica, storage = self.node.replica, self.node.storage
        out: list[list[Any]] = []
        for key in keys:
            ref = replica.ref(key)
            raw = await storage.get("data", ref.skey)
            digest = v.digest(v.decode(raw)) if raw is not None else None
            hinted = False
            for target in self.node.members:
                if await storage.get("hints", hint_key(target, ref.skey)) is not None:
                    hinted = True
                    break
            out.append([digest, hinted])
        return out

    async def reap_local(self, partition: int, items: Sequence[Sequence[bytes]]) -> int:
        """Remove each record whose digest is still the given one and that is a tombstone past grace."""
        before = int(time.time() * 1000) - self.grace_ms

        def remove_if(expected: bytes) -> Any:
            def apply(raw: bytes | None) -> tuple[bytes | None, bool]:
                if raw is None:
                    return None, False
                state = v.decode(raw)
                if v.digest(state) != expected or v.reap_tombstones(state, before) is not None:
                    return raw, False  # changed since the check, or not past grace by our clock
                return None, True

            return apply

        refs = [self.node.replica.ref(bytes(key)) for key, _ in items]
        for ref in refs:
            if ref.partition != partition:
                raise RpcRemoteError("bad_request", f"key {ref.key!r} is not in partition {partition}")
        done = await asyncio.gather(*(
            self.node.storage.update("data", ref.skey, remove_if(bytes(d))) for ref, (_, d) in zip(refs, items)
        ))
        hook = self.node.replica.on_change
        removed = 0
        for ref, (_, d), gone in zip(refs, items, done):
            if gone:
                removed += 1
                if hook is not None:
                    hook(ref.partition, ref.segment, ref.key, bytes(d), None)
        self.stats.reaped += removed
        return removed

    async def rpc_check(self, payload: Any, peer: str) -> Any:
        try:
            _, keys = payload
            keys = [bytes(k) for k in keys]
        except (TypeError, ValueError) as exc:
            raise RpcRemoteError("bad_request", f"ae.check payload: {exc}") from exc
        return await self.check(keys)

    async def rpc_reap(self, payload: Any, peer: str) -> Any:
        try:
            partition, items = int(payload[0]), [(bytes(k), bytes(d)) for k, d in payload[1]]
        except (TypeError, ValueError, IndexError) as exc:
            raise RpcRemoteError("bad_request", f"ae.reap payload: {exc}") from exc
        if partition not in self.trees.trees:
            raise RpcRemoteError("not_ready", f"partition {partition} is not replicated here")
        return await self.reap_local(partition, items)

