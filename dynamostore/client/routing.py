"""Where to send a request: the client's copy of the ring, learnt from a node's `/status` (pure: time comes in
as `now`, randomness from an injected `random.Random`, I/O is the transports' job).

Token-aware routing, as Cassandra's drivers do it: a key's partition and preference list come from the same
pure ring code the nodes run (`ring.hashing.locate`, `ring.placement.Ring`), so a request goes to a live
primary of its key. A primary coordinates a write itself and reads its own copy on its loop; any other node
would forward the write to a primary (one more hop) or ask remote replicas only.

The order of the nodes tried for a key: its live primaries (starting at a random one, to spread a hot key's
load), then its live fallbacks in ring order, then the nodes believed down (they may be back). A node is
believed down when the last `/status` said so, or for `down_for` seconds after a request to it got no
answer (a 503 is an answer: the node is up, its quorum was not).

`routing="seeds"` skips all of this: requests go to the URLs the client was given, in turn, each failing over
to the next (a load balancer in front of the cluster; or a benchmark that chooses its coordinators).

The copy is refreshed every `refresh_interval` seconds, and sooner (at most every `min_refresh` seconds)
once something suggests it is stale: a failure or a 503, a coordinator the client does not know, or a write
coordinated by another node than the one it was sent to (that node's ring no longer makes it a replica).
The ring epoch tells a new ring from the old one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ring.hashing import locate
from ring.placement import Ring

RouteMode = Literal["ring", "random", "seeds"]


@dataclass(frozen=True, slots=True)
class Target:
    """A node to send a request to: its id (None for a seed URL whose id is not known yet) and base URL."""

    node: str | None
    url: str


@dataclass(frozen=True, slots=True)
class RingInfo:
    epoch: int
    partitions: int
    n_val: int
    ring: Ring


class RoutingTable:
    def __init__(self, seeds: Sequence[str], *, rng: random.Random, mode: RouteMode = "ring",
                 refresh_interval: float = 10.0, min_refresh: float = 0.5, down_for: float = 2.0) -> None:
        if not seeds:
            raise ValueError("the client needs at least one node URL")
        if mode not in ("ring", "random", "seeds"):
            raise ValueError(f"routing must be 'ring', 'random' or 'seeds', not {mode!r}")
        self.seeds = [s.rstrip("/") for s in seeds]
        self.scheme = self.seeds[0].split("://", 1)[0] if "://" in self.seeds[0] else "http"
        self.rng = rng
        self.mode = mode
        self.refresh_interval = refresh_interval
        self.min_refresh = min_refresh
        self.down_for = down_for
        self.info: RingInfo | None = None
        self.urls: dict[str, str] = {}  # node id -> base URL, every member /status listed
        self.reported_up: set[str] = set()  # members the answering node saw up at the last refresh
        self._down_until: dict[str, float] = {}  # this client's own evidence: a request failed
        self._loaded_at = float("-inf")
        self._tried_at = float("-inf")
        self._stale = True
        self._next_seed = 0

    # --- what the ring says -----------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return self.info.epoch if self.info is not None else None

    def load(self, doc: Mapping[str, Any], now: float) -> bool:
        """Take a `/status` document. False (and nothing changed) when it has no usable ring (e.g. the node
        answering has not joined yet)."""
        try:
            ring = doc["ring"]
            owners = tuple(str(o) for o in ring["owners"])
            partitions, n_val, epoch = int(ring["partitions"]), int(ring["n_val"]), int(ring["epoch"])
            members = {str(m["id"]): (str(m["http"]), bool(m.get("liveness", {}).get("up"))) for m in doc["members"]}
        except (KeyError, TypeError, ValueError):
            return False
        if not owners or len(owners) != partitions or n_val < 1:
            return False
        if self.info is None or self.info.epoch != epoch or self.info.ring.owners != owners:
            self.info = RingInfo(epoch, partitions, n_val, Ring(owners))
        self.urls = {mid: self._url(http) for mid, (http, _) in members.items()}
        self.reported_up = {mid for mid, (_, up) in members.items() if up}
        self._loaded_at = self._tried_at = now
        self._stale = False
        return True

    def _url(self, http: str) -> str:
        host, _, port = http.rpartition(":")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"{self.scheme}://{host}:{port}"

    # --- freshness ----------------------------------------------------------------------------------------

    def needs_refresh(self, now: float) -> bool:
        if self.mode == "seeds":
            return False
        if now - self._tried_at < self.min_refresh:
            return False  # a refresh was just tried: don't storm /status while a node is down
        return self._stale or now - self._loaded_at >= self.refresh_interval

    def refreshing(self, now: float) -> None:
        """A refresh starts now (whatever comes of it, the next one waits `min_refresh`)."""
        self._tried_at = now

    def mark_stale(self) -> None:
        self._stale = True

    def status_targets(self, now: float) -> list[str]:
        """URLs to ask for `/status`: members believed up (shuffled), then the rest, then the seeds."""
        up = [u for m, u in self.urls.items() if self.is_up(m, now)]
        self.rng.shuffle(up)
        rest = [u for m, u in self.urls.items() if not self.is_up(m, now)]
        out: list[str] = []
        for u in up + rest + self.seeds:
            if u not in out:
                out.append(u)
        return out

    # --- liveness, as this client sees it -----------------------------------------------------------------

    def is_up(self, node: str, now: float) -> bool:
        return node in self.reported_up and self._down_until.get(node, 0.0) <= now

    def failed(self, node: str | None, now: float) -> None:
        """A request to `node` failed without an answer (refused, cut, timed out)."""
        if node is not None:
            self._down_until[node] = now + self.down_for
        self._stale = True

    def answered(self, node: str | None, coordinator: str | None, *, write: bool) -> None:
        """`node` answered. A coordinator the client does not know, or a write coordinated elsewhere than
        where it was sent (the node forwarded it: its ring does not make it a replica), means the ring moved."""
        if node is not None:
            self._down_until.pop(node, None)
        if coordinator is not None and (coordinator not in self.urls or (write and node is not None
                                                                         and coordinator != node)):
            self._stale = True

    # --- routing ------------------------------------------------------------------------------------------

    def targets(self, key: bytes, now: float) -> list[Target]:
        """Every node to try for `key`, best first."""
        info = self.info
        if info is None or self.mode == "seeds":
            return self._seed_targets()
        if self.mode == "random":
            nodes = list(self.urls)
            self.rng.shuffle(nodes)
            live = [n for n in nodes if self.is_up(n, now)]
            order = live + [n for n in nodes if n not in live]
        else:
            partition = locate(key, info.partitions, 1)[0]
            primaries, fallbacks = info.ring.preference_list(partition, info.n_val)
            live = [p for p in primaries if self.is_up(p, now)]
            if len(live) > 1:
                k = self.rng.randrange(len(live))
                live = live[k:] + live[:k]
            order = (live + [f for f in fallbacks if self.is_up(f, now)]
                     + [p for p in primaries if p not in live] + [f for f in fallbacks if not self.is_up(f, now)])
        return [Target(n, self.urls[n]) for n in order if n in self.urls]

    def primaries(self, key: bytes) -> list[str]:
        """The key's primary replicas by this client's ring (empty before the first refresh)."""
        if self.info is None:
            return []
        partition = locate(key, self.info.partitions, 1)[0]
        return self.info.ring.preference_list(partition, self.info.n_val)[0]

    def _seed_targets(self) -> list[Target]:
        """No ring yet: the seed URLs, round robin."""
        k = self._next_seed % len(self.seeds)
        self._next_seed += 1
        return [Target(None, u) for u in self.seeds[k:] + self.seeds[:k]]
