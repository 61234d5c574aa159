"""Partition ownership and preference lists: the pure ring.

The hash space (64-bit, see `ring.hashing`) is cut into Q equal partitions, fixed for the life of a
cluster. Each partition has one owner node. A key's preference list starts at its partition and walks
clockwise over the partitions, collecting distinct physical nodes: the first N are the key's primaries,
the rest are its fallbacks in order (as riak_core_apl does).

`claim` assigns partitions to a node set and re-balances when the set changes, moving as few partitions
as it can: a joining node takes about Q/(S+1) partitions from the most loaded owners, a leaving node's
partitions go to the least loaded. It is deterministic, so every node that applies the same membership
change computes the same ring.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from enum import Enum

from ring.hashing import key_hash, partition_of


class Role(str, Enum):
    PRIMARY = "primary"
    FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class Target:
    """One replica of a request: the node to contact, and for a fallback the primary it stands in for."""

    node: str
    role: Role
    hint_for: str | None = None

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY


@dataclass(frozen=True)
class Ring:
    """Ownership of Q equal partitions. `owners[p]` owns partition p."""

    owners: tuple[str, ...]
    # walk() of every partition, computed once: preference lists are asked for on every request
    _walks: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_walks", tuple(self._compute_walk(p) for p in range(len(self.owners))))

    @property
    def num_partitions(self) -> int:
        return len(self.owners)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.owners)))

    def partition_for_key(self, key: bytes) -> int:
        return partition_of(key_hash(key), len(self.owners))

    def walk(self, partition: int) -> list[str]:
        """Every distinct owner, in clockwise order starting at `partition`."""
        return list(self._walks[partition])

    def _compute_walk(self, partition: int) -> tuple[str, ...]:
        seen: list[str] = []
        q = len(self.owners)
        for i in range(q):
            node = self.owners[(partition + i) % q]
            if node not in seen:
                seen.append(node)
        return tuple(seen)

    def preference_list(self, partition: int, n: int) -> tuple[list[str], list[str]]:
        """(primaries, fallbacks) for a partition, ignoring liveness."""
        nodes = self._walks[partition]
        return list(nodes[:n]), list(nodes[n:])

    def partitions_of(self, node: str, n: int) -> list[int]:
        """Partitions for which `node` is one of the N primaries."""
        return [p for p in range(len(self.owners)) if node in self.walk(p)[:n]]


def apl(ring: Ring, partition: int, n: int, up: Container[str]) -> list[Target]:
    """The active preference list: primaries that are up, then one up fallback per down primary.

    Each fallback names the primary it stands in for (its hint target). Down primaries without an up
    fallback are simply missing: the caller's quorum arithmetic sees fewer targets.
    """
    primaries, fallbacks = ring.preference_list(partition, n)
    targets = [Target(p, Role.PRIMARY) for p in primaries if p in up]
    spare = [f for f in fallbacks if f in up]
    for down in (p for p in primaries if p not in up):
        if not spare:
            break
        targets.append(Target(spare.pop(0), Role.FALLBACK, hint_for=down))
    return targets


def initial_ring(nodes: Sequence[str], num_partitions: int) -> Ring:
    """Round-robin ownership over sorted node ids: balanced within one partition."""
    if not nodes:
        raise ValueError("a ring needs at least one node")
    if num_partitions < len(nodes):
        raise ValueError(f"{num_partitions} partitions cannot be spread over {len(nodes)} nodes")
    ordered = sorted(set(nodes))
    return Ring(tuple(ordered[i % len(ordered)] for i in range(num_partitions)))


def _too_close(owners: list[str], p: int, node: str, spacing: int) -> bool:
    """Would giving partition p to `node` put it within `spacing` partitions of another of its own?"""
    q = len(owners)
    return any(owners[(p + d) % q] == node for d in range(-spacing, spacing + 1) if d != 0)


def claim(ring: Ring, nodes: Sequence[str], spacing: int = 2) -> Ring:
    """Re-balance `ring` onto `nodes`, moving as few partitions as possible.

    Partitions of nodes that left go to the least loaded remaining nodes; then each node below its fair
    share takes partitions from the most loaded ones. `spacing` (N-1 for N replicas) is how close two
    partitions of one node may sit: we prefer choices that keep a node's partitions at least that far
    apart so a key's N primaries stay distinct nodes, but fall back to any partition rather than refuse.
    """
    if not nodes:
        raise ValueError("a ring needs at least one node")
    members = sorted(set(nodes))
    q = ring.num_partitions
    if q < len(members):
        raise ValueError(f"{q} partitions cannot be spread over {len(members)} nodes")
    owners = list(ring.owners)
    load: Counter[str] = Counter({m: 0 for m in members})
    orphans: list[int] = []
    for p, owner in enumerate(owners):
        if owner in load:
            load[owner] += 1
        else:
            orphans.append(p)

    def pick_receiver(p: int) -> str:
        # Among the least loaded, prefer a node that keeps its spacing.
        least = min(load[m] for m in members)
        ranked = sorted(
            (m for m in members if load[m] == least),
            key=lambda m: (_too_close(owners, p, m, spacing), load[m], m),
        )
        return ranked[0]

    for p in orphans:
        m = pick_receiver(p)
        owners[p] = m
        load[m] += 1

    while True:  # each move shrinks the spread of loads, so this ends
        poorest = min(members, key=lambda m: (load[m], m))
        richest = min(members, key=lambda m: (-load[m], m))
        if load[richest] - load[poorest] <= 1:
            break
        candidates = [p for p in range(q) if owners[p] == richest]
        good = [p for p in candidates if not _too_close(owners, p, poorest, spacing)]
        p = (good or candidates)[0]
        owners[p] = poorest
        load[richest] -= 1
        load[poorest] += 1
    return Ring(tuple(owners))
