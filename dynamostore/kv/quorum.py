"""Quorum arithmetic: consistency levels, and the pure tallies behind the put and get coordinators.

Like riak_kv's put/get FSMs, a coordinator is split in two: this module decides (how many answers are
enough, whether the quorum can still be met, what to answer, which replicas to repair), and
`coordinator.py` only sends messages and feeds the answers in. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from antientropy.readrepair import ReadReply, plan_read_repair
from dynamostore.kv.versioning import VersionSet, decode, digest, sync_all

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


class PutOutcome:
    """What a write's tally decided. Plain slotted classes, here and below: compiled, building a NamedTuple
    runs its interpreted `__new__`, and a dataclass its interpreted `__init__`, once per request."""

    __slots__ = ("ok", "acks", "hinted", "durable", "primaries", "reason")

    def __init__(self, ok: bool, acks: int, hinted: int, durable: int, primaries: int, reason: str = "") -> None:
        self.ok = ok
        self.acks = acks
        self.hinted = hinted
        self.durable = durable
        self.primaries = primaries
        self.reason = reason


class PutTally:
    """Counts replica acknowledgements of one write against W, DW and PW.

    The tallies are plain classes, not dataclasses: compiled, a dataclass keeps the __init__ that the
    dataclasses module generates at run time, an interpreted function called on every request."""

    def __init__(self, w: int, dw: int, pw: int, targets: int) -> None:
        self.w = w
        self.dw = dw
        self.pw = pw
        self.targets = targets  # replicas the write was sent to (coordinator included)
        self.acks = 0
        self.hinted = 0
        self.durable = 0
        self.primaries = 0
        self.errors: dict[str, str] = {}

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


class Reply:
    """One replica's answer to a read: its copy's causal encoding (`raw`, None when it has no record of the
    key), or an already decoded `state`. Decoded lazily and once: when every replica sent the same bytes the
    read decodes a single copy and has nothing to reconcile or repair."""

    __slots__ = ("node", "primary", "raw", "_state")

    def __init__(self, node: str, primary: bool, state: VersionSet | None = None, *, raw: bytes | None = None):
        self.node = node
        self.primary = primary
        self.raw = raw
        self._state = state

    @property
    def state(self) -> VersionSet | None:
        if self._state is None and self.raw is not None:
            self._state = decode(self.raw)
        return self._state


class GetOutcome:
    """What a read's tally decided."""

    __slots__ = ("ok", "state", "replies", "hinted", "reason")

    def __init__(self, ok: bool, state: VersionSet | None, replies: int, hinted: int, reason: str = "") -> None:
        self.ok = ok
        self.state = state
        self.replies = replies
        self.hinted = hinted
        self.reason = reason


class GetTally:
    """Collects replica replies of one read against R and PR; reconciles; plans read repair."""

    def __init__(self, r: int, pr: int, targets: int) -> None:
        self.r = r
        self.pr = pr
        self.targets = targets  # every replica that may be asked, including the `reserve` not asked yet
        self.reserve = 0  # replicas held back, asked only if one asked fails or is slow
        self.replies: list[Reply] = []
        self.errors: dict[str, str] = {}
        self.primaries = 0  # replies from primaries
        # (replies merged, result), recomputed only when a reply was added
        self._merged: tuple[int, VersionSet | None] = (-1, None)

    def add_reply(self, reply: Reply) -> None:
        self.replies.append(reply)
        self.primaries += reply.primary

    def _uniform(self) -> bool:
        """Every reply carried the same bytes (or none had the key): nothing to reconcile, nobody stale."""
        first = self.replies[0].raw if self.replies else None
        return all(r.raw == first and (r.raw is not None or r._state is None) for r in self.replies)

    def add_error(self, node: str, reason: str) -> None:
        self.errors[node] = reason

    @property
    def pending(self) -> int:
        return self.targets - len(self.replies) - len(self.errors)

    def satisfied(self) -> bool:
        return len(self.replies) >= self.r and self.primaries >= self.pr

    def impossible(self) -> bool:
        p = self.pending
        return len(self.replies) + p < self.r or self.primaries + p < self.pr

    def done(self) -> bool:
        return self.satisfied() or self.impossible()

    def all_in(self) -> bool:
        """Every replica that was asked has answered."""
        return self.pending - self.reserve == 0

    def merged(self) -> VersionSet | None:
        n, state = self._merged
        if n != len(self.replies):
            state = self.replies[0].state if self._uniform() else sync_all(r.state for r in self.replies)
            self._merged = (len(self.replies), state)
        return state

    def outcome(self, timed_out: bool = False) -> GetOutcome:
        hinted = sum(1 for r in self.replies if not r.primary)
        if self.satisfied():
            return GetOutcome(True, self.merged(), len(self.replies), hinted)
        wanted = f"r={self.r}" + (f", pr={self.pr}" if self.pr else "")
        why = "timed out" if timed_out else "not enough replicas"
        errs = "; ".join(f"{n}: {e}" for n, e in sorted(self.errors.items()))
        reason = (
            f"{why}: required {wanted}, {len(self.replies)} answered ({self.primaries} primary) "
            f"of {self.targets} contacted" + (f"; errors: {errs}" if errs else "")
        )
        return GetOutcome(False, None, len(self.replies), hinted, reason)

    def repairs(self, include_fallbacks: bool = False) -> list[str]:
        """Replicas that answered with a stale or missing version (read repair targets).

        Primaries only by default: repairing a fallback would plant data on a node that does not own it.
        """
        merged = self.merged()
        if merged is None or self._uniform():
            return []
        replies = [ReadReply(r.node, r.primary, digest(r.state)) for r in self.replies]
        return list(plan_read_repair(replies, digest(merged), include_fallbacks=include_fallbacks).targets)
