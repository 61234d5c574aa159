"""Read-repair planning: repair stale primaries; fallbacks only when asked."""

from __future__ import annotations

from antientropy.readrepair import ReadReply, plan_read_repair

NEW, OLD = b"n" * 16, b"o" * 16


def test_stale_and_empty_primaries_are_repaired() -> None:
    plan = plan_read_repair(
        [ReadReply("n1", True, NEW), ReadReply("n2", True, OLD), ReadReply("n3", True, None)], NEW
    )
    assert plan.targets == ("n2", "n3")
    assert plan.skipped_fallbacks == ()
    assert plan.needed


def test_up_to_date_replicas_need_nothing() -> None:
    plan = plan_read_repair([ReadReply("n1", True, NEW), ReadReply("n2", True, NEW)], NEW)
    assert plan.targets == () and not plan.needed


def test_fallbacks_skipped_by_default() -> None:
    replies = [ReadReply("n1", True, NEW), ReadReply("n4", False, OLD), ReadReply("n2", True, OLD)]
    plan = plan_read_repair(replies, NEW)
    assert plan.targets == ("n2",)
    assert plan.skipped_fallbacks == ("n4",)


def test_fallbacks_included_on_request() -> None:
    replies = [ReadReply("n1", True, NEW), ReadReply("n4", False, None), ReadReply("n5", False, NEW)]
    plan = plan_read_repair(replies, NEW, include_fallbacks=True)
    assert plan.targets == ("n4",)
    assert plan.skipped_fallbacks == ()


def test_nothing_anywhere_means_nothing_to_repair() -> None:
    plan = plan_read_repair([ReadReply("n1", True, None), ReadReply("n2", True, None)], None)
    assert not plan.needed


def test_tombstone_digest_is_repaired_like_any_version() -> None:
    tomb = b"t" * 16
    plan = plan_read_repair([ReadReply("n1", True, tomb), ReadReply("n2", True, NEW)], tomb)
    assert plan.targets == ("n2",)


def test_duplicate_replies_judged_on_the_last() -> None:
    replies = [ReadReply("n2", True, OLD), ReadReply("n1", True, NEW), ReadReply("n2", True, NEW)]
    assert plan_read_repair(replies, NEW).targets == ()
