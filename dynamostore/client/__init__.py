"""The Python client of dynamostore: `Client` (synchronous, urllib3) and `AsyncClient` (asyncio, aiohttp),
one API over one sans-IO core (`core`: requests, retries, answers; `routing`: the ring).

    from dynamostore.client import Client

    with Client(["http://127.0.0.1:8001"]) as c:
        c.put("greeting", "hello")
        obj = c.get("greeting")                        # value, content type, context, siblings
        c.put("greeting", "hello again", context=obj)  # supersedes what was read
        c.update("visits", lambda v: str(int(v or b"0") + 1))   # read-modify-write

Each request goes to a live primary of its key (the client reads the ring from /status) and fails over to the
next node of the key's preference list on a refused connection, a timeout or a 503, within its deadline.
"""

from dynamostore.client.aio import AsyncClient
from dynamostore.client.base import Settings, UpdateFn
from dynamostore.client.errors import (
    BadRequest,
    ClientError,
    Conflict,
    NotFound,
    QuorumError,
    ServerError,
    UncertainWrite,
    Unreachable,
)
from dynamostore.client.objects import Consistency, Info, Object, Resolver, Sibling, WriteResult, distinct
from dynamostore.client.sync import Client

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "Consistency",
    "Info",
    "NotFound",
    "Object",
    "QuorumError",
    "Resolver",
    "ServerError",
    "Settings",
    "Sibling",
    "UncertainWrite",
    "Unreachable",
    "UpdateFn",
    "WriteResult",
    "distinct",
]
