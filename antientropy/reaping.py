"""When a tombstone may be reaped (pure): the agreement part of the reaping rule.

A fully deleted key's record may be removed only once no replica can bring its value back (why each part
is needed is in docs/antientropy.md, "Tombstones"):

1. every node is up and answered the check (the service asks only when all are seen up): one that did
   not answer may hold an older copy or a hint that would revive the value;
2. every *primary* of the partition holds exactly the candidate state (the same causal digest): one that
   missed the delete, or still holds the old value, would revive it through anti-entropy;
3. *no* member holds a hint for the key: a hint still waiting to carry an old write home would too.

The I/O (asking the members, removing the records conditionally) is the reaper service's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


class KeyCheck:
    """One member's answer for one key: the digest of its stored state (None: nothing stored) and whether
    it holds a hint for the key."""

    __slots__ = ("digest", "hinted")

    def __init__(self, digest: bytes | None, hinted: bool) -> None:
        self.digest = digest
        self.hinted = hinted

    @classmethod
    def from_wire(cls, raw: Sequence[object]) -> KeyCheck:
        digest, hinted = raw
        if digest is not None and not isinstance(digest, bytes):
            raise ValueError("a key check's digest is bytes or None")
        return cls(digest, bool(hinted))

    def to_wire(self) -> list[object]:
        return [self.digest, self.hinted]


def agreed(keys: Sequence[bytes], candidates: Mapping[bytes, bytes], answers: Mapping[str, Sequence[KeyCheck]],
           primaries: Collection[str]) -> list[bytes]:
    """The keys whose removal rules 2 and 3 allow. `candidates` maps each key to the digest of the tombstone
    state found locally; `answers` maps every member (this node included) to its checks of `keys`, in order."""
    out = []
    for j, key in enumerate(keys):
        ok = True
        for member, checks in answers.items():
            check = checks[j]
            if check.hinted or (member in primaries and check.digest != candidates[key]):
                ok = False
                break
        if ok:
            out.append(key)
    return out
