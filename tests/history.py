"""A client-side history of writes and the checker that says whether any acknowledged write was lost.

Clients record every write with its outcome (ok, failed, unknown on timeout/connection loss) and the
values it meant to supersede (those it had read under the X-Context it sent). After the faults heal, a final
read of each key gives the values present. An acknowledged value is fine when it is present, or when a
later acknowledged write superseded it (transitively). Unacknowledged values that show up are reported as
unexpected, never as failures: a write that timed out may well have been applied.
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


@dataclass
class Report:
    acknowledged: int
    lost: list[tuple[str, bytes]]
    unexpected: list[tuple[str, bytes]]
    unknown: int
    failed: int

    def summary(self) -> str:
        return (f"acknowledged={self.acknowledged} lost={len(self.lost)} unexpected={len(self.unexpected)} "
                f"unknown={self.unknown} failed={self.failed}")


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)

    def record(self, key: str, value: bytes, outcome: Outcome, supersedes: frozenset[bytes] = frozenset()) -> None:
        self.writes.append(Write(key, value, outcome, supersedes))

    def keys(self) -> set[str]:
        return {w.key for w in self.writes}

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
