"""Membership application (cluster/membership.py, cluster/state.py) without a running Raft group: committed
entries are handed to `MembershipService.apply_entry` (and snapshots to `restore_snapshot`) exactly as the Raft
service does, in log order; what the node serves with is its `ClusterState`, whose listeners the services are."""

from __future__ import annotations

from pathlib import Path

from dynamostore.cluster.membership import MembershipService
from dynamostore.cluster.state import ClusterState
from dynamostore.config import ClusterSettings, Member, RaftSettings
from ring.tokens import AddToken, ApiToken
from ring.membership import (
    Bootstrap,
    Commit,
    MembershipState,
    StageJoin,
    StageRemove,
    TransferDone,
    encode_command,
    encode_state,
)
from tests.services.fakes import FakeLiveness, Network, member

NODES = ["n1", "n2", "n3"]


def cluster_file() -> ClusterSettings:
    return ClusterSettings(secret="s" * 16, partitions=8, n_val=3,
                           members=[Member(id=n, http_port=1, rpc_port=2) for n in NODES])


class Node:
    """n1's membership service publishing into its ClusterState, whose two listeners record what they hear."""

    def __init__(self, tmp_path: Path, founder: bool) -> None:
        self.heard: list[tuple[str, int, int]] = []  # (listener, epoch, transfers pending)
        self.cluster = ClusterState("n1", {}, None, 3, 0)
        self.cluster.listeners += [self._hear("first"), self._hear("second")]
        net = Network()
        self.service = MembershipService(RaftSettings(), node_id="n1", cluster=cluster_file(), founder=founder,
                                         data_dir=tmp_path, peers=net.peers("n1"), methods=net.router("n1"),
                                         liveness=FakeLiveness("n1", NODES), publish=self.cluster.apply)
        self.index = 0

    def _hear(self, name: str):  # type: ignore[no-untyped-def]
        def listener(state: MembershipState) -> None:
            assert self.cluster.state is state and self.cluster.ring is state.ring  # applied before it is told
            self.heard.append((name, state.epoch, len(state.transfers)))
        return listener

    def commit(self, cmd: object) -> bool:
        self.index += 1
        return self.service.apply_entry(self.index, encode_command(cmd)).ok  # type: ignore[arg-type]


def bootstrap() -> Bootstrap:
    return Bootstrap(tuple(member(n) for n in NODES), 8, 3, ("n1", "n2", "n3"))


def test_committed_entries_publish_each_new_state_to_the_listeners_in_order(tmp_path: Path) -> None:
    node = Node(tmp_path, founder=False)  # a node that learns everything from the log
    assert node.commit(bootstrap())
    assert node.heard == [("first", 1, 0), ("second", 1, 0)]
    assert node.cluster.epoch == 1 and node.cluster.ring is not None and sorted(node.cluster.addresses) == NODES
    assert node.commit(StageJoin(member("n4")))
    assert node.heard[2:] == []  # staged only: the ring, members and transfers did not change
    assert node.commit(Commit(1))
    transfers = node.service.applied.transfers
    assert transfers and node.heard[2:] == [("first", 2, len(transfers)), ("second", 2, len(transfers))]
    assert "n4" in node.cluster.addresses  # the newcomer's address, before the services hear of it
    for i, t in enumerate(transfers):
        assert node.commit(TransferDone(t.partition, t.source, t.target, node.service.applied.plan_epoch))
        assert node.heard[-1][2] == len(transfers) - i - 1  # every finished transfer is news
    assert [h[0] for h in node.heard] == ["first", "second"] * (len(node.heard) // 2)


def test_refused_entries_publish_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path, founder=False)
    node.commit(bootstrap())
    heard, applied = list(node.heard), node.service.applied
    assert not node.commit(Commit(99))  # the wrong epoch
    assert not node.commit(StageRemove("n9"))  # not a member
    assert not node.commit(bootstrap())  # bootstrapped already
    assert node.heard == heard and node.service.applied == applied


def test_a_founder_already_serves_the_founding_ring_and_hears_nothing_new_from_its_entry(tmp_path: Path) -> None:
    node = Node(tmp_path, founder=True)
    assert node.service.state.epoch == 1
    assert node.commit(bootstrap())
    assert node.heard == []


def test_a_restored_snapshot_is_published_once(tmp_path: Path) -> None:
    leader = Node(tmp_path / "leader", founder=False)
    leader.commit(bootstrap())
    leader.commit(StageJoin(member("n4")))
    leader.commit(Commit(1))
    snapshot = encode_state(leader.service.applied)

    node = Node(tmp_path / "follower", founder=False)
    node.service.restore_snapshot(snapshot)
    assert node.heard == [("first", 2, len(leader.service.applied.transfers)),
                          ("second", 2, len(leader.service.applied.transfers))]
    assert node.service.applied == leader.service.applied and node.cluster.epoch == 2
    node.service.restore_snapshot(snapshot)  # the same state again: nothing new
    assert len(node.heard) == 2


def test_a_token_added_before_the_founding_entry_is_served_and_read_at_once(tmp_path: Path) -> None:
    """A token made right at start-up can reach the log before the Bootstrap entry (the founder proposes that
    after an election): what the node serves with, and what a linearizable read answers, includes it from the
    moment it is applied, not only once the cluster is bootstrapped."""
    node = Node(tmp_path, founder=True)
    assert not node.service.applied.initialized
    made = ApiToken("t1", "early", ("write",), b"x" * 32, 100)
    assert node.commit(AddToken(made))
    assert node.service.state.tokens.get("t1") == made   # served (the authentication gate reads this)
    assert node.commit(bootstrap())
    assert node.service.state.tokens.get("t1") == made   # and kept by the founding entry
