"""One dynamostore node process: wires storage, replica, RPC, liveness, coordinators and the HTTP API.

`Node.start()` brings the parts up in dependency order; `Node.stop()` takes them down in reverse, letting
in-flight writes drain into storage. Background work (heartbeats, hinted handoff, anti-entropy, read repair)
runs as supervised tasks: `spawn` keeps a reference and logs any error instead of letting it vanish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from prometheus_client.core import Metric

from dynamostore import native
from dynamostore.kv import versioning as v
from dynamostore.services.antientropy import AntiEntropyWorker
from dynamostore.config import NodeConfig
from dynamostore.kv.coordinator import Coordinator, ForwardError, Unavailable, WriteOptions
from dynamostore.services.handoff import HandoffWorker
from dynamostore.api.server import HttpServer
from dynamostore.cluster.membership import MembershipService
from dynamostore.services.transfer import TransferWorker
from dynamostore.cluster.liveness import Detector, Heartbeater
from dynamostore.metrics import NodeMetrics, gauge
from dynamostore.kv.replica import LocalReplica, SiblingLimitError
from dynamostore.net.rpc import RpcClient, RpcRemoteError, RpcRouter, RpcServer, RpcTimeout, RpcUnavailable
from dynamostore.outcome import Then, then_from
from dynamostore.storage.store import Storage
from ring.membership import MembershipState, pending_write_targets
from ring.placement import Ring, initial_ring

log = logging.getLogger(__name__)


def _bad(msg: str) -> RpcRemoteError:
    return RpcRemoteError("bad_request", msg)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        self.n_val = config.cluster.n_val
        self.repair_wait = config.file.quorum.repair_wait_ms / 1000
        self.replica_timeout = config.file.quorum.replica_timeout_ms / 1000
        self.read_all = config.file.quorum.read_all
        # addresses of every member; replaced by the replicated membership as it changes
        self.members: dict[str, Any] = {m.id: m for m in config.cluster.members}
        self.members[self.node_id] = config.me
        founders = [m.id for m in config.cluster.members]
        self._ring: Ring | None = initial_ring(founders, config.cluster.partitions) if config.founder else None
        self.ring_epoch = 1 if config.founder else 0
        self.membership_state: MembershipState | None = None
        self.metrics = NodeMetrics(self.node_id)
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self._catching_up = False
        self.stop_step = ""
        self.storage: Storage
        self.replica: LocalReplica
        self.coordinator: Coordinator
        bind = config.me.rpc_host
        self.rpc_client = RpcClient(self.node_id, config.secret, connect_timeout=0.5,
                                    local_host=None if bind in ("0.0.0.0", "::", "127.0.0.1", "localhost") else bind)
        self.router = RpcRouter()
        self.rpc_server: RpcServer | None = None
        self.detector: Detector
        self.heartbeater: Heartbeater
        self.http_runner: HttpServer | None = None
        self.services: list[Any] = []  # background workers with start()/stop()/status()/gauges()/peer_up()
        self.handoff: HandoffWorker
        self.antientropy: AntiEntropyWorker
        self.membership: MembershipService
        self.transfers: TransferWorker

    # --- ClusterView (what the coordinator needs) ------------------------------------------------------

    @property
    def ring(self) -> Ring:
        if self._ring is None:
            raise Unavailable(f"{self.node_id} is not a member of the cluster yet (waiting to join)")
        return self._ring

    def extra_targets(self, partition: int) -> tuple[str, ...]:
        """New owners that must also receive writes for this key partition while it moves to them."""
        st = self.membership_state
        return pending_write_targets(st, partition) if st is not None and st.transfers else ()

    def on_membership(self, state: MembershipState) -> None:
        """Apply a new committed membership: ring, epoch, member addresses, peers to watch."""
        loop = asyncio.get_running_loop()
        self.membership_state = state
        self._ring = state.ring
        self.n_val = state.n_val
        if state.epoch != self.ring_epoch:
            log.info("ring epoch %d -> %d", self.ring_epoch, state.epoch)
        self.ring_epoch = state.epoch
        for mid, info in state.members.items():
            self.members[mid] = info
            if mid != self.node_id and self.detector.add_peer(mid, loop.time()):
                self.heartbeater.watch(mid)
        for s in self.services:
            hook = getattr(s, "ring_changed", None)
            if hook:
                hook(state)

    def up_set(self) -> set[str]:
        return self.detector.up_set(self.node_id)

    @property
    def liveness_version(self) -> int:
        return self.detector.version

    def may_hint(self, primary: str) -> bool:
        return self.handoff.may_hint(primary)

    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        m = self.members[node]
        loop = asyncio.get_running_loop()
        try:
            res = await self.rpc_client.call((m.rpc_host, m.rpc_port), method, payload, timeout=timeout)
        except RpcUnavailable:
            self.detector.failure(node, loop.time(), "unavailable", hard=True)
            self._count(method, "unavailable")
            raise
        except RpcTimeout:
            self.detector.failure(node, loop.time(), "timeout", hard=False)
            self._count(method, "timeout")
            raise
        except RpcRemoteError:
            self.detector.success(node, loop.time())
            self._count(method, "error")
            raise
        if self.detector.success(node, loop.time()):
            self._peer_up(node)
        self._count(method, "ok")
        return res

    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        """`call` with its outcome handed to `then(result, exc)`: on an open connection without a future, a task
        or a loop hop (the replica fan-out hot path)."""
        m = self.members[node]

        def done(result: Any, exc: BaseException | None) -> None:
            self._observe(node, method, exc)
            then(result, exc)

        if not self.rpc_client.call_then((m.rpc_host, m.rpc_port), method, payload, timeout=timeout, then=done):
            then_from(asyncio.ensure_future(self.call(node, method, payload, timeout)), then)  # call() observes

    def _count(self, method: str, outcome: str) -> None:
        self.metrics.calls.count(method, outcome)

    def _observe(self, node: str, method: str, exc: BaseException | None) -> None:
        """Feed the outcome of a call made with call_then to the detector and the metrics."""
        now = asyncio.get_running_loop().time()
        if exc is None or isinstance(exc, RpcRemoteError):
            if self.detector.success(node, now):
                self._peer_up(node)
            outcome = "ok" if exc is None else "error"
        elif isinstance(exc, RpcUnavailable):
            self.detector.failure(node, now, "unavailable", hard=True)
            outcome = "unavailable"
        else:
            self.detector.failure(node, now, "timeout", hard=False)
            outcome = "timeout"
        self._count(method, outcome)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _peer_up(self, peer: str) -> None:
        for s in self.services:
            hook = getattr(s, "peer_up", None)
            if hook:
                hook(peer)

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        me = cfg.me
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = await Storage.open(cfg.data_dir / "store", map_size=cfg.file.storage.map_size_gb << 30)
        self.replica = await LocalReplica.open(
            self.node_id,
            self.storage,
            partitions=cfg.cluster.partitions,
            segments=cfg.file.antientropy.segments,
            max_siblings=cfg.file.limits.max_siblings,
            warn_siblings=cfg.file.limits.warn_siblings,
        )
        self.coordinator = Coordinator(self, self.replica)
        self.handoff = HandoffWorker(self, cfg.file.handoff)
        self.antientropy = AntiEntropyWorker(self, cfg.file.antientropy)
        self.membership = MembershipService(self, cfg.file.raft)
        self.transfers = TransferWorker(self, cfg.file.transfer)
        # membership first: replaying its log sets the ring the others work with
        self.services = [self.membership, self.handoff, self.antientropy, self.transfers]
        loop = asyncio.get_running_loop()
        peers = [m for m in self.members if m != self.node_id]
        det = cfg.file.detector
        self.detector = Detector(peers, det.down_after_ms / 1000, loop.time())
        self.heartbeater = Heartbeater(
            self.detector,
            self._probe,
            det.heartbeat_ms / 1000,
            is_hard=lambda e: isinstance(e, RpcUnavailable),
            on_up=self._peer_up,
        )
        self._register_rpc()
        for s in self.services:  # before the RPC server, so their methods are there for the first peer
            await s.start()
        self.rpc_server = RpcServer(self.node_id, cfg.secret, self.router, host=me.rpc_host, port=me.rpc_port)
        await self.rpc_server.start()
        self.heartbeater.start()
        self.metrics.add_gauges(self._gauges)
        from dynamostore.api.routes import build_server  # the HTTP layer depends on the node, not the reverse

        self.http_runner = build_server(self)
        await self.http_runner.start(me.http_host, me.http_port, reuse_address=True)
        log.info("node %s serving http://%s:%d (rpc %s:%d); compiled modules: %s", self.node_id, me.http_host,
                 me.http_port, me.rpc_host, me.rpc_port, native.status)

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
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.rpc_client.close()
        self.stop_step = "storage"
        await self.storage.close()
        self.stop_step = "stopped"
        log.info("node %s stopped", self.node_id)

    async def _probe(self, peer: str, timeout: float) -> None:
        m = self.members[peer]
        _, epoch = await self.rpc_client.call((m.rpc_host, m.rpc_port), "ping", self.ring_epoch, timeout=timeout)
        self.saw_epoch(peer, int(epoch))

    def saw_epoch(self, peer: str, epoch: int) -> None:
        """Internal messages carry the sender's ring epoch: a node that sees a newer one is behind and
        catches up (a linearizable read of the membership waits until its log has what the leader has)."""
        if epoch > self.ring_epoch and not self._catching_up:
            log.info("%s is at ring epoch %d, this node at %d: catching up", peer, epoch, self.ring_epoch)
            self._catching_up = True
            self.spawn(self._catch_up(), "catch-up")

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
        if self.replica.reads_on_loop:
            return self.replica.read_now(ref, hint_for)
        return self.replica.read(ref, hint_for)

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
            key, value, ctype, ctx_items, wire_opts = payload
            ctx = {str(a): int(c) for a, c in ctx_items}
            opts = WriteOptions.from_wire(wire_opts)
        except (TypeError, ValueError) as exc:
            raise _bad(f"kv.coord_put payload: {exc}") from exc
        # A forwarded write is coordinated here or fails: never forwarded again (no loops).
        try:
            res = await self.coordinator.put(bytes(key), value, str(ctype), ctx, opts)
        except Unavailable as unavailable:
            raise RpcRemoteError("unavailable", str(unavailable)) from unavailable
        except SiblingLimitError as too_many:
            raise RpcRemoteError("conflict", str(too_many)) from too_many
        except ForwardError as refused:
            raise RpcRemoteError(refused.code, str(refused)) from refused
        return [res.coordinator, res.acks, res.hinted, res.durable, v.encode(res.state)]

    # --- observability --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        members = []
        view = self.detector.view(loop.time())
        st = self.membership.state
        for mid, m in sorted(self.members.items()):
            status = st.members[mid].status.value if mid in st.members else "standby"
            entry: dict[str, Any] = {"id": mid, "http": f"{m.http_host}:{m.http_port}",
                                     "rpc": f"{m.rpc_host}:{m.rpc_port}", "status": status}
            entry["liveness"] = {"up": True, "self": True} if mid == self.node_id else view.get(mid, {"up": False})
            members.append(entry)
        ring = self._ring
        out: dict[str, Any] = {
            "node": self.node_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "ring": {
                "epoch": self.ring_epoch,
                "partitions": ring.num_partitions if ring else 0,
                "n_val": self.n_val,
                "owned": [p for p, o in enumerate(ring.owners) if o == self.node_id] if ring else [],
                "owners": list(ring.owners) if ring else [],
            },
            "members": members,
            "storage": self.storage.stats(),
            "coordinator": {"read_repairs": self.coordinator.read_repairs, "forwarded": self.coordinator.forwarded},
            "compiled_modules": {"active": native.active, "status": native.status},
        }
        for s in self.services:
            out.update(s.status())
        return out

    def _gauges(self) -> Iterable[Metric]:
        up = self.up_set()
        for mid in self.members:
            yield gauge("dynamostore_peer_up", "1 when this node sees the peer up", float(mid in up), {"peer": mid})
        yield gauge("dynamostore_ring_epoch", "Ring epoch this node serves with", float(self.ring_epoch))
        for k, val in self.storage.stats().items():
            yield gauge(f"dynamostore_storage_{k}", f"storage engine statistic {k}", float(val))
        for s in self.services:
            yield from s.gauges()
