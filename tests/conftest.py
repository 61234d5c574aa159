from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Cluster


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a real cluster of node processes; every one is stopped at the end of the test."""
    made: list[Cluster] = []

    async def make(nodes: int = 3, settings: dict[str, Any] | None = None, start: bool = True,
                   own_addresses: bool = False, tls: bool = False) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", nodes, settings, own_addresses, tls)
        made.append(c)
        if start:
            await c.start_all()
        return c

    yield make
    for c in made:
        await c.close()
