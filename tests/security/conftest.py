from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynamostore.security import certs

CLUSTER = "testcluster"


@dataclass(frozen=True)
class Pki:
    dir: Path  # the cluster's CA and its nodes n1..n3 (for 127.0.0.1 and localhost)
    foreign: Path  # another CA of the same name, with certificates for the same node ids

    def cert(self, node: str, foreign: bool = False) -> tuple[Path, Path]:
        d = self.foreign if foreign else self.dir
        return d / f"{node}.crt", d / f"{node}.key"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    out = Pki(root / "cluster", root / "foreign")
    for d in (out.dir, out.foreign):
        certs.create_ca(d, CLUSTER)
        for n in ("n1", "n2", "n3"):
            certs.issue_node(d, n, ["127.0.0.1", "localhost"])
    return out


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every in-process asyncio test here runs on both loops: nodes run on uvloop, whose TLS is its own."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if item.get_closest_marker("cluster") is not None:
        return factories  # the nodes are processes of their own (on uvloop): the test's loop does not matter
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux and macOS
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
