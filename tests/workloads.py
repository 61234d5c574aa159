"""Client workloads for the fault suites (tests/system/test_faults.py, tests/system/test_ring_faults.py).

Each client loops until `stop` is set, picks a coordinator at random among `target.nodes()` for every
operation (the nodes change while the ring changes), and records what it did in a `History`, with the
client's monotonic start and end of each operation and the quorum it asked for, so the checker can tell
a stale strict read from a read that raced a write:

- `set_adder`: read a set key (merging siblings), add a distinct element, write back with the read's context;
- `blind_writer`: unique values into many keys, no context (concurrent with everything);
- `deleter`: write a key of its own, read it back, delete it with the read's context, and now and then read
  a key it deleted before (a deleted value that comes back is resurrected);
- `reader`: strict reads of keys other clients acknowledged (a strict read that misses one is stale).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.history import History, Outcome, values_of

OP_TIMEOUT = aiohttp.ClientTimeout(total=3)
SET_KEYS = 3
BLIND_KEYS = 150


@dataclass
class Target:
    """Where and how clients send requests: the nodes to coordinate, their URLs, and the quorum headers."""

    nodes: Callable[[], list[str]]
    url: Callable[[str], str]
    headers: dict[str, str]
    prefix: str
    r: int = 2
    w: int = 2
    strict: bool = False  # X-Sloppy-Quorum: false (only primaries count)

    def pick(self, rng: random.Random) -> str:
        return rng.choice(self.nodes())


@dataclass
class Stats:
    """Per-op outcome with its start time: availability is measured over ops begun during a fault."""

    ops: list[tuple[float, bool]] = field(default_factory=list)
    added: dict[str, set[str]] = field(default_factory=dict)  # key -> elements added by acknowledged writes
    deleted: list[str] = field(default_factory=list)  # keys deleted with an acknowledged delete

    def availability(self, during_fault: Callable[[float], bool]) -> tuple[int, float]:
        during = [ok for t, ok in self.ops if during_fault(t)]
        return len(during), (sum(during) / len(during) if during else float("nan"))


def elements(values: set[bytes]) -> set[str]:
    out: set[str] = set()
    for v in values:
        out |= set(json.loads(v))
    return out


async def _read(s: aiohttp.ClientSession, t: Target, node: str, key: str, h: History
                ) -> tuple[set[bytes], str | None] | None:
    """A read at R recorded in the history; None when it failed (not recorded: it saw nothing)."""
    start = time.monotonic()
    try:
        async with s.get(f"{t.url(node)}/kv/{key}", headers={**t.headers, "Accept": "application/json"},
                         timeout=OP_TIMEOUT) as r:
            body = await r.read()
            if r.status not in (200, 300, 404):
                return None
            read = values_of(r.status, dict(r.headers), body)
            ctx = r.headers.get("X-Context")
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
    h.record_read(key, frozenset(read), start, time.monotonic(), t.r, t.strict)
    return read, ctx


async def _write(s: aiohttp.ClientSession, t: Target, node: str, key: str, value: bytes, h: History,
                 st: Stats, ctx: str | None = None, supersedes: frozenset[bytes] = frozenset()) -> bool:
    headers = dict(t.headers)
    if ctx:
        headers["X-Context"] = ctx
    start = time.monotonic()
    try:
        async with s.put(f"{t.url(node)}/kv/{key}", data=value, headers=headers, timeout=OP_TIMEOUT) as r:
            await r.read()
            ok = r.status == 204
    except (aiohttp.ClientError, asyncio.TimeoutError):
        h.record(key, value, Outcome.UNKNOWN, supersedes, start, time.monotonic(), t.w, t.strict)
        st.ops.append((start, False))
        return False
    h.record(key, value, Outcome.OK if ok else Outcome.FAILED, supersedes, start, time.monotonic(), t.w, t.strict)
    st.ops.append((start, ok))
    return ok


async def set_adder(s: aiohttp.ClientSession, t: Target, cid: int, h: History, st: Stats, rng: random.Random,
                    stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        key = f"{t.prefix}set{rng.randrange(SET_KEYS)}"
        node = t.pick(rng)
        start = time.monotonic()
        i += 1
        elem = f"c{cid}-{i}"
        got = await _read(s, t, node, key, h)
        if got is None:
            st.ops.append((start, False))
            await asyncio.sleep(0.05)  # a dead coordinator refuses at once: do not spin
            continue
        read, ctx = got
        value = json.dumps(sorted(elements(read) | {elem})).encode()
        if await _write(s, t, node, key, value, h, st, ctx, frozenset(read)):
            st.added.setdefault(key, set()).add(elem)


async def blind_writer(s: aiohttp.ClientSession, t: Target, cid: int, h: History, st: Stats, rng: random.Random,
                       stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        key = f"{t.prefix}b{rng.randrange(BLIND_KEYS):03d}"
        i += 1
        if not await _write(s, t, t.pick(rng), key, f"w{cid}-{i}".encode(), h, st):
            await asyncio.sleep(0.05)


async def deleter(s: aiohttp.ClientSession, t: Target, cid: int, h: History, st: Stats, rng: random.Random,
                  stop: asyncio.Event, preloaded: int = 0) -> None:
    """Deletes keys it wrote: the `preloaded` keys `{prefix}d{cid}-0..` (written before the run, so they were
    on their former owners before the ring changed), then keys it writes as it goes."""
    todo = [f"{t.prefix}d{cid}-{j}" for j in range(preloaded)]
    rng.shuffle(todo)
    j = preloaded
    while not stop.is_set():
        if todo and rng.random() < 0.5:
            key = todo.pop()
        else:
            key = f"{t.prefix}d{cid}-{j}"
            j += 1
            if not await _write(s, t, t.pick(rng), key, f"d{cid}-{j}".encode(), h, st):
                await asyncio.sleep(0.05)
                continue
        node = t.pick(rng)
        got = await _read(s, t, node, key, h)
        if got is None or not got[0]:
            await asyncio.sleep(0.05)
            continue
        read, ctx = got
        headers = {**t.headers, "X-Context": ctx or ""}
        start = time.monotonic()
        try:
            async with s.delete(f"{t.url(node)}/kv/{key}", headers=headers, timeout=OP_TIMEOUT) as r:
                await r.read()
                outcome = Outcome.OK if r.status == 204 else Outcome.FAILED
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcome = Outcome.UNKNOWN
        h.record_delete(key, frozenset(read), outcome, start, time.monotonic(), t.w, t.strict)
        st.ops.append((start, outcome is Outcome.OK))
        if outcome is Outcome.OK:
            st.deleted.append(key)
        if st.deleted and rng.random() < 0.5:  # look for a deleted value coming back
            await _read(s, t, t.pick(rng), rng.choice(st.deleted), h)


async def reader(s: aiohttp.ClientSession, t: Target, h: History, rng: random.Random, stop: asyncio.Event) -> None:
    """Reads keys that have acknowledged writes, through any coordinator, at the target's R."""
    while not stop.is_set():
        acked = [w.key for w in h.writes[-500:] if w.outcome is Outcome.OK]
        if not acked:
            await asyncio.sleep(0.05)
            continue
        if await _read(s, t, t.pick(rng), rng.choice(acked), h) is None:
            await asyncio.sleep(0.05)
