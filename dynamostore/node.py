"""One dynamostore node process: the composition root.

`Node` builds every part and hands each the narrow views it needs (`dynamostore.views`): storage and the
local replica, the RPC client and server, the failure detector (`cluster.liveness`) and peer calls
(`cluster.peers`), the cluster state (`cluster.state`), the coordinator (`kv.coordinator`, which sees this
node as its `ClusterView`), the membership service (`cluster.membership`), the background services
(`services/`), and the HTTP API (`api/`). No service holds the node.

`Node.start()` brings the parts up in dependency order; `Node.stop()` takes them down in reverse, letting
in-flight writes drain into storage. Background work runs as supervised tasks (`runtime.Supervisor`): a
reference is kept and any error is logged instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from dynamostore import native
from dynamostore.api.admin import AdminApi, admin_routes
from dynamostore.api.debug import DebugApi, debug_routes
from dynamostore.api.kv import KvApi
from dynamostore.api.openapi import spec
from dynamostore.api.ops import OpsApi, ReadyFacts
from dynamostore.api.routes import Access, build_server
from dynamostore.api.server import HttpServer
from dynamostore.api.tokens import TokenApi
from dynamostore.api.ui import ConsoleApi, console_routes
from dynamostore.cluster.liveness import Detector, Heartbeater
from dynamostore.cluster.membership import MembershipService
from dynamostore.cluster.peers import LivenessView, PeerCalls
from dynamostore.cluster.state import ClusterState
from dynamostore.config import NodeConfig
from dynamostore.kv import versioning as v
from dynamostore.kv.context import ContextCodec
from dynamostore.kv.coordinator import Coordinator, ForwardError, Unavailable, WriteOptions
from dynamostore.kv.inspect import NodeRecords
from dynamostore.kv.replica import LocalReplica, SiblingLimitError
from dynamostore.metrics import NodeMetrics, counter, gauge
from dynamostore.net.rpc import RpcClient, RpcRemoteError, RpcRouter, RpcServer, RpcUnavailable
from dynamostore.outcome import Then
from dynamostore.runtime import LoopClock, Supervisor
from dynamostore.security.node_security import NodeSecurity
from dynamostore.services.antientropy import AntiEntropyService
from dynamostore.services.handoff import HandoffService
from dynamostore.services.history import HistoryService, Reading
from dynamostore.services.transfer import TransferService
from dynamostore.storage.store import Storage
from dynamostore.views import Service
from ring.membership import MemberInfo, MembershipState, Status, pending_write_targets
from ring.placement import Ring, initial_ring
from ring.tokens import ApiToken

log = logging.getLogger(__name__)


def _bad(msg: str) -> RpcRemoteError:
    return RpcRemoteError("bad_request", msg)


def _info(m: Any) -> MemberInfo:
    return MemberInfo(m.id, m.http_host, m.http_port, m.rpc_host, m.rpc_port)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        q = config.file.quorum
        self.repair_wait = q.repair_wait_ms / 1000
        self.replica_timeout = q.replica_timeout_ms / 1000
        self.read_all = q.read_all
        # the address book: every member of the cluster file, and this node (a joiner is not in the file);
        # replaced by the replicated membership as it changes
        addresses = {m.id: _info(m) for m in config.cluster.members}
        addresses[self.node_id] = _info(config.me)
        founders = [m.id for m in config.cluster.members]
        ring = initial_ring(founders, config.cluster.partitions) if config.founder else None
        self.cluster = ClusterState(self.node_id, addresses, ring, config.cluster.n_val, 1 if config.founder else 0)
        self.metrics = NodeMetrics(self.node_id)
        self.started_at = time.time()
        self.clock = LoopClock()
        self.tasks = Supervisor()
        self._catching_up = False
        self.stop_step = ""
        # TLS contexts, peer identities, the HTTP access policy; refuses to expose a node without them
        self.security = NodeSecurity(config)
        bind = config.me.rpc_host
        self.rpc_client = RpcClient(self.node_id, config.secret, connect_timeout=0.5,
                                    local_host=None if bind in ("0.0.0.0", "::", "127.0.0.1", "localhost") else bind,
                                    expect=self._member_at, **self.security.rpc_client_options())
        self.router = RpcRouter()
        self.rpc_server: RpcServer | None = None
        self.http_runner: HttpServer | None = None
        self.services: list[Service] = []
        # built in start(), in this order
        self.storage: Storage
        self.replica: LocalReplica
        self.detector: Detector
        self.liveness: LivenessView
        self.peers: PeerCalls
        self.heartbeater: Heartbeater
        self.coordinator: Coordinator
        self.membership: MembershipService
        self.handoff: HandoffService
        self.antientropy: AntiEntropyService
        self.transfers: TransferService
        self.history: HistoryService

    # --- ClusterView (what the coordinator sees of its node) -------------------------------------------

    @property
    def ring(self) -> Ring:
        ring = self.cluster.ring
        if ring is None:
            raise Unavailable(f"{self.node_id} is not a member of the cluster yet (waiting to join)")
        return ring

    @property
    def n_val(self) -> int:
        return self.cluster.n_val

    @property
    def ring_epoch(self) -> int:
        return self.cluster.epoch

    def extra_targets(self, partition: int) -> tuple[str, ...]:
        """New owners that must also receive writes for this key partition while it moves to them."""
        st = self.cluster.state
        return pending_write_targets(st, partition) if st.transfers else ()

    def up_set(self) -> set[str]:
        return self.detector.up_set(self.node_id)

    @property
    def liveness_version(self) -> int:
        return self.detector.version

    def may_hint(self, primary: str) -> bool:
        return self.handoff.may_hint(primary)

    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        return await self.peers.call(node, method, payload, timeout)

    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        self.peers.call_then(node, method, payload, timeout, then)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.spawn(coro, name)

    # --- wiring -----------------------------------------------------------------------------------------

    def _watch_members(self, state: MembershipState) -> None:
        """A newly applied membership: start watching members this node had not heard of, stop watching the
        removed ones (they leave this node's view: liveness, the reaper's agreement, /status)."""
        now = asyncio.get_running_loop().time()
        for mid, m in state.members.items():
            if mid == self.node_id:
                continue
            if m.status is Status.REMOVED:
                if self.detector.remove_peer(mid):
                    self.heartbeater.unwatch(mid)
            elif self.detector.add_peer(mid, now):
                self.heartbeater.watch(mid)

    def _known_nodes(self) -> list[str]:
        """Every node that may hold a copy or a hint: the known addresses but removed members."""
        st = self.cluster.state
        return sorted(m for m in self.cluster.addresses
                      if m not in st.members or st.members[m].status is not Status.REMOVED)

    def _hinted_delivered(self, target: str, n: int) -> None:
        self.metrics.hints_delivered.labels(target).inc(n)

    async def _ping_member(self, m: MemberInfo) -> None:
        await self.rpc_client.call((m.rpc_host, m.rpc_port), "ping", None, timeout=1.0)

    def _delay(self, peer: str, seconds: float) -> bool:
        if peer not in self.cluster.addresses:
            return False
        self.rpc_client.set_delay(self.peers.address(peer), seconds)
        return True

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        me = cfg.me
        f = cfg.file
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = await Storage.open(cfg.data_dir / "store", map_size=f.storage.map_size_gb << 30,
                                          lmdb_sync=f.storage.lmdb_sync)
        self.replica = await LocalReplica.open(
            self.node_id,
            self.storage,
            partitions=cfg.cluster.partitions,
            segments=f.antientropy.segments,
            max_siblings=f.limits.max_siblings,
            warn_siblings=f.limits.warn_siblings,
        )
        loop = asyncio.get_running_loop()
        det = f.detector
        self.detector = Detector([m for m in self.cluster.addresses if m != self.node_id], det.down_after_ms / 1000,
                                 loop.time())
        self.liveness = LivenessView(self.detector, self.node_id)
        self.peers = PeerCalls(self.rpc_client, self.cluster.addresses, self.detector, self.metrics.calls)
        self.heartbeater = Heartbeater(
            self.detector,
            self._probe,
            det.heartbeat_ms / 1000,
            is_hard=lambda e: isinstance(e, RpcUnavailable),
            on_up=self.peers.peer_up,
        )
        self.coordinator = Coordinator(self, self.replica)
        self.membership = MembershipService(
            f.raft, node_id=self.node_id, cluster=cfg.cluster, founder=cfg.founder, data_dir=cfg.data_dir,
            peers=self.peers, methods=self.router, liveness=self.liveness, publish=self.cluster.apply,
            bootstrap_token=self.security.bootstrap_token,
        )
        self.handoff = HandoffService(
            f.handoff, replica=self.replica, peers=self.peers, liveness=self.liveness, methods=self.router,
            spawner=self.tasks, clock=self.clock, partitions=cfg.cluster.partitions, delivered=self._hinted_delivered,
            placement=self.cluster,
        )
        self.antientropy = AntiEntropyService(
            f.antientropy, placement=self.cluster, liveness=self.liveness, peers=self.peers, methods=self.router,
            replica=self.replica, storage=self.storage, metrics=self.metrics, clock=self.clock,
            nodes=self._known_nodes,
        )
        self.transfers = TransferService(
            f.transfer, placement=self.cluster, replica=self.replica, peers=self.peers, methods=self.router,
            propose=self.membership.propose, clock=self.clock,
        )
        # Who hears of what: a new membership (this node first: it watches new peers), a peer back up.
        self.cluster.listeners += [self._watch_members, self.antientropy.ring_changed, self.transfers.ring_changed,
                                   self.handoff.ring_changed]
        self.peers.on_up += [self.handoff.peer_up, self.antientropy.peer_up]
        self.history = HistoryService(self._reading, self.clock)
        # membership first: replaying its log sets the ring the others work with
        self.services = [self.membership, self.handoff, self.antientropy, self.transfers, self.history]
        self._register_rpc()
        for s in self.services:  # before the RPC server, so their methods are there for the first peer
            await s.start()
        self.rpc_server = RpcServer(self.node_id, cfg.secret, self.router, host=me.rpc_host, port=me.rpc_port,
                                    **self.security.rpc_server_options())
        await self.rpc_server.start()
        self.heartbeater.start()
        self.metrics.add_scraped(self._scraped)
        limits = f.limits
        kv = KvApi(self.coordinator, ContextCodec(cfg.secret), f.quorum, limits, self.n_val)
        ops = OpsApi(self.node_id, self.status, self.metrics,
                     spec(self.n_val, limits.max_value_bytes, limits.max_key_bytes),
                     self._delay if f.testing_faults else None, self._ready_facts)
        admin = AdminApi(self.membership, self.liveness, self._ping_member)
        debug = DebugApi(placement=self.cluster, liveness=self.liveness, peers=self.peers, local=self._inspect_local,
                         locate=self.replica.ref, max_key_bytes=limits.max_key_bytes)
        console_exact, console_prefixed = console_routes(ConsoleApi(self.history.document))
        sec = self.security
        self.http_runner = build_server(kv, ops, admin_routes(admin), self.metrics, extra=console_exact,
                                        prefixed=console_prefixed | debug_routes(debug), tokens=TokenApi(self.membership),
                                        access=Access(sec.policy, self._tokens) if sec.auth else None,
                                        listeners=f.listeners)
        await self.http_runner.start(me.http_host, me.http_port, reuse_address=True, ssl=sec.http_ssl)
        log.info("node %s serving %s://%s:%d (rpc %s:%d%s, client tokens %s); compiled modules: %s", self.node_id,
                 "https" if sec.tls else "http", me.http_host, me.http_port, me.rpc_host, me.rpc_port,
                 ", mutual TLS" if sec.tls else "", "required" if sec.auth else "off", native.status)

    def _ready_facts(self) -> ReadyFacts:
        """What /health/ready decides from (api/ops.py `ready_reasons`)."""
        applied = self.membership.applied
        me = applied.members.get(self.node_id)
        return ReadyFacts(store_usable=self.storage.usable, membership_applied=applied.initialized,
                          raft_leader=self.membership.raft.leader, ring_known=self.cluster.ring is not None,
                          member_status=me.status.value if me is not None else None)

    def _tokens(self) -> Mapping[str, ApiToken]:
        """The API tokens requests are checked against: the committed membership's. A node that has not
        joined yet knows none: until it does, the cluster file's bootstrap admin token opens its /status
        (what `dynamostore admin join --new URL` reads); it serves no data anyway."""
        st = self.membership.state
        if st.initialized:
            return st.tokens
        boot = self.security.bootstrap_token
        return {boot.id: boot} if boot is not None else {}

    def _member_at(self, addr: tuple[str, int]) -> str | None:
        """The member whose RPC address `addr` is: the node a TLS peer there must prove to be."""
        for mid, m in self.cluster.addresses.items():
            if (m.rpc_host, m.rpc_port) == addr:
                return mid
        return None

    async def stop(self) -> None:
        # Stop taking requests first (clients, then peers), so nothing changes the data after the
        # services saved their state (anti-entropy trees), then the services, then storage.
        self.stop_step = "http"
        if self.http_runner:
            await self.http_runner.stop()  # in-flight requests finish (up to 3 s), idle connections close
        self.stop_step = "rpc server"
        if self.rpc_server:
            await self.rpc_server.stop()
        for s in self.services[::-1]:  # (not reversed(): mypyc cannot compile it over list[Any])
            self.stop_step = type(s).__name__
            await s.stop()
        self.stop_step = "background tasks"
        await self.heartbeater.stop()
        await self.tasks.stop()
        await self.rpc_client.close()
        self.stop_step = "storage"
        await self.storage.close()
        self.stop_step = "stopped"
        log.info("node %s stopped", self.node_id)

    async def _probe(self, peer: str, timeout: float) -> None:
        _, epoch = await self.rpc_client.call(self.peers.address(peer), "ping", self.ring_epoch, timeout=timeout)
        self.saw_epoch(peer, int(epoch))

    def saw_epoch(self, peer: str, epoch: int) -> None:
        """Internal messages carry the sender's ring epoch: a node that sees a newer one is behind and
        catches up (a linearizable read of the membership waits until its log has what the leader has)."""
        if epoch > self.ring_epoch and not self._catching_up:
            log.info("%s is at ring epoch %d, this node at %d: catching up", peer, epoch, self.ring_epoch)
            self._catching_up = True
            self.tasks.spawn(self._catch_up(), "catch-up")

    async def _catch_up(self) -> None:
        try:
            await self.membership.read_barrier(timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - retried at the next newer epoch seen
            log.info("catch-up of the membership log failed: %s", exc)
        finally:
            self._catching_up = False

    # --- internal RPC methods -------------------------------------------------------------------------

    def _register_rpc(self) -> None:
        r = self.router
        r.register("ping", self._rpc_ping)
        r.register("kv.get", self._rpc_get)
        r.register("kv.put", self._rpc_put)
        r.register("kv.coord_put", self._rpc_coord_put)
        r.register("kv.inspect", self._rpc_inspect)

    async def _rpc_ping(self, payload: Any, peer: str) -> Any:
        if isinstance(payload, int):
            self.saw_epoch(peer, payload)
        return [self.node_id, self.ring_epoch]

    # kv.get and kv.put answer without a task: the bytes at once, or the storage commit's future.

    def _rpc_get(self, payload: Any, peer: str) -> Any:
        try:
            key, hint_for = payload
            ref = self.replica.ref(bytes(key))
            if hint_for is not None and type(hint_for) is not str:
                raise TypeError("hint_for must be a node id")
        except (TypeError, ValueError) as exc:
            raise _bad(f"kv.get payload: {exc}") from exc
        return self.replica.read_now(ref, hint_for)

    def _rpc_put(self, payload: Any, peer: str) -> Any:
        try:
            # [key, state, durable, hint_for] and, from a coordinator, the digest of the state it replaced
            key, raw, durable, hint_for = payload[:4]
            replaces = payload[4] if len(payload) > 4 else None
            if replaces is not None and type(replaces) is not bytes:
                raise TypeError("the replaced digest is not bytes")
            ref = self.replica.ref(bytes(key))
            wire = bytes(raw)
            state = v.decode(wire)
        except (TypeError, ValueError) as exc:
            raise _bad(f"kv.put payload: {exc}") from exc
        if hint_for is not None and not self.handoff.accepts_hint(str(hint_for)):
            raise RpcRemoteError("hint_limit", f"{self.node_id} holds too many hints for {hint_for}")
        return self.replica.merge(ref, state, durable=bool(durable), hint_for=hint_for, wire=wire, replaces=replaces)

    async def _rpc_coord_put(self, payload: Any, peer: str) -> Any:
        try:
            # [key, value, content type, context vector, options] and, when the context has one, its dot
            # cloud (an earlier release refuses the sixth element: the forwarder then resends without it)
            key, value, ctype, ctx_items, wire_opts = payload[:5]
            ctx = {str(a): int(c) for a, c in ctx_items}
            opts = WriteOptions.from_wire(wire_opts)
            dots = tuple(sorted({(str(a), int(c)) for a, c in payload[5]})) if len(payload) > 5 else ()
            if len(payload) > 6:
                raise ValueError(f"{len(payload)} elements, expected 5 or 6")
        except (TypeError, ValueError) as exc:
            raise _bad(f"kv.coord_put payload: {exc}") from exc
        # A forwarded write is coordinated here or fails: never forwarded again (no loops).
        try:
            res = await self.coordinator.put(bytes(key), value, str(ctype), ctx, opts, dots)
        except Unavailable as unavailable:
            raise RpcRemoteError("unavailable", str(unavailable)) from unavailable
        except SiblingLimitError as too_many:
            raise RpcRemoteError("conflict", str(too_many)) from too_many
        except ForwardError as refused:
            raise RpcRemoteError(refused.code, str(refused)) from refused
        return [res.coordinator, res.acks, res.hinted, res.durable, v.encode(res.state)]

    async def _rpc_inspect(self, payload: Any, peer: str) -> Any:
        key = payload[0] if isinstance(payload, list) and payload else None
        if type(key) is not bytes:  # (bytes(n) of an int would allocate n bytes)
            raise _bad("kv.inspect payload: expected [key bytes]")
        return (await self._inspect_local(key)).to_wire()

    async def _inspect_local(self, key: bytes) -> NodeRecords:
        """This node's stored records of a key: its data record, every hint record it keeps for it (for any
        node it knows or holds hints for), and its Merkle leaf hash of the key's segment (the key inspector)."""
        ref = self.replica.ref(key)
        targets = sorted((set(self.cluster.addresses) | set(self.handoff.pending())) - {self.node_id})
        return NodeRecords(await self.replica.stored(ref), await self.replica.hint_records(ref, targets),
                           self.antientropy.leaf_hex(ref.partition, ref.segment))

    # --- observability --------------------------------------------------------------------------------

    def _reading(self) -> Reading:
        """The cumulative counters the console's time series are differences of (services/history.py)."""
        counts, buckets = self.metrics.requests.snapshot()
        ae = self.antientropy.totals
        return Reading(
            t=time.time(), mono=self.clock.now(), counts=counts, buckets=buckets,
            hints_pending=self.handoff.pending(), hints_delivered=self.handoff.delivered_total(),
            siblings_written=self.replica.siblings_written, siblings_merged=self.replica.siblings_merged,
            ae_exchanges=ae.exchanges_ok + ae.exchanges_failed + ae.exchanges_unavailable,
            ae_keys_differing=ae.keys_differing, ae_keys_repaired=ae.keys_repaired,
        )

    def status(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        members = []
        view = self.detector.view(loop.time())
        st = self.membership.state
        removed: list[str] = []
        for mid, m in sorted(self.cluster.addresses.items()):
            status = st.members[mid].status.value if mid in st.members else "standby"
            if status == Status.REMOVED.value and mid != self.node_id:
                removed.append(mid)  # out of the cluster: out of this view (named below)
                continue
            entry: dict[str, Any] = {"id": mid, "http": f"{m.http_host}:{m.http_port}",
                                     "rpc": f"{m.rpc_host}:{m.rpc_port}", "status": status}
            entry["liveness"] = {"up": True, "self": True} if mid == self.node_id else view.get(mid, {"up": False})
            members.append(entry)
        ring = self.cluster.ring
        out: dict[str, Any] = {
            "node": self.node_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "ring": {
                "epoch": self.ring_epoch,
                "partitions": ring.num_partitions if ring else 0,
                "n_val": self.n_val,
                "owned": [p for p, o in enumerate(ring.owners) if o == self.node_id] if ring else [],
                "owners": list(ring.owners) if ring else [],
                # each partition's primaries, in preference order (the ring caches its walks)
                "replicas": [ring.preference_list(p, self.n_val)[0] for p in range(ring.num_partitions)]
                if ring else [],
            },
            "members": members,
            "removed_members": removed,
            "storage": self.storage.stats(),
            "coordinator": {"read_repairs": self.coordinator.read_repairs, "forwarded": self.coordinator.forwarded},
            "siblings": {"written": self.replica.siblings_written, "merged": self.replica.siblings_merged},
            "compiled_modules": {"active": native.active, "status": native.status},
            "rpc": {"tls": self.security.tls, "versions": list(self.rpc_client.versions),
                    "inbound": self.rpc_server.peers() if self.rpc_server else {}, "outbound": self.rpc_client.peers()},
        }
        for s in self.services:
            out.update(s.status())
        return out

    def _scraped(self) -> Iterable[Metric]:
        """What /metrics reads from the node's live state: gauges, and counters kept as plain numbers."""
        yield counter("dynamostore_read_repairs", "Replicas repaired after a read", float(self.coordinator.read_repairs))
        up = self.up_set()
        for mid in self.cluster.addresses:
            yield gauge("dynamostore_peer_up", "1 when this node sees the peer up", float(mid in up), {"peer": mid})
        yield gauge("dynamostore_ring_epoch", "Ring epoch this node serves with", float(self.ring_epoch))
        for k, val in self.storage.stats().items():
            yield gauge(f"dynamostore_storage_{k}", f"storage engine statistic {k}", float(val))
        sib = CounterMetricFamily("dynamostore_siblings_created", "Concurrent values formed on this node: by writes "
                                  "it coordinated (written) or by merging copies from elsewhere (merged)",
                                  labels=["how"])
        sib.add_metric(["written"], float(self.replica.siblings_written))
        sib.add_metric(["merged"], float(self.replica.siblings_merged))
        yield sib
        for s in self.services:
            yield from s.gauges()
