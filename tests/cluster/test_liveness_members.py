"""The failure detector forgets a member that was removed (issue 14, item 5): it leaves the up set, and the
version coordinators cache preference lists by changes."""

from __future__ import annotations

from dynamostore.cluster.liveness import Detector


def test_a_removed_peer_leaves_the_detector() -> None:
    d = Detector(["n2", "n3", "n4"], down_after=1.0, now=0.0)
    d.failure("n4", 1.0, "RpcUnavailable", hard=True)
    assert "n4" in d.view(2.0) and d.down_since("n4") == 1.0
    version = d.version
    assert d.remove_peer("n4") and not d.remove_peer("n4")
    assert d.version == version + 1
    assert "n4" not in d.view(2.0) and d.up_set("n1") == {"n1", "n2", "n3"} and d.down_since("n4") is None
    assert d.add_peer("n4", 3.0)  # the id joins again later: tracked afresh
