"""Membership in the running node: the Raft service, the replicated membership state, and what follows from it.

The Raft group orders membership changes only; the data path reads `self.state` (a plain attribute) and never
waits on consensus. Every node applies the committed log in order through `ring.membership.apply`, so all
nodes move through the same ring epochs. Founding members (those listed in the cluster file) start serving
at once with the founding ring, which is exactly what the Bootstrap entry at the head of the log produces
(the first leader proposes it); a node started to join a running cluster has no ring until the log reaches
it as a Raft learner.

The Raft leader also converges the Raft configuration to the membership: joining nodes become learners,
removed nodes leave the group, and voters are topped up from active members (`state.voters`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from dynamostore.config import ClusterSettings, RaftSettings
from dynamostore.metrics import gauge
from dynamostore.cluster.raft import NotLeaderError, RaftService, RaftServiceError
from dynamostore.net.rpc import RpcError, RpcRemoteError
from ring.membership import (
    Bootstrap,
    Command,
    MemberInfo,
    MembershipState,
    Result,
    Status,
    apply,
    apply_bytes,
    decode_state,
    encode_command,
    encode_state,
)
from dynamostore.views import Liveness, Methods, Peers
from ring.raft import ConfChange, ConfChangeType
from ring.tokens import AddToken, ApiToken

log = logging.getLogger(__name__)


class MembershipError(Exception):
    """A membership request could not be carried out (no leader, timeout, refused)."""


def founding_command(cf: ClusterSettings, voters: int, token: ApiToken | None = None) -> Bootstrap:
    """The Bootstrap entry every founding member proposes: the members of the cluster file, all active, and
    the admin token the cluster file names (by its hash), if any."""
    members = tuple(MemberInfo(m.id, m.http_host, m.http_port, m.rpc_host, m.rpc_port) for m in cf.members)
    ids = sorted(m.id for m in members)
    return Bootstrap(members, cf.partitions, cf.n_val, tuple(ids[: min(voters, len(ids))]),
                     (token,) if token is not None else ())


class MembershipService:
    """`publish(state)` is called with every newly applied state that changes the ring, the members or the
    transfers (the node applies it to its `ClusterState`). `bootstrap_token`: the admin token the cluster
    file names, which the cluster starts with (or, bootstrapped before it had one, gets once from the leader)."""

    def __init__(self, settings: RaftSettings, *, node_id: str, cluster: ClusterSettings, founder: bool,
                 data_dir: Path, peers: Peers, methods: Methods, liveness: Liveness,
                 publish: Callable[[MembershipState], None], bootstrap_token: ApiToken | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.founder = founder
        self.peers = peers
        self.methods = methods
        self.liveness = liveness
        self.on_state = publish
        self.bootstrap_token = bootstrap_token
        self.bootstrap = founding_command(cluster, settings.voters, bootstrap_token)
        self.applied = MembershipState()  # what the log has produced so far
        # what the node serves with: the founding state until the log catches up
        self.state = apply(MembershipState(), self.bootstrap)[0] if founder else MembershipState()
        voters = list(self.bootstrap.voters)
        learners = sorted(m.id for m in self.bootstrap.members if m.id not in voters)
        self.raft = RaftService(
            node_id,
            data_dir / "raft",
            send=self._send,
            apply=self.apply_entry,
            snapshot=lambda: encode_state(self.applied),
            restore=self.restore_snapshot,
            bootstrap_voters=voters if founder else None,
            bootstrap_learners=learners if founder else None,
            tick_interval=settings.tick_ms / 1000,
            election_ticks=settings.election_ticks,
            compact_every=settings.compact_every,
            read_index_via=self._read_index_via,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        r = self.methods
        r.register("raft.msg", self._rpc_msg)
        r.register("raft.propose", self._rpc_propose)
        r.register("raft.read_index", self._rpc_read_index)
        await self.raft.start()
        self._tasks = [asyncio.create_task(self._leader_duties(), name="raft-leader-duties")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.raft.stop()

    def peer_up(self, peer: str) -> None:
        pass

    # --- the replicated state machine -----------------------------------------------------------------

    def apply_entry(self, index: int, data: bytes) -> Result:
        """The Raft service applies each committed entry here, in log order (also when replaying at start)."""
        new, res = apply_bytes(self.applied, data)
        self.applied = new
        if not res.ok:
            log.info("membership entry %d refused: %s", index, res.reason)
        if new.initialized:
            self._publish(new)
        elif new.tokens != self.state.tokens:
            self._serve_early_tokens(new)
        return res

    def _serve_early_tokens(self, applied: MembershipState) -> None:
        """Before the founding entry is applied the node serves the founding state of its cluster file; a
        token the log added meanwhile (one made right at start-up) is served, and read, from now on too."""
        self.state = replace(self.state, tokens={**self.state.tokens, **applied.tokens})

    def restore_snapshot(self, data: bytes) -> None:
        """The Raft service restores a snapshot here (from disk at start, or sent by the leader)."""
        self.applied = decode_state(data)
        if self.applied.initialized:
            self._publish(self.applied)
        elif self.applied.tokens:
            self._serve_early_tokens(self.applied)

    def _publish(self, state: MembershipState) -> None:
        old = self.state
        self.state = state
        if state.epoch != old.epoch or state.members != old.members or state.transfers != old.transfers:
            self.on_state(state)

    # --- proposing and reading ------------------------------------------------------------------------

    async def propose(self, cmd: Command, timeout: float = 10.0) -> Result:
        """Propose a command through the Raft leader (forwarding if needed); its apply() result."""
        data = encode_command(cmd)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no Raft leader"
        while loop.time() < deadline:
            remaining = deadline - loop.time()
            try:
                if self.raft.is_leader:
                    res: Result = await self.raft.propose(data, timeout=remaining)
                    return res
                leader = self.raft.leader
                if leader is None or leader == self.node_id:
                    await asyncio.sleep(0.05)
                    continue
                ok, epoch, reason = await self.peers.call(leader, "raft.propose", data, remaining)
                return Result(bool(ok), int(epoch), str(reason))
            except NotLeaderError as exc:
                last = str(exc)
            except (RpcError, RaftServiceError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.05)
        raise MembershipError(f"membership change not committed within {timeout:.0f}s: {last}")

    async def read_barrier(self, timeout: float = 5.0) -> MembershipState:
        """The membership state as of now, linearizably (ReadIndex through the leader)."""
        try:
            await self.raft.read_barrier(timeout=timeout)
        except (RaftServiceError, RpcError) as exc:  # no leader, or the leader did not answer
            raise MembershipError(f"no linearizable read of the membership: {exc}") from exc
        return self.applied if self.applied.initialized else self.state

    async def _read_index_via(self, leader: str) -> int:
        return int(await self.peers.call(leader, "raft.read_index", None, 2.0))

    async def _send(self, peer: str, data: bytes) -> None:
        await self.peers.call(peer, "raft.msg", data, 2.0)

    async def _rpc_msg(self, payload: Any, peer: str) -> Any:
        try:
            await self.raft.receive(bytes(payload))
        except ValueError as exc:
            raise RpcRemoteError("bad_request", f"raft.msg: {exc}") from exc
        return None

    async def _rpc_propose(self, payload: Any, peer: str) -> Any:
        if not self.raft.is_leader:
            raise RpcRemoteError("not_leader", f"{self.node_id} is not the Raft leader")
        try:
            res: Result = await self.raft.propose(bytes(payload), timeout=10.0)
        except RaftServiceError as exc:
            raise RpcRemoteError("unavailable", str(exc)) from exc
        return [res.ok, res.epoch, res.reason]

    async def _rpc_read_index(self, payload: Any, peer: str) -> Any:
        try:
            return await self.raft.read_index(timeout=2.0)
        except RaftServiceError as exc:
            raise RpcRemoteError("not_leader", str(exc)) from exc

    def raft_status(self) -> dict[str, Any]:
        return self.raft.status()

    # --- leader duties --------------------------------------------------------------------------------

    async def _leader_duties(self) -> None:
        """On the leader: propose the founding entry once, and converge the Raft voters/learners to the
        membership one single-server change at a time."""
        while True:
            await asyncio.sleep(0.2)
            if not self.raft.is_leader:
                continue
            try:
                if not self.applied.initialized and self.founder:
                    await self.raft.propose(encode_command(self.bootstrap), timeout=5.0)
                    continue
                boot = self.bootstrap_token
                if boot is not None and boot.id not in self.applied.tokens:
                    # a cluster bootstrapped before it had tokens: the cluster file's admin token, once
                    # (a revoked one stays in the state, so it is never added again)
                    await self.raft.propose(encode_command(AddToken(boot)), timeout=5.0)
                    continue
                successor = self._successor()
                if successor is not None:
                    log.info("handing Raft leadership to %s: this node is leaving the voters", successor)
                    await self.raft.transfer_leadership(successor, timeout=5.0)
                    continue
                change = self._next_conf_change()
                if change is not None:
                    log.info("raft configuration change: %s %s", change.type.name, change.node_id)
                    await self.raft.change_conf(change, timeout=5.0)
            except RaftServiceError as exc:
                log.info("leader duty deferred: %s", exc)

    def _successor(self) -> str | None:
        """A voter to hand leadership to when this node should no longer be a voter."""
        st = self.applied
        me = self.node_id
        if not st.initialized:
            return None
        mine = st.members.get(me)
        if me in st.voters and mine is not None and mine.status is not Status.REMOVED:
            return None
        voters = set(self.raft.status()["voters"])
        return next((v for v in sorted(voters & set(st.voters)) if v != me and self.liveness.is_up(v)), None)

    def _next_conf_change(self) -> ConfChange | None:
        st = self.applied
        if not st.initialized:
            return None
        raft = self.raft.status()
        voters, learners = set(raft["voters"]), set(raft["learners"])
        live = {m for m, info in st.members.items() if info.status is not Status.REMOVED}
        want_voters = set(st.voters) & live
        for m in sorted((voters | learners) - live):
            if m != self.node_id:
                return ConfChange(ConfChangeType.REMOVE_NODE, m)
        for m in sorted(live - voters - learners):
            return ConfChange(ConfChangeType.ADD_LEARNER, m)
        for m in sorted(want_voters - voters):
            if self.liveness.is_up(m):
                return ConfChange(ConfChangeType.ADD_VOTER, m)
        for m in sorted(voters - want_voters):
            if m != self.node_id:
                return ConfChange(ConfChangeType.ADD_LEARNER, m)  # demote
        return None

    # --- observability --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        st = self.state
        return {
            "membership": {
                "epoch": st.epoch,
                "applied_epoch": self.applied.epoch,
                "members": {m: info.status.value for m, info in sorted(st.members.items())},
                "transfers_pending": [
                    {"partition": t.partition, "source": t.source, "target": t.target} for t in st.transfers
                ],
                "staged": [type(c).__name__ for c in st.staged],
                "voters": list(st.voters),
            },
            "raft": self.raft.status(),
        }

    def gauges(self) -> Iterable[Metric]:
        yield gauge("dynamostore_transfers_pending", "Partition transfers not finished", float(len(self.state.transfers)))
        yield gauge("dynamostore_raft_is_leader", "1 on the Raft leader", float(self.raft.is_leader))
