"""The lost-write checker itself: it must flag a lost acknowledged write and nothing else."""

from __future__ import annotations

from tests.history import History, Outcome


def test_checker_flags_only_truly_lost_writes() -> None:
    h = History()
    h.record("a", b"1", Outcome.OK)
    h.record("a", b"2", Outcome.OK, supersedes=frozenset({b"1"}))  # 1 is superseded by an acked write
    h.record("b", b"x", Outcome.OK)
    h.record("b", b"y", Outcome.OK)  # concurrent: both must survive
    h.record("c", b"t", Outcome.UNKNOWN)
    h.record("d", b"f", Outcome.FAILED, supersedes=frozenset({b"g"}))
    h.record("d", b"g", Outcome.OK)
    report = h.check({"a": {b"2"}, "b": {b"x"}, "c": {b"t"}, "d": set()})
    assert report.lost == [("b", b"y"), ("d", b"g")]  # a failed write cannot excuse a missing acked one
    assert report.unexpected == [("c", b"t")]
    assert (report.acknowledged, report.unknown, report.failed) == (5, 1, 1)
