"""Shared fixtures of the service unit tests: real replicas over real LMDB stores, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dynamostore.kv.replica import LocalReplica
from tests.services.fakes import open_replica

OpenReplica = Callable[..., Awaitable[LocalReplica]]


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[OpenReplica]:
    """`await replicas("n1", partitions=8)`: a node's replica; every store is closed at the end of the test."""
    opened: list[LocalReplica] = []

    async def make(node_id: str, *, partitions: int, segments: int = 16) -> LocalReplica:
        r = await open_replica(tmp_path, node_id, partitions=partitions, segments=segments)
        opened.append(r)
        return r

    yield make
    for r in opened:
        await r.storage.close()
