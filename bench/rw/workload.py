"""YCSB-style workload generator for `python -m bench.rw`: pure, seeded, no I/O.

Workloads follow YCSB's core set: A (50% read / 50% update), B (95/5), C (read only) and F (50% read,
50% read-modify-write with the context of the read). Keys are drawn from a zipfian distribution with
YCSB's constant 0.99 (Gray et al.'s "Quickly generating billion-record synthetic databases" method),
scrambled by default so the hot keys land on different partitions, or uniformly.

Same seed, same workload, same key count -> the same operation sequence, always (tests hold this).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

ZIPF_CONSTANT = 0.99


class OpKind(str, Enum):
    READ = "read"
    UPDATE = "update"
    RMW = "rmw"  # read-modify-write: GET, then PUT with the read's X-Context


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One YCSB core workload: the share of each operation (they sum to 1)."""

    name: str
    read: float
    update: float
    rmw: float

    def __post_init__(self) -> None:
        if abs(self.read + self.update + self.rmw - 1.0) > 1e-9:
            raise ValueError(f"workload {self.name}: operation shares must sum to 1")


WORKLOADS: dict[str, WorkloadSpec] = {
    "A": WorkloadSpec("A", read=0.5, update=0.5, rmw=0.0),
    "B": WorkloadSpec("B", read=0.95, update=0.05, rmw=0.0),
    "C": WorkloadSpec("C", read=1.0, update=0.0, rmw=0.0),
    "F": WorkloadSpec("F", read=0.5, update=0.0, rmw=0.5),
}


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    key: int  # index into the key space; `key_name` turns it into the stored key


def key_name(index: int, prefix: str = "user") -> str:
    return f"{prefix}{index:08d}"


def _fnv1a64(x: int) -> int:
    """FNV-1a over the 8 bytes of x: spreads zipfian ranks over the key space (YCSB's scrambling idea)."""
    h = 0xCBF29CE484222325
    for _ in range(8):
        h ^= x & 0xFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        x >>= 8
    return h


class Zipfian:
    """Ranks 0..n-1 with P(rank i) proportional to 1/(i+1)^theta; rank 0 is the most popular."""

    def __init__(self, n: int, rng: random.Random, theta: float = ZIPF_CONSTANT) -> None:
        if n < 1:
            raise ValueError("a zipfian distribution needs at least one item")
        if not 0 < theta < 1:
            raise ValueError("theta must be in (0, 1)")
        self.n = n
        self.theta = theta
        self.rng = rng
        self.zetan = sum(1.0 / (i ** theta) for i in range(1, n + 1))
        zeta2 = 1.0 + 0.5 ** theta
        self.alpha = 1.0 / (1.0 - theta)
        self.eta = (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - zeta2 / self.zetan) if n > 1 else 0.0
        self._half_pow = 1.0 + 0.5 ** theta

    def next(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0 or self.n == 1:
            return 0
        if uz < self._half_pow:
            return 1
        return min(self.n - 1, int(self.n * (self.eta * u - self.eta + 1.0) ** self.alpha))


class KeyChooser:
    """Key indexes in [0, keys): 'zipfian' (scrambled), 'zipfian-ordered' (rank = key) or 'uniform'."""

    def __init__(self, keys: int, distribution: str, rng: random.Random) -> None:
        if distribution not in ("zipfian", "zipfian-ordered", "uniform"):
            raise ValueError(f"unknown key distribution {distribution!r}")
        self.keys = keys
        self.distribution = distribution
        self.rng = rng
        self._zipf = Zipfian(keys, rng) if distribution != "uniform" else None

    def next(self) -> int:
        if self._zipf is None:
            return self.rng.randrange(self.keys)
        rank = self._zipf.next()
        if self.distribution == "zipfian-ordered":
            return rank
        return _fnv1a64(rank) % self.keys


class Workload:
    """An endless, seeded sequence of operations of one workload over `keys` keys."""

    def __init__(self, spec: WorkloadSpec, keys: int, seed: int, distribution: str = "zipfian") -> None:
        self.spec = spec
        # One RNG per purpose, both derived from the seed, so changing the mix never changes the key stream.
        self._op_rng = random.Random(f"{seed}:{spec.name}:ops")
        self.chooser = KeyChooser(keys, distribution, random.Random(f"{seed}:{spec.name}:keys"))

    def next(self) -> Op:
        u = self._op_rng.random()
        if u < self.spec.read:
            kind = OpKind.READ
        elif u < self.spec.read + self.spec.update:
            kind = OpKind.UPDATE
        else:
            kind = OpKind.RMW
        return Op(kind, self.chooser.next())

    def __iter__(self) -> Iterator[Op]:
        while True:
            yield self.next()

    def take(self, count: int) -> list[Op]:
        return [self.next() for _ in range(count)]


def value_for(seed: int, index: int, size: int) -> bytes:
    """A deterministic value of `size` bytes for write number `index` (cheap: no RNG per byte)."""
    stamp = f"{seed}:{index}:".encode()
    reps = size // len(stamp) + 1
    return (stamp * reps)[:size]
