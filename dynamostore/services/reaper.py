"""Tombstone reaping: remove a fully deleted key's record once no replica can bring its value back.

The rule (why each part is there is in docs/antientropy.md, "Tombstones"):

1. The key is fully deleted (every sibling a tombstone) and its newest tombstone is older than
   `tombstone_grace_s` (`versioning.reap_tombstones`), by the clock of every node that removes it.
2. Every node is up and answers an `ae.check`, and they agree (`antientropy.reaping`):
   each primary holds exactly this state, and no member holds a hint for the key.
3. The removal is conditional on every node (`ae.reap`, and locally through `LocalReplica.reap`): the record
   is deleted only if its digest is still the confirmed one, inside the storage writer, so a write racing
   the reap survives.

A reap that reaches only some replicas leaves the tombstone on the others; anti-entropy then copies that
tombstone back, which is harmless (it is a tombstone, not a value) and the next sweep reaps it again.
Candidates are found by the periodic sweep (`PartitionTrees.verify_partition` with a visitor).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from antientropy.reaping import KeyCheck, agreed
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.net.rpc import RpcRemoteError
from dynamostore.services.merkle_trees import PartitionTrees, Visitor
from dynamostore.views import Liveness, Peers, Placement
from ring.membership import Status

log = logging.getLogger(__name__)

BATCH = 256
CALL_TIMEOUT = 5.0


@dataclass
class ReapStats:
    candidates: int = 0  # tombstones past grace seen by sweeps
    reaped: int = 0  # records this node removed
    deferred: int = 0  # candidates kept because a member was down or not every replica agreed


def _wall_ms() -> int:
    """Tombstones carry wall-clock timestamps (the grace period is about real time across nodes)."""
    return int(time.time() * 1000)


class TombstoneReaper:
    def __init__(self, trees: PartitionTrees, grace_s: float, *, placement: Placement, liveness: Liveness,
                 peers: Peers, replica: LocalReplica, nodes: Callable[[], list[str]]) -> None:
        self.trees = trees
        self.grace_ms = int(grace_s * 1000)
        self.placement = placement
        self.nodes = nodes  # every node that may hold a copy or a hint of a key: all must answer and agree
        self.liveness = liveness
        self.peers = peers
        self.replica = replica
        self.stats = ReapStats()

    def collector(self, into: dict[int, dict[bytes, bytes]]) -> Visitor:
        """A scan visitor that gathers tombstones past grace: partition -> key -> digest."""
        before = _wall_ms() - self.grace_ms

        def visit(partition: int, key: bytes, state: v.VersionSet, digest: bytes) -> None:
            if state.is_deleted and v.reap_tombstones(state, before) is None:
                into.setdefault(partition, {})[key] = digest

        return visit

    def _others(self) -> list[str]:
        """The nodes that must answer: every known node but this one and those removed from the cluster (a
        removed node is no replica and holds no hint that counts: its hints went to the keys' owners when it
        left, and hints held for it are looked for by `check`). A removed node that stayed down would
        otherwise hold every reap back forever."""
        members = self.placement.state.members
        gone = {m for m, info in members.items() if info.status is Status.REMOVED}
        return [m for m in self.nodes() if m != self.placement.node_id and m not in gone]

    def _hint_targets(self) -> list[str]:
        """Every node a hint may be held for here: the known ones and every member ever (removed ones
        included: a hint for a removed node still carries a write to the key's owners)."""
        return sorted(set(self.nodes()) | set(self.placement.state.members))

    async def reap(self, partition: int, candidates: dict[bytes, bytes]) -> int:
        """Reap what the rule allows among one partition's candidates. Returns records removed here."""
        self.stats.candidates += len(candidates)
        others = self._others()
        ring = self.placement.ring
        if ring is None or not all(self.liveness.is_up(m) for m in others):
            self.stats.deferred += len(candidates)
            return 0
        primaries = set(ring.preference_list(partition, self.placement.n_val)[0])
        keys = sorted(candidates)
        removed = 0
        for i in range(0, len(keys), BATCH):
            batch = keys[i : i + BATCH]
            ok = await self._agreed(partition, batch, candidates, others, primaries)
            self.stats.deferred += len(batch) - len(ok)
            if not ok:
                continue
            items = [[k, candidates[k]] for k in ok]
            peers = [m for m in others if m in primaries]
            calls = [self.peers.call(m, "ae.reap", [partition, items], CALL_TIMEOUT) for m in peers]
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
        """The keys every member confirms (rules 2 and 3); [] if any member does not answer."""
        replies = await asyncio.gather(
            *(self.peers.call(m, "ae.check", [partition, keys], CALL_TIMEOUT) for m in others),
            return_exceptions=True,
        )
        answers: dict[str, list[KeyCheck]] = {self.placement.node_id: await self.check(keys)}
        for m, rep in zip(others, replies):
            if isinstance(rep, BaseException):
                return []
            try:
                answers[m] = [KeyCheck.from_wire(r) for r in rep]
            except (TypeError, ValueError):
                log.warning("ae.check answer of %s is malformed; deferring the reap", m)
                return []
            if len(answers[m]) != len(keys):
                return []
        return agreed(keys, candidates, answers, primaries)

    # -- what every node runs (locally and behind the RPC methods) -------------------------------------

    async def check(self, keys: Sequence[bytes]) -> list[KeyCheck]:
        """Per key: the digest of the stored state and whether any hint for the key is held here."""
        out: list[KeyCheck] = []
        members = self._hint_targets()
        for key in keys:
            ref = self.replica.ref(key)
            raw = await self.replica.stored(ref)
            digest = v.digest(v.decode(raw)) if raw is not None else None
            out.append(KeyCheck(digest, await self.replica.holds_hint(ref.skey, members)))
        return out

    async def reap_local(self, partition: int, items: Sequence[Sequence[bytes]]) -> int:
        """Remove each record whose digest is still the given one and that is a tombstone past grace."""
        before = _wall_ms() - self.grace_ms
        refs = [self.replica.ref(bytes(key)) for key, _ in items]
        for ref in refs:
            if ref.partition != partition:
                raise RpcRemoteError("bad_request", f"key {ref.key!r} is not in partition {partition}")
        done = await asyncio.gather(*(self.replica.reap(ref, bytes(d), before) for ref, (_, d) in zip(refs, items)))
        removed = sum(1 for gone in done if gone)
        self.stats.reaped += removed
        return removed

    async def rpc_check(self, payload: Any, peer: str) -> Any:
        try:
            _, keys = payload
            keys = [bytes(k) for k in keys]
        except (TypeError, ValueError) as exc:
            raise RpcRemoteError("bad_request", f"ae.check payload: {exc}") from exc
        return [c.to_wire() for c in await self.check(keys)]

    async def rpc_reap(self, payload: Any, peer: str) -> Any:
        try:
            partition, items = int(payload[0]), [(bytes(k), bytes(d)) for k, d in payload[1]]
        except (TypeError, ValueError, IndexError) as exc:
            raise RpcRemoteError("bad_request", f"ae.reap payload: {exc}") from exc
        if partition not in self.trees.trees:
            raise RpcRemoteError("not_ready", f"partition {partition} is not replicated here")
        return await self.reap_local(partition, items)
