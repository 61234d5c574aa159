"""RaftService: several services in one event loop, wired by an in-memory async transport, with real
RaftLogStore directories. Every wait is on a condition with a deadline."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dynamostore.cluster.raft import NotLeaderError, RaftService, RaftServiceError
from ring.raft import ConfChange, ConfChangeType


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


class App:
    """A state machine that records what it applied, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[int, bytes]] = []
        self.fail_on: bytes | None = None

    def apply(self, index: int, data: bytes) -> Any:
        if data == self.fail_on:
            raise RuntimeError("the state machine broke")
        self.log.append((index, data))
        return ("ok", index, data)

    def snapshot(self) -> bytes:
        return bytes(msgpack.packb(self.log))

    def restore(self, blob: bytes) -> None:
        self.log = [(int(i), bytes(d)) for i, d in msgpack.unpackb(blob)]

    def datas(self) -> list[bytes]:
        return [d for _, d in self.log]


class Net:
    """In-memory transport: a send is a direct call of the peer's receive(); down nodes are unreachable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: dict[str, RaftService] = {}
        self.apps: dict[str, App] = {}

    def sender(self, frm: str) -> Callable[[str, bytes], Any]:
        async def send(to: str, data: bytes) -> None:
            svc = self.services.get(to)
            if svc is None or frm not in self.services:
                raise ConnectionError(f"{to} is down")
            await svc.receive(data)

        return send

    async def read_index_via(self, leader: str) -> int:
        svc = self.services.get(leader)
        if svc is None:
            raise ConnectionError(f"{leader} is down")
        return await svc.read_index(timeout=2.0)

    async def start(self, node: str, voters: list[str] | None, compact_every: int = 1000) -> RaftService:
        app = self.apps[node] = App()
        svc = RaftService(
            node,
            self.root / node,
            send=self.sender(node),
            apply=app.apply,
            snapshot=app.snapshot,
            restore=app.restore,
            bootstrap_voters=voters,
            tick_interval=0.01,
            election_ticks=10,
            rng=random.Random(node),
            compact_every=compact_every,
            read_index_via=self.read_index_via,
        )
        await svc.start()
        self.services[node] = svc
        return svc

    async def stop(self, node: str) -> None:
        svc = self.services.pop(node)
        await svc.stop()

    async def close(self) -> None:
        for node in list(self.services):
            await self.stop(node)

    def leaders(self) -> list[str]:
        return [i for i, s in self.services.items() if s.is_leader]

    async def leader(self) -> str:
        await wait_until(lambda: len(self.leaders()) == 1, 5.0, "one leader")
        return self.leaders()[0]


VOTERS = ["n1", "n2", "n3"]


@pytest.fixture
async def net(tmp_path: Path) -> Any:
    n = Net(tmp_path)
    yield n
    await n.close()


async def cluster(net: Net, compact_every: int = 1000) -> str:
    for v in VOTERS:
        await net.start(v, VOTERS, compact_every=compact_every)
    return await net.leader()


async def test_elects_and_proposes_through_follower_with_retry(net: Net) -> None:
    leader = await cluster(net)
    follower = next(v for v in VOTERS if v != leader)
    await wait_until(lambda: net.services[follower].leader == leader, 2.0, "follower knows the leader")
    with pytest.raises(NotLeaderError) as err:
        await net.services[follower].propose(b"x", timeout=1.0)
    assert err.value.leader_id == leader
    result = await net.services[err.value.leader_id].propose(b"x", timeout=2.0)
    assert result[0] == "ok" and result[2] == b"x"


async def test_apply_order_identical_everywhere(net: Net) -> None:
    leader = await cluster(net)
    datas = [f"cmd{i}".encode() for i in range(30)]
    results = await asyncio.gather(*(net.services[leader].propose(d, timeout=5.0) for d in datas))
    indexes = [r[1] for r in results]
    assert len(set(indexes)) == 30
    await wait_until(lambda: all(len(a.log) == 30 for a in net.apps.values()), 5.0, "all applied")
    logs = [a.log for a in net.apps.values()]
    assert logs[0] == logs[1] == logs[2]
    assert sorted(logs[0][k][1] for k in range(30)) == sorted(datas)
    assert [i for i, _ in logs[0]] == sorted(indexes)


async def test_restart_from_disk_catches_up(net: Net) -> None:
    leader = await cluster(net)
    for i in range(5):
        await net.services[leader].propose(f"a{i}".encode(), timeout=2.0)
    victim = next(v for v in VOTERS if v != leader)
    await wait_until(lambda: len(net.apps[victim].log) == 5, 3.0, "victim applied the first batch")
    await net.stop(victim)
    for i in range(5):
        await net.services[leader].propose(f"b{i}".encode(), timeout=2.0)
    await net.start(victim, VOTERS)  # same directory: loads the log, replays, then catches up
    await wait_until(lambda: net.apps[victim].log == net.apps[leader].log, 5.0, "restarted node caught up")
    assert net.apps[victim].datas() == [f"a{i}".encode() for i in range(5)] + [f"b{i}".encode() for i in range(5)]
    st_ = net.services[victim].status()
    assert st_["applied"] == st_["commit"] and st_["error"] is None


async def test_snapshot_compaction_and_restart_from_snapshot(net: Net) -> None:
    leader = await cluster(net, compact_every=5)
    for i in range(23):
        await net.services[leader].propose(f"c{i}".encode(), timeout=2.0)
    await wait_until(lambda: all(len(a.log) == 23 for a in net.apps.values()), 5.0, "all applied")
    for svc in net.services.values():
        s = svc.status()
        assert s["snapshot_index"] > 0, s
        assert s["log_entries"] < 10, s  # compacted: not the ~27 entries written
    victim = next(v for v in VOTERS if v != leader)
    await net.stop(victim)
    await net.start(victim, VOTERS, compact_every=5)
    # its state came back from the snapshot plus the entries after it
    assert net.apps[victim].datas()[:5] == [f"c{i}".encode() for i in range(5)]
    await wait_until(lambda: net.apps[victim].log == net.apps[leader].log, 5.0, "restarted node caught up")


async def test_learner_receives_log_and_snapshot(net: Net) -> None:
    leader = await cluster(net, compact_every=5)
    for i in range(12):  # enough to compact: the learner must be sent a snapshot
        await net.services[leader].propose(f"d{i}".encode(), timeout=2.0)
    await net.start("l1", None)
    await net.services[leader].change_conf(ConfChange(ConfChangeType.ADD_LEARNER, "l1"), timeout=3.0)
    await net.services[leader].propose(b"after", timeout=2.0)
    await wait_until(lambda: net.apps["l1"].log == net.apps[leader].log, 5.0, "learner caught up")
    s = net.services["l1"].status()
    assert s["learners"] == ["l1"] and s["voters"] == VOTERS and s["role"] == "follower"
    assert net.apps["l1"].datas()[-1] == b"after"


async def test_read_barrier_on_leader_and_follower(net: Net) -> None:
    leader = await cluster(net)
    follower = next(v for v in VOTERS if v != leader)
    await wait_until(lambda: net.services[follower].leader == leader, 2.0, "follower knows the leader")
    await net.services[leader].propose(b"r1", timeout=2.0)
    await net.services[leader].read_barrier(timeout=2.0)
    await net.services[follower].read_barrier(timeout=2.0)
    # after the barrier the follower's state includes everything committed before the call
    assert b"r1" in net.apps[follower].datas()


async def test_transfer_leadership(net: Net) -> None:
    leader = await cluster(net)
    target = next(v for v in VOTERS if v != leader)
    await net.services[leader].propose(b"t", timeout=2.0)
    await net.services[leader].transfer_leadership(target, timeout=3.0)
    await wait_until(lambda: net.leaders() == [target], 3.0, "target leads")
    assert (await net.services[target].propose(b"t2", timeout=2.0))[2] == b"t2"


async def test_apply_failure_is_surfaced_not_swallowed(net: Net) -> None:
    svc = await net.start("n1", ["n1"])
    await net.leader()
    net.apps["n1"].fail_on = b"boom"
    with pytest.raises(RaftServiceError):
        await svc.propose(b"boom", timeout=2.0)
    assert "the state machine broke" in (svc.status()["error"] or "")
    with pytest.raises(RaftServiceError):
        await svc.propose(b"after", timeout=1.0)
