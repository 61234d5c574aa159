"""Quorum arithmetic: consistency levels, and the pure tallies behind the put and get coordinators.

Like riak_kv's put/get FSMs, a coordinator is split in two: this module decides (how many answers are
enough, whether the quorum can still be met, what to answer, which replicas to repair), and
`coordinator.py` only sends messages and feeds the answers in. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from antientropy.readrepair import ReadReply, plan_read_repair
from dynamostore.versioning import VersionSet, digest, sync_all

LEVELS = {"ONE": 1, "TWO": 2, "THREE": 3}


class QuorumError(ValueError):
    """A consistency header or parameter is malformed or asks for more than N."""


def parse_quorum(raw: str, n: int, name: str) -> int:
    """An integer or a level name (ONE, TWO, THREE, QUORUM, ALL) -> replica count for N replicas."""
    text = raw.strip().upper()
    if text == "ALL":
        value = n
    elif text == "QUORUM":
        value = n // 2 + 1
    elif text in LEVELS:
        value = LEVELS[text]
    elif text.isascii() and text.isdigit():
        value = int(text)
    else:
        raise QuorumError(f"{name} must be an integer or one of ONE, TWO, THREE, QUORUM, ALL (got {raw!r})")
    if value > n:
        raise QuorumError(f"{name} = {value} is larger than N = {n}")
    return value


@dataclass(frozen=True, slots=True)
class PutOutcome:
    ok: bool
    acks: int
    hinted: int
    durable: int
    primaries: int
    reason: str = ""


@dataclass
class PutTally:
    """Counts replica acknowledgements of one write against W, DW and PW."""

    w: int
    dw: int
    pw: int
    targets: int  # replicas the write was sent to (coordinator included)
    acks: int = 0
    hinted: int = 0
    durable: int = 0
    primaries: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    def add_ack(self, node: str, *, primary: bool, durable: bool) -> None:
        self.acks += 1
        self.primaries += primary
        self.hinted += not primary
        self.durable += durable

    def add_error(self, node: str, reason: str) -> None:
        self.errors[node] = reason

    @property
    def pending(self) -> int:
        return self.targets - self.acks - len(self.errors)

    def satisfied(self) -> bool:
        return self.acks >= self.w and self.durable >= self.dw and self.primaries >= self.pw

    def impossible(self) -> bool:
        """Even if every pending replica acknowledged, durably and as a primary, we'd fall short."""
        p = self.pending
        return self.acks + p < self.w or self.durable + p < self.dw or self.primaries + p < self.pw

    def done(self) -> bool:
        return self.satisfied() or self.impossible()

    def outcome(self, timed_out: bool = False) -> PutOutcome:
        if self.satisfied():
            return PutOutcome(True, self.acks, self.hinted, self.durable, self.primaries)
        wanted = [f"w={self.w}"] + ([f"dw={self.dw}"] if self.dw else []) + ([f"pw={self.pw}"] if self.pw else [])
        got = f"{self.acks} acknowledged ({self.primaries} primary, {self.durable} durable) of {self.targets} contacted"
        why = "timed out" if timed_out else "not enough replicas"
        errs = "; ".join(f"{n}: {e}" for n, e in sorted(self.errors.items()))
        reason = f"{why}: required {', '.join(wanted)}, {got}" + (f"; errors: {errs}" if errs else "")
        return PutOutcome(False, self.acks, self.hinted, self.durable, self.primaries, reason)


@dataclass(frozen=True, slots=True)
class Reply:
    node: str
    primary: bool
    state: VersionSet | None  # None: the replica has no record of the key


@dataclass(frozen=True, slots=True)
class GetOutcome:
    ok: bool
    state: VersionSet | None
    replies: int
    hinted: int
    reason: str = ""


@dataclass
class GetTally:
    """Collects replica replies of one read against R and PR; reconciles; plans read repair."""

    r: int
    pr: int
    targets: int  # every replica that may be asked, including the `reserve` not asked yet
    reserve: int = 0  # replicas held back, asked only if one asked fails or is slow
    replies: list[Reply] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def add_reply(self, reply: Reply) -> None:
        self.replies.append(reply)

    def add_error(self, node: str, reason: str) -> None:
        self.errors[node] = reason

    @property
    def pending(self) -> int:
        return self.targets - len(self.replies) - len(self.errors)

    def _primaries(self) -> int:
        return sum(1 for r in self.replies if r.primary)

    def satisfied(self) -> bool:
        return len(self.replies) >= self.r and self._primaries() >= self.pr

    def impossible(self) -> bool:
        p = self.pending
        return len(self.replies) + p < self.r or self._primaries() + p < self.pr

    def done(self) -> bool:
        return self.satisfied() or self.impossible()

    def all_in(self) -> bool:
        """Every replica that was asked has answered."""
        return self.pending - self.reserve == 0

    def merged(self) -> VersionSet | None:
        return sync_all(r.state for r in self.replies)

    def outcome(self, timed_out: bool = False) -> GetOutcome:
        hinted = sum(1 for r in self.replies if not r.primary)
        if self.satisfied():
            return GetOutcome(True, self.merged(), len(self.replies), hinted)
        wanted = f"r={self.r}" + (f", pr={self.pr}" if self.pr else "")
        why = "timed out" if timed_out else "not enough replicas"
        errs = "; ".join(f"{n}: {e}" for n, e in sorted(self.errors.items()))
        reason = (
            f"{why}: required {wanted}, {len(self.replies)} answered ({self._primaries()} primary) "
            f"of {self.targets} contacted" + (f"; errors: {errs}" if errs else "")
        )
        return GetOutcome(False, None, len(self.replies), hinted, reason)

    def repairs(self, include_fallbacks: bool = False) -> list[str]:
        """Replicas that answered with a stale or missing version (read repair targets).

        Primaries only by default: repairing a fallback would plant data on a node that does not own it.
        """
        merged = self.merged()
        if merged is None:
            return []
        replies = [ReadReply(r.node, r.primary, digest(r.state)) for r in self.replies]
        return list(plan_read_repair(replies, digest(merged), include_fallbacks=include_fallbacks).targets)
