"""Read-repair planning: after a read is reconciled, which replicas should be sent the merged version.

Pure and small. The get coordinator collects one ``ReadReply`` per replica that answered (its node id,
whether it is a primary of the key or a sloppy-quorum fallback, and the version digest of what it
returned, ``None`` when it had nothing) and the digest of the reconciled (causally merged) result.
A replica is stale when its digest differs from the reconciled one, including when it had nothing.

Fallbacks are skipped by default (Riak's lesson): a fallback only holds the key as a hinted stand-in;
repairing it writes data to a node that is not an owner and that handoff would move again, and a hinted
write to it already carries the data home. Replicas that did not answer in time are not in the replies
and are left to hinted handoff and anti-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadReply:
    node: str
    primary: bool
    digest: bytes | None  # version digest of what this replica returned; None = it had nothing


@dataclass(frozen=True)
class ReadRepairPlan:
    targets: tuple[str, ...]  # replicas to send the reconciled version to, in reply order
    skipped_fallbacks: tuple[str, ...]  # stale fallbacks left alone (include_fallbacks=False)

    @property
    def needed(self) -> bool:
        return bool(self.targets)


def plan_read_repair(
    replies: Iterable[ReadReply],
    reconciled_digest: bytes | None,
    *,
    include_fallbacks: bool = False,
) -> ReadRepairPlan:
    """Which replicas to repair. ``reconciled_digest`` None (nothing anywhere) means nothing to repair.

    A node listed twice (a retried reply) is judged on its last reply.
    """
    last: dict[str, ReadReply] = {}
    for reply in replies:
        last.pop(reply.node, None)  # keep insertion order = order of the last reply
        last[reply.node] = reply
    if reconciled_digest is None:
        return ReadRepairPlan((), ())
    targets: list[str] = []
    skipped: list[str] = []
    for reply in last.values():
        if reply.digest == reconciled_digest:
            continue
        if reply.primary or include_fallbacks:
            targets.append(reply.node)
        else:
            skipped.append(reply.node)
    return ReadRepairPlan(tuple(targets), tuple(skipped))
