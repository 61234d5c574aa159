"""Ownership transfer (services/transfer.py) through fakes of its views: n4 joins a 3-node ring, and its service
streams the partitions it gains from the sources' own TransferServices over the in-memory network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from dynamostore.config import TransferSettings
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.net.rpc import RpcUnavailable
from dynamostore.runtime import LoopClock
from dynamostore.services.transfer import TransferService
from dynamostore.storage.keys import split_data_key
from handoff.transfer import Cursor, TransferPlan, cursor_key, decode_cursor, done_command, incoming
from ring.membership import Command, Commit, MembershipState, Result, StageJoin, apply
from tests.services.conftest import OpenReplica
from tests.services.fakes import Call, FakeClock, FakePlacement, Network, member, membership, until

Q = 8
SOURCES = ["n1", "n2", "n3"]
KEYS = [b"key-%03d" % i for i in range(240)]


@dataclass
class Cluster:
    net: Network
    clock: FakeClock
    state: MembershipState  # n4's join committed: transfers pending
    replicas: dict[str, LocalReplica]
    sources: list[TransferService]
    proposals: list[Command] = field(default_factory=list)

    async def propose(self, cmd: Command, timeout: float) -> Result:
        self.proposals.append(cmd)
        return Result(True, self.state.epoch + 1)

    def target(self, placement: FakePlacement | None = None, batch_keys: int = 10) -> TransferService:
        return TransferService(TransferSettings(keys_per_sec=1_000_000, batch_keys=batch_keys),
                               placement=placement or FakePlacement("n4", self.state), replica=self.replicas["n4"],
                               peers=self.net.peers("n4"), methods=self.net.router("n4"), propose=self.propose,
                               clock=self.clock)

    def plans(self) -> list[TransferPlan]:
        return incoming(self.state, "n4")


async def finished(svc: TransferService) -> None:
    await until(lambda: not svc.active, "the receptions to end")


@pytest.fixture
async def cluster(replicas: OpenReplica) -> AsyncIterator[Cluster]:
    """Every source holds every key (so whichever source a stream names has its partition)."""
    net, clock = Network(), FakeClock()
    state = membership(SOURCES, Q, 2, StageJoin(member("n4")), Commit(1))
    assert state.transfers
    reps = {n: await replicas(n, partitions=Q) for n in [*SOURCES, "n4"]}
    for n in SOURCES:
        for k in KEYS:
            await reps[n].coordinate(reps[n].ref(k), {}, k + b"=" + n.encode(), "t", durable=False)
    sources = []
    for n in SOURCES:
        svc = TransferService(TransferSettings(), placement=FakePlacement(n, state), replica=reps[n],
                              peers=net.peers(n), methods=net.router(n), propose=lambda c, t: asyncio.sleep(0),  # type: ignore[arg-type,return-value]
                              clock=clock)
        await svc.start()
        sources.append(svc)
    yield Cluster(net, clock, state, reps, sources)
    for svc in sources:
        await svc.stop()


def gained(c: Cluster) -> dict[int, list[bytes]]:
    """Key partition -> the keys n4 must receive."""
    out: dict[int, list[bytes]] = {}
    for tp in c.plans():
        for s in tp.streams:
            out[s.key_partition] = [k for k in KEYS if c.replicas["n4"].ref(k).partition == s.key_partition]
    return out


async def cursors(c: Cluster) -> dict[int, Cursor]:
    out = {}
    for tp in c.plans():
        for s in tp.streams:
            raw = await c.replicas["n4"].load_meta(cursor_key(tp, s))
            if raw is not None:
                out[s.key_partition] = decode_cursor(raw)
    return out


async def test_a_transfer_streams_every_record_saves_cursors_and_proposes_done_once(cluster: Cluster) -> None:
    c = cluster
    svc = c.target()
    started = svc.step()
    assert {tp.transfer for tp in started} == {tp.transfer for tp in c.plans()}
    assert svc.step() == []  # running: not started twice
    await finished(svc)
    want = gained(c)
    n4 = c.replicas["n4"]
    source = {s.key_partition: s.source for tp in c.plans() for s in tp.streams}
    for kp, keys in want.items():
        assert keys, "every gained partition has keys in this test"
        src = c.replicas[source[kp]]
        for k in keys:
            got, there = await n4.get(n4.ref(k)), await src.get(src.ref(k))
            assert got is not None and there is not None and v.same_version(got, there)
    assert await n4.storage.count("data") == sum(map(len, want.values()))  # nothing it does not gain
    saved = await cursors(c)
    assert set(saved) == set(want) and all(cur.done and cur.keys == len(want[kp]) for kp, cur in saved.items())
    fetches = c.net.calls_of("transfer.fetch")
    assert all(call.payload[2] <= 10 for call in fetches)  # batches of batch_keys
    assert sorted(c.proposals, key=repr) == sorted((done_command(tp) for tp in c.plans()), key=repr)
    assert svc.step() == []  # proposed: not streamed again while the commit is being applied here
    assert svc.keys_received == sum(map(len, want.values()))


async def test_a_stream_cut_mid_way_resumes_after_its_last_saved_key_in_a_new_service(cluster: Cluster) -> None:
    c = cluster
    tp = c.plans()[0]
    cut = tp.streams[0].key_partition
    batches = 0

    def source_dies_after_two_batches(call: Call) -> None:
        nonlocal batches
        if call.payload[0] == cut:
            batches += 1
            if batches > 2:
                raise RpcUnavailable("the source went away")

    c.net.before("transfer.fetch", source_dies_after_two_batches)
    first = c.target()
    first.step()
    await finished(first)
    assert done_command(tp) not in c.proposals
    saved = (await cursors(c))[cut]
    assert not saved.done and saved.keys == 20 and saved.last_key is not None  # two batches of 10, saved

    c.net.hooks.clear()
    before = len(c.net.calls)
    again = c.target()  # the node restarted: a new service over the same replica
    again.step()
    await finished(again)
    resumed = [call for call in c.net.calls[before:] if call.method == "transfer.fetch" and call.payload[0] == cut]
    assert resumed[0].payload[1] == saved.last_key  # right after the last key it had saved, not from the start
    n4 = c.replicas["n4"]
    assert await n4.storage.count("data") == sum(map(len, gained(c).values()))
    assert c.proposals.count(done_command(tp)) == 1
    done = (await cursors(c))[cut]
    assert done.done and done.keys == len(gained(c)[cut])


async def test_a_plan_that_moved_on_stops_streaming(cluster: Cluster) -> None:
    c = cluster
    placement = FakePlacement("n4", c.state)
    svc = c.target(placement)
    tp = c.plans()[0]
    first_kp = tp.streams[0].key_partition

    def committed_elsewhere(call: Call) -> None:
        if call.payload[0] == first_kp and placement.state is c.state:
            placement.state = apply(c.state, done_command(tp))[0]  # e.g. another node finished it meanwhile

    c.net.before("transfer.fetch", committed_elsewhere)
    svc.step()
    await finished(svc)
    assert done_command(tp) not in c.proposals
    assert len([call for call in c.net.calls_of("transfer.fetch") if call.payload[0] == first_kp]) == 1
    assert tp.transfer not in {t.transfer for t in svc.step()}


async def test_a_malformed_fetch_is_refused(cluster: Cluster) -> None:
    from dynamostore.net.rpc import RpcRemoteError

    with pytest.raises(RpcRemoteError, match="transfer.fetch payload"):
        await cluster.net.deliver("n4", "n1", "transfer.fetch", [0, None])


async def test_stop_returns_even_when_a_kick_races_the_cancel(cluster: Cluster) -> None:
    svc = TransferService(TransferSettings(), placement=FakePlacement("n4", MembershipState()),
                          replica=cluster.replicas["n4"], peers=cluster.net.peers("n4"), methods=Network().router("x"),
                          propose=cluster.propose, clock=LoopClock())
    await svc.start()
    for _ in range(3):
        await asyncio.sleep(0)  # the loop is parked in its wait
    svc.ring_changed(cluster.state)  # the kick...
    await asyncio.wait_for(svc.stop(), 5.0)  # ...and the cancel, in the same pass


async def test_a_write_behind_the_first_pass_is_caught_by_the_catch_up_pass(cluster: Cluster) -> None:
    """Issue 14, item 3: a write that reached only the old replicas after the stream had passed its key (its
    coordinator had not applied the commit yet) still reaches the new owner before ownership flips."""
    c = cluster
    svc = c.target()
    tp = c.plans()[0]
    stream = tp.streams[0]
    n4 = c.replicas["n4"]
    late: list[bytes] = []

    async def write_behind_the_cursor(call: Call) -> None:
        kp, after, _ = call.payload
        if kp != stream.key_partition or after is None or late:
            return
        key = next(k for k in (b"late-%04d" % i for i in range(100_000))
                   if n4.ref(k).partition == kp and n4.ref(k).skey < bytes(after))
        for n in SOURCES:  # the write of a coordinator that does not know of the move: old replicas only
            await c.replicas[n].coordinate(c.replicas[n].ref(key), {}, b"late", "t", durable=False)
        late.append(key)

    c.net.before("transfer.fetch", write_behind_the_cursor)
    svc.step()
    await finished(svc)
    assert late and done_command(tp) in c.proposals
    got = await n4.get(n4.ref(late[0]))
    assert got is not None and [s.value for s in got.siblings] == [b"late"]


async def test_the_catch_up_pass_waits_for_every_member_to_apply_the_commit(cluster: Cluster) -> None:
    """A coordinator that has not applied the commit sends a partition's writes to its old replicas only; the
    catch-up pass starts once every reachable member has applied it, so it sees all such writes."""
    c = cluster
    lagging = c.sources[2]
    assert isinstance(lagging.placement, FakePlacement)
    before_commit = membership(SOURCES, Q, 2, StageJoin(member("n4")))
    lagging.placement.state = before_commit
    svc = c.target()
    tp = c.plans()[0]
    n4 = c.replicas["n4"]
    svc.step()
    await until(lambda: c.clock.waiting > 0 and any(call.method == "transfer.plan_epoch"
                                                    for call in c.net.calls), "the first pass to end")
    kp = tp.streams[0].key_partition
    key = next(k for k in (b"late-%04d" % i for i in range(100_000)) if n4.ref(k).partition == kp)
    for n in SOURCES:  # written through the lagging node, with the ring it knows: old replicas only
        await c.replicas[n].coordinate(c.replicas[n].ref(key), {}, b"late", "t", durable=False)
    assert not svc.progress[tp.transfer]["streams_done"]
    lagging.placement.state = c.state  # it applies the commit
    for _ in range(10_000):
        if not svc.active:
            break
        c.clock.advance(1.0)
        await asyncio.sleep(0)
    assert not svc.active and done_command(tp) in c.proposals
    got = await n4.get(n4.ref(key))
    assert got is not None and [s.value for s in got.siblings] == [b"late"]
