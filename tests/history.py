"""A client-side history of writes, deletes and reads, and the checker of what the store promised.

Clients record every write with its outcome (ok, failed, unknown on timeout/connection loss) and the
values it meant to supersede (those it had read under the X-Context it sent). After the faults heal, a final
read of each key gives the values present. An acknowledged value is fine when it is present, or when a
later acknowledged write superseded it (transitively). Unacknowledged values that show up are reported as
unexpected, never as failures: a write that timed out may well have been applied.

`History.verify` (the ring-fault suite) counts three things that must all be zero:
- lost: as above, except that a write that was not acknowledged but demonstrably applied (its value was
  read, or present at the end) also supersedes what its client read (Dynamo semantics: a 503'd write may
  still land on a replica), and a value any delete covered (acknowledged or not: a 503'd delete may still
  have written its tombstone) is not lost;
- resurrected: a value that an acknowledged delete covered (the client read it and deleted with that
  context) is returned by a read that began after the delete was acknowledged, or is present at the end.
  Every written value is unique, so no later write can bring the same value back legitimately;
- stale strict reads: a read with a strict quorum R whose answer misses the value of an acknowledged
  strict write of quorum W with R + W > N that completed before the read began, and that nothing
  (write or delete, whatever its outcome) begun before the read ended could have superseded.
`Report.assert_clean` raises `Violation` when any is non-zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum


class Outcome(str, Enum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Write:
    key: str
    value: bytes
    outcome: Outcome
    supersedes: frozenset[bytes] = frozenset()
    start: float = 0.0  # client monotonic time the request was sent / answered
    end: float = 0.0
    quorum: int = 0     # W asked for, and whether only primaries counted (X-Sloppy-Quorum: false)
    strict: bool = False


@dataclass(frozen=True)
class Delete:
    """A delete sent with the context of a read: it covers exactly the values that read returned."""

    key: str
    covers: frozenset[bytes]
    outcome: Outcome
    start: float
    end: float
    quorum: int = 0
    strict: bool = False


@dataclass(frozen=True)
class Read:
    key: str
    values: frozenset[bytes]
    start: float
    end: float
    quorum: int = 0
    strict: bool = False


class Violation(AssertionError):
    """The store broke a promise: an acknowledged write lost, a deleted value back, or a stale strict read."""


@dataclass
class Report:
    acknowledged: int
    lost: list[tuple[str, bytes]]
    unexpected: list[tuple[str, bytes]]
    unknown: int
    failed: int
    resurrected: list[tuple[str, bytes]] = field(default_factory=list)
    stale_strict: list[tuple[str, bytes]] = field(default_factory=list)  # (key, the value a strict read missed)
    deletes: int = 0   # acknowledged deletes
    reads: int = 0     # reads recorded (final reads excluded)

    def summary(self) -> str:
        return (f"acknowledged={self.acknowledged} lost={len(self.lost)} resurrected={len(self.resurrected)} "
                f"stale_strict={len(self.stale_strict)} unexpected={len(self.unexpected)} "
                f"unknown={self.unknown} failed={self.failed} deletes={self.deletes} reads={self.reads}")

    def assert_clean(self, label: str = "") -> None:
        if self.lost or self.resurrected or self.stale_strict:
            def first(kvs: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
                return [(k, v[:40]) for k, v in kvs[:5]]

            raise Violation(f"{label}: {self.summary()}; lost {first(self.lost)} resurrected "
                            f"{first(self.resurrected)} stale strict {first(self.stale_strict)}")


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    n_val: int = 3

    def record(self, key: str, value: bytes, outcome: Outcome, supersedes: frozenset[bytes] = frozenset(),
               start: float = 0.0, end: float = 0.0, quorum: int = 0, strict: bool = False) -> None:
        self.writes.append(Write(key, value, outcome, supersedes, start, end, quorum, strict))

    def record_delete(self, key: str, covers: frozenset[bytes], outcome: Outcome, start: float, end: float,
                      quorum: int = 0, strict: bool = False) -> None:
        self.deletes.append(Delete(key, covers, outcome, start, end, quorum, strict))

    def record_read(self, key: str, values: frozenset[bytes], start: float, end: float, quorum: int = 0,
                    strict: bool = False) -> None:
        self.reads.append(Read(key, values, start, end, quorum, strict))

    def keys(self) -> set[str]:
        return {w.key for w in self.writes} | {d.key for d in self.deletes}

    def check(self, final: dict[str, set[bytes]]) -> Report:
        acked: dict[str, set[bytes]] = defaultdict(set)
        superseded: dict[str, set[bytes]] = defaultdict(set)
        for w in self.writes:
            if w.outcome is Outcome.OK:
                acked[w.key].add(w.value)
                superseded[w.key] |= w.supersedes
        lost: list[tuple[str, bytes]] = []
        unexpected: list[tuple[str, bytes]] = []
        for key in sorted(self.keys()):
            present = final.get(key, set())
            for val in sorted(acked[key]):
                if val not in present and val not in superseded[key]:
                    lost.append((key, val))
            attempted = {w.value for w in self.writes if w.key == key}
            for val in sorted(present):
                if val not in acked[key] and val in attempted:
                    unexpected.append((key, val))
        return Report(
            acknowledged=sum(1 for w in self.writes if w.outcome is Outcome.OK),
            lost=lost,
            unexpected=unexpected,
            unknown=sum(1 for w in self.writes if w.outcome is Outcome.UNKNOWN),
            failed=sum(1 for w in self.writes if w.outcome is Outcome.FAILED),
        )


    def really_lost(self, final: dict[str, set[bytes]], lost: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """`lost` less the values superseded by a write that was not acknowledged but demonstrably happened:
        its value is present at the end, was read by a client, or was superseded by a later write."""
        seen = {(w.key, v) for w in self.writes for v in w.supersedes}
        seen |= {(k, v) for k, vs in final.items() for v in vs}
        seen |= {(r.key, v) for r in self.reads for v in r.values}
        applied = {(w.key, w.value) for w in self.writes} & seen
        credited = {(w.key, v) for w in self.writes if (w.key, w.value) in applied for v in w.supersedes}
        return [(k, v) for k, v in lost if (k, v) not in credited]

    def verify(self, final: dict[str, set[bytes]]) -> Report:
        """Every count the ring-fault suite holds the store to (see the module doc); `final` is a strict
        R=ALL read of every key after the faults healed and the cluster settled."""
        report = self.check(final)
        # a delete answered 503 or timed out may still have written its tombstone (as a write may): whatever
        # any delete covered is not counted lost; only an acknowledged delete makes a comeback a resurrection
        deleted = {(d.key, v) for d in self.deletes for v in d.covers}
        report.lost = [kv for kv in self.really_lost(final, report.lost) if kv not in deleted]
        report.deletes = sum(1 for d in self.deletes if d.outcome is Outcome.OK)
        report.reads = len(self.reads)
        report.resurrected = self._resurrected(final)
        report.stale_strict = self._stale_strict()
        return report

    def _resurrected(self, final: dict[str, set[bytes]]) -> list[tuple[str, bytes]]:
        gone_at: dict[tuple[str, bytes], float] = {}  # (key, value) -> when its first acknowledged delete ended
        for d in self.deletes:
            if d.outcome is Outcome.OK:
                for v in d.covers:
                    gone_at[(d.key, v)] = min(d.end, gone_at.get((d.key, v), d.end))
        out: set[tuple[str, bytes]] = set()
        for r in self.reads:
            out |= {(r.key, v) for v in r.values if gone_at.get((r.key, v), r.start) < r.start}
        out |= {(k, v) for k, vs in final.items() for v in vs if (k, v) in gone_at}
        return sorted(out)

    def _stale_strict(self) -> list[tuple[str, bytes]]:
        # when each value may have stopped being current: the earliest start of anything that superseded it
        superseded_from: dict[tuple[str, bytes], float] = {}
        for w in self.writes:
            for v in w.supersedes:
                superseded_from[(w.key, v)] = min(w.start, superseded_from.get((w.key, v), w.start))
        for d in self.deletes:
            for v in d.covers:
                superseded_from[(d.key, v)] = min(d.start, superseded_from.get((d.key, v), d.start))
        strict_writes: dict[str, list[Write]] = defaultdict(list)
        for w in self.writes:
            if w.outcome is Outcome.OK and w.strict:
                strict_writes[w.key].append(w)
        out: list[tuple[str, bytes]] = []
        for r in self.reads:
            if not r.strict:
                continue
            for w in strict_writes.get(r.key, ()):
                if (w.end < r.start and r.quorum + w.quorum > self.n_val and w.value not in r.values
                        and superseded_from.get((w.key, w.value), float("inf")) > r.end):
                    out.append((r.key, w.value))
        return out


def values_of(status: int, headers: dict[str, str], body: bytes) -> set[bytes]:
    """The values a GET answered (200: one, 300 with Accept: application/json: the siblings, 404: none)."""
    import base64
    import json

    if status == 200:
        return {body}
    if status == 300:
        return {base64.b64decode(s["value"]) for s in json.loads(body)["siblings"]}
    if status == 404:
        return set()
    raise AssertionError(f"final read failed: {status} {body[:200]!r}")
