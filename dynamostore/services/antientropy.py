"""Anti-entropy in the running node: Merkle exchanges with the other replicas, repairs, sweeps, reaping.

The pure parts live in `antientropy/` (tree, exchange state machine, scheduler); this module does their
I/O. Pieces:

- `PartitionTrees` (ae_trees.py): one tree per partition this node replicates, fed by the replica's
  change hook; built by a paced background scan (or loaded from a clean-shutdown snapshot).
- The initiator loop: `ExchangeScheduler` says which (partition, peer) pair is due; only built partitions
  and peers the failure detector sees up are offered to it. An exchange walks the trees over the RPC
  method `ae.x` (the responder is stateless: `antientropy.answer` over its own tree and segment scans),
  then repairs the differing keys with `ae.repair` in batches: the initiator pushes its states for the
  keys the responder needs and gets back the responder's (already merged) states for the keys it needs.
  Both sides merge with causality (`LocalReplica.merge`: never an overwrite; concurrent versions stay
  siblings), so a key that differed on both sides ends up identical on both.
- Throttling: repairs draw from the scheduler's token bucket (`max_keys_per_sec`, one second of burst),
  and an empty bucket holds back new exchanges; at most `concurrency` exchanges run at once.
- The sweep loop: builds unbuilt trees at start, then every `sweep_interval_s` rescans every partition
  at `scan_keys_per_sec` to correct any leaf that drifted, and hands tombstones past grace to the
  `TombstoneReaper` (services/reaper.py).

The service sees its node through narrow views (`dynamostore.views`): the placement (which partitions it
replicates, with whom), liveness, peer calls, the RPC methods it answers, and the local replica.

Counting: each node counts the keys *its own* storage changed (as initiator or responder) in
`dynamostore_antientropy_keys_repaired_total`, so the cluster's sum counts every repaired copy once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.core import Metric

from antientropy.exchange import (
    BucketsRequest,
    ChildrenRequest,
    ExchangeError,
    ExchangeInitiator,
    ExchangeResult,
    RootRequest,
    RootResponse,
    answer,
    decode,
    encode,
)
from antientropy.merkle import int_to_hash, sum_items
from antientropy.scheduler import ExchangeOutcome, ExchangeScheduler, ExchangeTask, SchedulerConfig
from dynamostore.config import AntiEntropySettings
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.metrics import NodeMetrics, gauge
from dynamostore.net.rpc import RpcRemoteError, RpcTimeout, RpcUnavailable
from dynamostore.runtime import Supervisor
from dynamostore.services.merkle_trees import PartitionTrees
from dynamostore.services.reaper import TombstoneReaper
from dynamostore.storage.store import Storage
from dynamostore.views import Clock, Liveness, Methods, Peers, Placement
from ring.membership import MembershipState
from ring.placement import Ring

log = logging.getLogger(__name__)

ROUND_TIMEOUT = 5.0
REPAIR_TIMEOUT = 15.0
REPAIR_BATCH_KEYS = 64
REPAIR_BATCH_BYTES = 8 << 20  # RPC frames are capped at 64 MiB
_IDLE_POLL = 0.5  # the loop re-reads the detector this often (peer-down is not signalled)


class NotReady(Exception):
    """The responder has no built tree for the partition yet: not a failure, try next interval."""


@dataclass
class PairStats:
    """One replica pair (this node, a peer) of one partition, from exchanges either side started.

    A completed exchange leaves the pair agreeing (every differing key was merged both ways), so
    `last_agreed` is when the last one completed and `last_differing` how many keys it had to repair. As the
    responder this node learns only of exchanges that found the trees equal (and of repairs it merged);
    the peer's own /status has the rest."""

    last_agreed: float | None = None  # unix time
    last_differing: int = 0
    exchanges: int = 0
    keys_differing: int = 0  # summed over the exchanges this node saw complete
    repairs: int = 0  # keys this node's copy changed through exchanges with this peer
    last_failure: float | None = None  # unix time of the last exchange with the peer that failed
    last_error: str | None = None

    def agreed(self, now: float, differing: int) -> None:
        self.last_agreed, self.last_differing = now, differing
        self.exchanges += 1
        self.keys_differing += differing


@dataclass
class PartitionStats:
    last_exchange: float | None = None  # unix time of the last completed exchange (either role)
    last_peer: str | None = None
    exchanges: int = 0
    last_differing: int = 0
    repairs: int = 0  # keys this node's copy changed by anti-entropy
    pushed: int = 0  # keys peers changed because of exchanges this node initiated
    pairs: dict[str, PairStats] = field(default_factory=dict)  # by peer

    def pair(self, peer: str) -> PairStats:
        st = self.pairs.get(peer)
        if st is None:
            st = self.pairs[peer] = PairStats()
        return st


@dataclass
class Totals:
    exchanges_ok: int = 0
    exchanges_failed: int = 0
    exchanges_unavailable: int = 0
    keys_differing: int = 0
    keys_repaired: int = 0
    keys_pushed: int = 0
    walk_bytes_sent: int = 0
    walk_bytes_received: int = 0
    repair_bytes_sent: int = 0
    repair_bytes_received: int = 0
    sweeps: int = 0


class AntiEntropyService:
    def __init__(self, settings: AntiEntropySettings, *, placement: Placement, liveness: Liveness, peers: Peers,
                 methods: Methods, replica: LocalReplica, storage: Storage, metrics: NodeMetrics, clock: Clock,
                 nodes: Callable[[], list[str]]) -> None:
        self.settings = settings
        self.placement = placement
        self.liveness = liveness
        self.peers = peers
        self.methods = methods
        self.replica = replica
        self.storage = storage  # read by the trees' scans; every write goes through the replica
        self.metrics = metrics
        self.clock = clock
        self.nodes = nodes  # every node that must agree before a tombstone is reaped
        self.partitions: list[int] = []
        self.peers_of: dict[int, tuple[str, ...]] = {}
        self.stats: dict[int, PartitionStats] = {}
        self._place(placement.ring)  # None on a node that has not joined yet: no partitions to keep trees for
        self.trees: PartitionTrees
        self.reaper: TombstoneReaper
        self.sched: ExchangeScheduler
        self.totals = Totals()
        self.snapshot_loaded = 0
        self.built_in_s: float | None = None
        self._offered: dict[int, tuple[str, ...]] = {}
        self._offer_key: tuple[int, int, object] = (-1, -1, None)
        self._kick = asyncio.Event()
        self._tasks = Supervisor("anti-entropy task")

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        r = self.methods
        r.register("ae.x", self._rpc_exchange)
        r.register("ae.repair", self._rpc_repair)
        s = self.settings
        self.trees = PartitionTrees(self.storage, self.partitions if s.enabled else (), s.segments,
                                    scan_keys_per_sec=s.scan_keys_per_sec)
        self.reaper = TombstoneReaper(self.trees, s.tombstone_grace_s, placement=self.placement,
                                      liveness=self.liveness, peers=self.peers, replica=self.replica, nodes=self.nodes)
        r.register("ae.check", self.reaper.rpc_check)
        r.register("ae.reap", self.reaper.rpc_reap)
        if not s.enabled:
            return  # handlers answer not_ready: a disabled node neither initiates nor repairs
        self.sched = ExchangeScheduler(
            # A burst of a tenth of a second's worth (at least one batch) spreads repairs evenly.
            SchedulerConfig(interval=s.exchange_interval_s, max_concurrent=s.concurrency,
                            repair_rate=float(s.max_keys_per_sec),
                            repair_burst=float(max(REPAIR_BATCH_KEYS, s.max_keys_per_sec // 10))),
            random.Random(self.placement.node_id), self.clock.now(),
        )
        # Subscribe before the node serves (services start before the RPC server and the HTTP API).
        self.replica.on_change = self.trees.on_change
        self.snapshot_loaded = await self.trees.load()
        if self.snapshot_loaded:
            log.info("anti-entropy: %d trees loaded from the clean-shutdown snapshot", self.snapshot_loaded)
        self._spawn(self._run(), "ae-exchanges")
        self._spawn(self._sweeps(), "ae-sweeps")

    async def stop(self) -> None:
        await self._tasks.stop()
        if self.settings.enabled and self.trees.built:
            saved = await self.trees.save()
            log.info("anti-entropy: saved %d trees", saved)

    def peer_up(self, peer: str) -> None:
        self._kick.set()

    def _place(self, ring: Ring | None) -> None:
        """Which partitions this node replicates under `ring`, and with whom."""
        me, n = self.placement.node_id, self.placement.n_val
        self.partitions = ring.partitions_of(me, n) if ring is not None else []
        self.peers_of = {
            p: tuple(m for m in ring.preference_list(p, n)[0] if m != me) for p in self.partitions
        } if ring is not None else {}
        self.stats = {p: self.stats.get(p, PartitionStats()) for p in self.partitions}

    def ring_changed(self, state: MembershipState) -> None:
        """A committed membership change: follow the partitions this node now replicates."""
        self._place(state.ring)
        if not self.settings.enabled or not hasattr(self, "sched"):
            return
        new = self.trees.set_partitions(self.partitions)
        if new:
            self._spawn(self._sweep(new), "ae-build-new-partitions")
        self._kick.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name)

    # --- sweeps: build, verify, reap ------------------------------------------------------------------

    async def _sweeps(self) -> None:
        started = self.clock.now()
        await self._sweep([p for p in self.partitions if p not in self.trees.built])
        self.built_in_s = round(self.clock.now() - started, 3)
        log.info("anti-entropy: all %d trees built in %.2fs", len(self.partitions), self.built_in_s)
        while True:
            await self.clock.wait(None, self.settings.sweep_interval_s)
            await self._sweep(self.partitions)
            self.totals.sweeps += 1

    async def _sweep(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            if p not in self.trees.trees:
                continue  # the ring moved it away from this node meanwhile
            candidates: dict[int, dict[bytes, bytes]] = {}
            try:
                await self.trees.verify_partition(p, self.reaper.collector(candidates))
                self._kick.set()  # a newly built partition can join exchanges
                if candidates.get(p):
                    await self.reaper.reap(p, candidates[p])
            except Exception:  # noqa: BLE001 - this partition waits for the next sweep; the others go on
                if p in self.trees.trees:
                    log.exception("anti-entropy sweep of partition %d failed", p)

    # --- initiator ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = self.clock.now()
            self.offer_pairs(now)
            while (task := self.sched.poll(now)) is not None:
                self._spawn(self._exchange_task(task), f"ae-{task.partition}-{task.peer}")
            wake = self.sched.next_wakeup(now)
            delay = _IDLE_POLL if wake is None else min(_IDLE_POLL, max(0.01, wake - now))
            self._kick.clear()
            await self.clock.wait(self._kick, delay)

    def offer_pairs(self, now: float) -> None:
        """Offer the scheduler built partitions with the peers seen up. A peer that goes down is dropped
        rather than failed (failures back a peer off for minutes); when it is back, its pairs are
        rescheduled within one interval."""
        live = self.liveness
        # The loop comes here every time an exchange ends: recompute only when something it reads changed.
        key = (len(self.trees.built), live.version, self.peers_of)
        if key[0] == self._offer_key[0] and key[1] == self._offer_key[1] and key[2] is self._offer_key[2]:
            return
        self._offer_key = key
        wanted = {}
        for p in sorted(self.trees.built):
            peers = tuple(m for m in self.peers_of.get(p, ()) if live.is_up(m))
            if peers:
                wanted[p] = peers
        if wanted != self._offered:
            self._offered = wanted
            self.sched.set_partitions(wanted, now)

    async def _exchange_task(self, task: ExchangeTask) -> None:
        outcome, differing = ExchangeOutcome.FAILED, 0
        cancelled = False
        try:
            differing = await self.exchange(task.partition, task.peer)
            outcome = ExchangeOutcome.OK
        except NotReady:
            outcome = ExchangeOutcome.OK  # the peer is still building; its own exchanges will come
        except (RpcUnavailable, RpcTimeout):
            outcome = ExchangeOutcome.PEER_UNAVAILABLE
        except (RpcRemoteError, ExchangeError, v.VersionError) as exc:
            log.warning("anti-entropy exchange of partition %d with %s failed: %s", task.partition, task.peer, exc)
        except asyncio.CancelledError:
            cancelled = True  # the node is stopping: not an outcome worth counting
            raise
        except Exception:  # noqa: BLE001 - logged, counted, retried with backoff
            log.exception("anti-entropy exchange of partition %d with %s failed", task.partition, task.peer)
        finally:
            self.sched.finished(task, self.clock.now(), outcome, differing)
            if not cancelled:
                self._count(outcome)
                if outcome is not ExchangeOutcome.OK:
                    pair = self.stats.setdefault(task.partition, PartitionStats()).pair(task.peer)
                    pair.last_failure, pair.last_error = time.time(), outcome.value

    def _count(self, outcome: ExchangeOutcome) -> None:
        self.metrics.ae_exchanges.labels(outcome.value).inc()
        if outcome is ExchangeOutcome.OK:
            self.totals.exchanges_ok += 1
        elif outcome is ExchangeOutcome.PEER_UNAVAILABLE:
            self.totals.exchanges_unavailable += 1
        else:
            self.totals.exchanges_failed += 1
        self._kick.set()

    async def exchange(self, partition: int, peer: str) -> int:
        """One exchange of `partition` with `peer`, repairs included. Returns the number of differing keys."""
        result = await self._walk(partition, peer)
        m = self.metrics
        m.ae_bytes.labels("sent").inc(result.bytes_sent)
        m.ae_bytes.labels("received").inc(result.bytes_received)
        self.totals.walk_bytes_sent += result.bytes_sent
        self.totals.walk_bytes_received += result.bytes_received
        if result.stale_local_segments:
            await self.trees.verify_segments(partition, list(result.stale_local_segments))
        keys = result.differing_keys
        if keys:
            await self._repair(partition, peer, result)
        st = self.stats.setdefault(partition, PartitionStats())  # the ring may have moved it meanwhile
        st.last_exchange, st.last_peer, st.last_differing = time.time(), peer, len(keys)
        st.exchanges += 1
        st.pair(peer).agreed(st.last_exchange, len(keys))
        self.totals.keys_differing += len(keys)
        return len(keys)

    async def _walk(self, partition: int, peer: str) -> ExchangeResult:
        tree = self.trees.trees[partition]
        scanned: dict[int, dict[bytes, bytes]] = {}
        initiator = ExchangeInitiator(tree, lambda seg: scanned[seg], partition)
        request: RootRequest | ChildrenRequest | BucketsRequest | None = initiator.start()
        while request is not None:
            if isinstance(request, BucketsRequest):  # the initiator reads these segments on the answer
                wanted = {b.segment for b in request.buckets if b.segment not in scanned}
                scanned.update(await self.trees.segment_items(partition, sorted(wanted)))
            try:
                raw = await self.peers.call(peer, "ae.x", [partition, encode(request)], ROUND_TIMEOUT)
            except RpcRemoteError as exc:
                if exc.code == "not_ready":
                    raise NotReady(str(exc)) from exc
                raise
            response = decode(bytes(raw))
            if isinstance(response, (RootRequest, ChildrenRequest, BucketsRequest)):
                raise ExchangeError("responder answered with a request")
            request = initiator.receive(response, wire_size=len(raw))
        return initiator.result

    async def _repair(self, partition: int, peer: str, result: ExchangeResult) -> None:
        """Send our states for the keys the peer needs, merge back its states for the keys we need."""
        push_to_peer, pull = result.responder_needs, result.initiator_needs
        replica = self.replica
        keys = sorted(result.differing_keys)
        i = 0
        while i < len(keys):
            n, size = 0, 0
            push: list[list[bytes]] = []
            want: list[bytes] = []
            while i < len(keys) and n < REPAIR_BATCH_KEYS and size < REPAIR_BATCH_BYTES:
                key = keys[i]
                i += 1
                n += 1
                if key in pull:
                    want.append(key)
                    size += len(key)
                if key in push_to_peer:
                    raw = await replica.stored(replica.ref(key))
                    if raw is not None:  # reaped since the walk: nothing to send
                        push.append([key, raw])
                        size += len(key) + len(raw)
            await self._take_tokens(n)
            changed_there, states = await self.peers.call(peer, "ae.repair", [partition, push, want], REPAIR_TIMEOUT)
            got = [(bytes(k), bytes(r)) for k, r in states]
            self.totals.repair_bytes_sent += size
            self.totals.repair_bytes_received += sum(len(k) + len(r) for k, r in got)
            await self._merge(partition, peer, got)
            self.stats.setdefault(partition, PartitionStats()).pushed += int(changed_there)
            self.totals.keys_pushed += int(changed_there)

    async def _take_tokens(self, n: int) -> None:
        while n > 0:
            n -= self.sched.grant_repairs(n, self.clock.now())
            if n > 0:
                await self.clock.sleep(max(0.005, self.sched.repair_wait(n, self.clock.now())))

    async def _merge(self, partition: int, peer: str, states: list[tuple[bytes, bytes]]) -> int:
        """Merge states in with causality (queued together: group-committed), durably; count the keys whose copy
        changed."""
        replica = self.replica
        refs = [replica.ref(k) for k, _ in states]
        if any(ref.partition != partition for ref in refs):
            raise RpcRemoteError("bad_request", f"a repaired key is not in partition {partition}")
        decoded = [v.decode(raw) for _, raw in states]
        # Durable, as hints are: a repaired copy may be what later lets another copy go (a reaped tombstone, a
        # handed-off partition). One gather: the merges share group commits and one fsync per batch.
        changed = await asyncio.gather(*(replica.merge(ref, st, durable=True) for ref, st in zip(refs, decoded)))
        n = sum(1 for c in changed if c)
        st = self.stats.setdefault(partition, PartitionStats())
        st.repairs += n
        st.pair(peer).repairs += n
        self.totals.keys_repaired += n
        self.metrics.ae_keys_repaired.inc(n)
        return n

    # --- responder ------------------------------------------------------------------------------------

    def _local_partition(self, payload: Any, method: str) -> int:
        try:
            partition = int(payload[0])
        except (TypeError, ValueError, IndexError) as exc:
            raise RpcRemoteError("bad_request", f"{method} payload: {exc}") from exc
        if partition not in self.trees.built:
            raise RpcRemoteError("not_ready", f"{self.placement.node_id} has no built tree for partition {partition}")
        return partition

    async def _rpc_exchange(self, payload: Any, peer: str) -> Any:
        partition = self._local_partition(payload, "ae.x")
        try:
            request = decode(bytes(payload[1]))
        except (ExchangeError, TypeError, IndexError) as exc:
            raise RpcRemoteError("bad_request", f"ae.x payload: {exc}") from exc
        if not isinstance(request, (RootRequest, ChildrenRequest, BucketsRequest)):
            raise RpcRemoteError("bad_request", "ae.x carries a response, not a request")
        if isinstance(request, RootRequest) and hasattr(self, "sched"):
            self.sched.answered(partition, peer, self.clock.now())
        tree = self.trees.trees[partition]
        scanned: dict[int, dict[bytes, bytes]] = {}
        if isinstance(request, BucketsRequest):
            segs = sorted({b.segment for b in request.buckets if 0 <= b.segment < tree.num_segments})
            scanned = await self.trees.segment_items(partition, segs)
            # Our own leaf may be stale (a lost delta): a segment asked for at depth 0 whose items do not
            # add up to our leaf gets rescanned, like the initiator does with stale_local_segments.
            stale = [b.segment for b in request.buckets
                     if b.depth == 0 and b.segment in scanned
                     and _leaf_of(scanned[b.segment]) != tree.segment_hash(b.segment)]
            if stale:
                self._spawn(self._fix(partition, stale), f"ae-fix-{partition}")
        response = answer(tree, request, lambda seg: scanned.get(seg, {}))
        if isinstance(response, RootResponse) and response.equal:  # the whole exchange, seen from this side
            self.stats.setdefault(partition, PartitionStats()).pair(peer).agreed(time.time(), 0)
        return encode(response)

    async def _fix(self, partition: int, segments: list[int]) -> None:
        await self.trees.verify_segments(partition, segments)

    async def _rpc_repair(self, payload: Any, peer: str) -> Any:
        partition = self._local_partition(payload, "ae.repair")
        try:
            push = [(bytes(k), bytes(r)) for k, r in payload[1]]
            want = [bytes(k) for k in payload[2]]
        except (TypeError, ValueError, IndexError) as exc:
            raise RpcRemoteError("bad_request", f"ae.repair payload: {exc}") from exc
        try:
            changed = await self._merge(partition, peer, push)
        except v.VersionError as exc:
            raise RpcRemoteError("bad_request", f"ae.repair: {exc}") from exc
        replica = self.replica
        out = []
        for key in want:
            ref = replica.ref(key)
            if ref.partition != partition:
                raise RpcRemoteError("bad_request", f"key {key!r} is not in partition {partition}")
            raw = await replica.stored(ref)
            if raw is not None:
                out.append([key, raw])
        if push or out:
            st = self.stats.setdefault(partition, PartitionStats())
            st.last_exchange, st.last_peer = time.time(), peer
        return [changed, out]

    # --- observability --------------------------------------------------------------------------------

    def leaf_hex(self, partition: int, segment: int) -> str | None:
        """This node's Merkle leaf hash of one segment of a partition; None while its tree is not built (or
        the node does not replicate the partition)."""
        if not self.settings.enabled or partition not in self.trees.built:
            return None
        return self.trees.trees[partition].segment_hash(segment).hex()

    def status(self) -> dict[str, Any]:
        now = time.time()
        parts: dict[str, Any] = {}
        if self.settings.enabled:
            for p in self.partitions:
                st = self.stats[p]
                parts[str(p)] = {
                    "root": self.trees.root_hex(p) if p in self.trees.built else None,
                    "built": p in self.trees.built,
                    "last_exchange": st.last_exchange,
                    "last_exchange_ago_s": None if st.last_exchange is None else round(now - st.last_exchange, 3),
                    "last_peer": st.last_peer,
                    "exchanges": st.exchanges,
                    "last_differing": st.last_differing,
                    "repairs": st.repairs,
                    "pushed": st.pushed,
                    "pairs": {peer: _pair_status(pair, now) for peer, pair in sorted(st.pairs.items())},
                    "peers": list(self.peers_of.get(p, ())),
                }
        running = [] if not self.settings.enabled else [
            {"partition": t.partition, "peer": t.peer} for t in self.sched.running
        ]
        return {
            "antientropy": {
                "enabled": self.settings.enabled,
                "exchange_interval_s": self.settings.exchange_interval_s,
                "trees_built": len(self.trees.built),
                "trees_total": len(self.partitions) if self.settings.enabled else 0,
                "built_in_s": self.built_in_s,
                "snapshot_loaded": self.snapshot_loaded,
                "running": running,
                "totals": {
                    **asdict(self.totals),
                    "scan_keys": self.trees.stats.keys,
                    "stale_segments_fixed": self.trees.stats.segments_fixed,
                    "stale_segments_unsettled": self.trees.stats.segments_retried,
                    "tombstones": asdict(self.reaper.stats),
                },
                "partitions": parts,
            }
        }

    def gauges(self) -> Iterable[Metric]:
        if not self.settings.enabled:
            return
        yield gauge("dynamostore_antientropy_trees_built", "Local partitions whose Merkle tree is built",
                    float(len(self.trees.built)))
        yield gauge("dynamostore_antientropy_exchanges_running", "Anti-entropy exchanges in progress",
                    float(len(self.sched.running)))
        yield gauge("dynamostore_antientropy_tombstones_reaped", "Tombstone records this node removed",
                    float(self.reaper.stats.reaped))


def _pair_status(pair: PairStats, now: float) -> dict[str, Any]:
    return {
        "last_agreed_ago_s": None if pair.last_agreed is None else round(now - pair.last_agreed, 1),
        "last_differing": pair.last_differing,
        "exchanges": pair.exchanges,
        "keys_differing": pair.keys_differing,
        "repairs": pair.repairs,
        "last_failure_ago_s": None if pair.last_failure is None else round(now - pair.last_failure, 1),
        "last_error": pair.last_error,
    }


def _leaf_of(items: dict[bytes, bytes]) -> bytes:
    return int_to_hash(sum_items(items.items()))
