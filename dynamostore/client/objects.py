"""What the client hands back: objects read from the store (value, content type, context, siblings) and the
outcome of writes.

An `Object` is only ever built from an answer that carried the values its context covers (a GET, or a write
with `returnbody`): passing it to `put(..., context=obj)` therefore supersedes exactly what the caller saw.
A plain write's outcome (`WriteResult`) carries no context on purpose: a write must not claim to have seen
values it never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from dynamostore.client.errors import Conflict, NotFound

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Sibling:
    """One value of a key: its bytes, content type, and dot (`actor:counter`, the write that made it; None for
    a value a resolver made up)."""

    value: bytes
    content_type: str = OCTET_STREAM
    dot: str | None = None

    def same_value(self, other: Sibling) -> bool:
        return self.value == other.value and self.content_type == other.content_type


# A resolver turns concurrent siblings (two or more distinct values, in the order the server sent them) into
# the one value to keep. It must keep what every sibling contributed to lose no update: a union, a per-writer
# maximum, a domain merge. Picking one sibling drops the others' changes (last-writer-wins, knowingly).
Resolver = Callable[[tuple[Sibling, ...]], Sibling]


def distinct(siblings: tuple[Sibling, ...]) -> tuple[Sibling, ...]:
    """Siblings with equal bytes and content type counted once (first one kept). Equal siblings are what a
    retried write leaves behind (the same value under two dots): they are one value, not a conflict."""
    out: list[Sibling] = []
    for s in siblings:
        if not any(s.same_value(o) for o in out):
            out.append(s)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Info:
    """What the server said about how it answered."""

    coordinator: str | None = None  # X-Coordinator: the node that coordinated
    replies: int | None = None  # X-Replies (reads) or X-Acks (writes)
    hinted: int | None = None  # X-Hinted: how many of those were fallbacks
    durable: int | None = None  # X-Durable (writes): acknowledgements fsynced
    node: str | None = None  # the node the client sent the request to


@dataclass(frozen=True, slots=True)
class Object:
    """A key's state as read: every sibling (empty when absent or deleted), the context covering them, and,
    when there were several distinct ones, the resolver's choice.

    `value`/`content_type` give the single value: the only sibling, equal siblings, or the resolution;
    with distinct unresolved siblings they raise `Conflict`, and with none `NotFound`."""

    key: str
    siblings: tuple[Sibling, ...]
    context: str | None
    resolved: Sibling | None = None
    info: Info = field(default_factory=Info)

    @property
    def exists(self) -> bool:
        return bool(self.siblings)

    @property
    def conflicted(self) -> bool:
        """Distinct siblings and no resolution."""
        return self.resolved is None and len(distinct(self.siblings)) > 1

    def chosen(self) -> Sibling:
        if self.resolved is not None:
            return self.resolved
        if not self.siblings:
            raise NotFound(self.key, self.context)
        values = distinct(self.siblings)
        if len(values) > 1:
            raise Conflict(f"key {self.key!r} has {len(values)} siblings and no resolver chose between them",
                           values, self)
        return values[0]

    @property
    def value(self) -> bytes:
        return self.chosen().value

    @property
    def content_type(self) -> str:
        return self.chosen().content_type

    def text(self, encoding: str = "utf-8") -> str:
        return self.value.decode(encoding)

    def resolve(self, resolver: Resolver) -> Object:
        """This object with `resolver`'s choice among its distinct siblings (unchanged when there is at most
        one distinct value). The context stays the read's, so writing the choice back replaces them all."""
        values = distinct(self.siblings)
        if len(values) < 2:
            return self
        choice = resolver(values)
        if not isinstance(choice, Sibling):
            raise TypeError(f"a resolver returns a Sibling, not {type(choice).__name__}")
        return Object(self.key, self.siblings, self.context, choice, self.info)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write's outcome. `object` is the key's state after the write when `returnbody` asked for it (then it
    is a read, with its context); otherwise None: a plain write's answer does not show the other values."""

    key: str
    info: Info
    object: Object | None = None
    deleted: int | None = None  # a DELETE without a context: how many values it deleted (X-Deleted-Siblings)


class Consistency(TypedDict, total=False):
    """Per-call consistency options (each overrides the client's default and the server's configuration).

    Quorums are an integer or a level name (one, two, three, quorum, all). `timeout` (seconds) is the
    server's time to reach the quorum (X-Timeout-Ms); `deadline` (seconds) is the client's time for the whole
    call, fail-over to other nodes included."""

    level: str  # X-Consistency-Level: R for reads, W for writes
    r: int | str
    w: int | str
    dw: int | str
    pr: int | str
    pw: int | str
    sloppy: bool
    timeout: float
    deadline: float
