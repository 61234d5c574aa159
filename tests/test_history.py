"""The history checker itself: each count (lost, resurrected, stale strict) must flag its violation and nothing else."""

from __future__ import annotations

import pytest

from tests.history import History, Outcome, Violation


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


# --- verify(): lost (with demonstrably-applied credit), resurrected, stale strict reads ---------------------

def _clean_history() -> History:
    """A key written, read, deleted with the read's context, read again empty; strict quorums throughout."""
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=1.0, quorum=2, strict=True)
    h.record_read("k", frozenset({b"v1"}), 2.0, 3.0, quorum=2, strict=True)
    h.record_delete("k", frozenset({b"v1"}), Outcome.OK, 4.0, 5.0, quorum=2, strict=True)
    h.record_read("k", frozenset(), 6.0, 7.0, quorum=2, strict=True)
    return h


def test_a_clean_history_verifies() -> None:
    report = _clean_history().verify({"k": set()})
    assert (report.lost, report.resurrected, report.stale_strict) == ([], [], [])
    assert (report.acknowledged, report.deletes, report.reads) == (1, 1, 2)
    report.assert_clean("clean")  # no Violation
    # a deleted value is not lost: the delete superseded it
    assert _clean_history().verify({"k": set()}).lost == []


def test_a_deleted_value_read_again_after_the_delete_is_resurrected() -> None:
    h = _clean_history()
    h.record_read("k", frozenset({b"v1"}), 8.0, 9.0, quorum=1)  # any read, strict or not
    report = h.verify({"k": set()})
    assert report.resurrected == [("k", b"v1")]
    with pytest.raises(Violation, match="resurrected=1"):
        report.assert_clean("resurrect")


def test_a_deleted_value_present_at_the_end_is_resurrected() -> None:
    assert _clean_history().verify({"k": {b"v1"}}).resurrected == [("k", b"v1")]


def test_a_read_concurrent_with_the_delete_may_still_see_the_value() -> None:
    h = _clean_history()
    h.record_read("k", frozenset({b"v1"}), 4.5, 6.0, quorum=2, strict=True)  # began before the delete's ack
    assert h.verify({"k": set()}).resurrected == []


def test_a_value_an_unacknowledged_delete_covered_is_neither_lost_nor_resurrected() -> None:
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=1.0, quorum=2, strict=True)
    h.record_delete("k", frozenset({b"v1"}), Outcome.UNKNOWN, 2.0, 5.0, quorum=2, strict=True)  # may have landed
    for final in (set(), {b"v1"}):
        report = h.verify({"k": final})
        assert (report.lost, report.resurrected) == ([], [])


def test_a_failed_delete_does_not_count_and_a_new_value_after_a_delete_is_fine() -> None:
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=1.0)
    h.record_delete("k", frozenset({b"v1"}), Outcome.FAILED, 2.0, 3.0)
    h.record("k", b"v2", Outcome.OK, start=4.0, end=5.0)
    h.record_read("k", frozenset({b"v1", b"v2"}), 6.0, 7.0)
    report = h.verify({"k": {b"v1", b"v2"}})
    assert report.resurrected == [] and report.lost == []


def test_a_strict_read_that_misses_an_earlier_acknowledged_strict_write_is_stale() -> None:
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=1.0, quorum=2, strict=True)
    h.record_read("k", frozenset(), 2.0, 3.0, quorum=2, strict=True)  # R + W = 4 > 3: it must see v1
    report = h.verify({"k": {b"v1"}})
    assert report.stale_strict == [("k", b"v1")] and report.lost == []
    with pytest.raises(Violation, match="stale_strict=1"):
        report.assert_clean("stale")


@pytest.mark.parametrize("read, write", [
    ({"quorum": 1, "strict": True}, {"quorum": 2, "strict": True}),   # R + W = N: no overlap promised
    ({"quorum": 2, "strict": False}, {"quorum": 2, "strict": True}),  # a sloppy read
    ({"quorum": 2, "strict": True}, {"quorum": 2, "strict": False}),  # a sloppy write
])
def test_no_stale_read_is_counted_without_a_strict_overlapping_pair(read: dict[str, object],
                                                                    write: dict[str, object]) -> None:
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=1.0, **write)  # type: ignore[arg-type]
    h.record_read("k", frozenset(), 2.0, 3.0, **read)  # type: ignore[arg-type]
    assert h.verify({"k": {b"v1"}}).stale_strict == []


def test_a_strict_read_may_miss_a_write_still_in_flight_or_superseded() -> None:
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=2.5, quorum=2, strict=True)  # acked after the read began
    h.record_read("k", frozenset(), 2.0, 3.0, quorum=2, strict=True)
    h.record("j", b"a", Outcome.OK, start=0.0, end=1.0, quorum=2, strict=True)
    h.record("j", b"b", Outcome.UNKNOWN, frozenset({b"a"}), start=1.5, end=4.0, quorum=2, strict=True)
    h.record_read("j", frozenset({b"b"}), 2.0, 3.0, quorum=2, strict=True)  # b (in flight) replaced a
    report = h.verify({"k": {b"v1"}, "j": {b"b"}})
    assert report.stale_strict == []
    assert report.lost == []  # a was superseded by b, which was not acknowledged but demonstrably applied


def test_lost_still_counts_through_verify() -> None:
    h = History(n_val=3)
    h.record("k", b"v1", Outcome.OK, start=0.0, end=1.0, quorum=2, strict=True)
    report = h.verify({"k": set()})
    assert report.lost == [("k", b"v1")]
    with pytest.raises(Violation, match="lost=1"):
        report.assert_clean("lost")
