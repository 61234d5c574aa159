"""What the client raises. Every error is a `ClientError`; each says what happened in words a caller can act on.

| exception | when |
|---|---|
| `NotFound` | the key has no live value (absent, or deleted); carries the read's context |
| `QuorumError` | the cluster answered 503 on every node tried: not enough replicas in time (required/answered counts) |
| `Conflict` | siblings that nothing resolved, a write over the sibling cap (409), or `update()` giving up |
| `Unreachable` | no node answered within the request's deadline (refused connections, timeouts) |
| `UncertainWrite` | a write may or may not have been applied, and the client was told not to retry it |
| `BadRequest` | the server refused the request as malformed (4xx): retrying cannot help |
| `ServerError` | any other answer the client does not expect (a 5xx other than 503) |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


# What a Conflict carries, described here rather than imported: `client.objects` raises these errors, so this
# module does not import it back (no import cycle, not even a TYPE_CHECKING one). `objects.Sibling` and
# `objects.Object` are what a Conflict actually holds.

class SiblingValue(Protocol):
    @property
    def value(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...


class ReadState(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def context(self) -> str | None: ...


class ClientError(Exception):
    """Base of everything `dynamostore.client` raises."""


class NotFound(ClientError):
    """No live value for the key. `context` is the read's context (a deleted key's tombstone): a write that
    carries it supersedes the tombstone instead of standing beside it."""

    def __init__(self, key: str, context: str | None = None) -> None:
        super().__init__(f"no value for key {key!r}")
        self.key = key
        self.context = context


class QuorumError(ClientError):
    """503: the coordinator could not gather the replicas the request asked for in time.

    `required` and `answered` are the counts the server reported (None where its answer did not say)."""

    def __init__(self, reason: str, required: int | None = None, answered: int | None = None,
                 coordinator: str | None = None) -> None:
        counts = ""
        if required is not None:
            counts = f" (required {required}, answered {answered if answered is not None else '?'})"
        super().__init__(f"quorum not reached{counts}: {reason}")
        self.reason = reason
        self.required = required
        self.answered = answered
        self.coordinator = coordinator


class Conflict(ClientError):
    """Concurrent values the caller has to choose between, or the server's refusal of one more sibling.

    `siblings` are the values in conflict (empty for the server's 409); `object` the state they came from,
    when there is one (its context covers every sibling: writing a resolution with it replaces them all)."""

    def __init__(self, message: str, siblings: Sequence[SiblingValue] = (), obj: ReadState | None = None) -> None:
        super().__init__(message)
        self.siblings = tuple(siblings)
        self.object = obj


class Unreachable(ClientError):
    """No node gave an answer before the request's deadline. `attempts` lists what each try ran into.

    For a write, `maybe_applied` says whether one of the tries may have reached a coordinator (a timeout or a
    connection cut after the request was sent): then the write may be in the store."""

    def __init__(self, message: str, attempts: Sequence[str] = (), maybe_applied: bool = False) -> None:
        tried = "; ".join(attempts)
        super().__init__(f"{message}" + (f" (tried: {tried})" if tried else ""))
        self.attempts = tuple(attempts)
        self.maybe_applied = maybe_applied


class UncertainWrite(ClientError):
    """A write that may have been applied failed (timeout after sending, a cut connection, or a 503), and the
    client was built with `retry_writes=False`: it is in the store or not, and reading tells which."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class BadRequest(ClientError):
    """The server refused the request (4xx other than 404/409): a malformed key, header, context or quorum,
    a value over the size limit (413), or missing credentials (401/403)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}")
        self.status = status
        self.error = error
        self.reason = reason


class ServerError(ClientError):
    """An answer the client does not expect (500, or a status outside the API)."""

    def __init__(self, status: int, reason: str, node: str | None = None) -> None:
        super().__init__(f"{status} from {node or 'the server'}: {reason}")
        self.status = status
        self.reason = reason
        self.node = node
