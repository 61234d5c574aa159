"""Cost of a Merkle anti-entropy exchange versus data size and number of differing keys.

Two replicas of one partition (1024 segments, fanout 32) share a base data set; replica B then diverges in
``diffs`` keys (a third updated, a third deleted, a third new). The exchange runs through the real message
encoding (msgpack), in memory. Reported: rounds, bytes each way, bytes per differing key, walk time
(the whole exchange, both sides' CPU, no network), and the time to build one tree by incremental updates.

    .venv/bin/python bench/antientropy_cost.py            # the full table (1M keys: ~1 min, ~1 GB RAM)
    .venv/bin/python bench/antientropy_cost.py --quick    # 10k / 100k keys only
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Mapping

from antientropy.exchange import ExchangeResult, run_exchange
from antientropy.merkle import MerkleTree

SEGMENTS = 1024
FANOUT = 32


class Base:
    """Replica A: a tree and its storage indexed by segment, as the node would keep them."""

    def __init__(self, n_keys: int) -> None:
        self.n_keys = n_keys
        self.tree = MerkleTree(SEGMENTS, FANOUT)
        self.segments: dict[int, dict[bytes, bytes]] = {}
        t0 = time.perf_counter()
        for i in range(n_keys):
            key = b"user:%d" % i
            seg = self.tree.segment_for(key)
            digest = b"%016d" % i
            self.tree.update(key, None, digest, segment=seg)
            self.segments.setdefault(seg, {})[key] = digest
        self.tree.rehash()
        self.build_seconds = time.perf_counter() - t0

    def segment_items(self, seg: int) -> Mapping[bytes, bytes]:
        return self.segments.get(seg, {})


class Diverged:
    """Replica B: the base plus an overlay of changed keys (copy-on-write per segment, to save memory)."""

    def __init__(self, base: Base, diffs: int, seed: int) -> None:
        self.base = base
        self.tree = base.tree.copy()
        self.overlay: dict[int, dict[bytes, bytes]] = {}
        self.changed: set[bytes] = set()
        rng = random.Random(seed)
        for j, i in enumerate(rng.sample(range(base.n_keys), diffs)):
            kind = j % 3
            key = (b"new:%d" if kind == 2 else b"user:%d") % i
            new = None if kind == 1 else b"%016d" % (i + 1 if kind == 0 else i)
            self._put(key, new)
            self.changed.add(key)

    def _put(self, key: bytes, digest: bytes | None) -> None:
        seg = self.tree.segment_for(key)
        items = self.overlay.get(seg)
        if items is None:
            items = self.overlay[seg] = dict(self.base.segment_items(seg))
        self.tree.update(key, items.get(key), digest, segment=seg)
        if digest is None:
            items.pop(key, None)
        else:
            items[key] = digest

    def segment_items(self, seg: int) -> Mapping[bytes, bytes]:
        got = self.overlay.get(seg)
        return got if got is not None else self.base.segment_items(seg)


def run(base: Base, diffs: int) -> tuple[ExchangeResult, float]:
    b = Diverged(base, diffs, seed=diffs)
    b.tree.rehash()
    base.tree.rehash()
    t0 = time.perf_counter()
    result = run_exchange(base.tree, base.segment_items, b.tree, b.segment_items)
    elapsed = time.perf_counter() - t0
    if result.differing_keys != b.changed:
        raise AssertionError(f"exchange found {len(result.differing_keys)} keys, expected {len(b.changed)}")
    return result, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1M-key cases")
    args = parser.parse_args()
    cases = [(10_000, [0, 10, 1_000]), (100_000, [0, 10, 1_000])]
    if not args.quick:
        cases.append((1_000_000, [0, 10, 10_000]))
    header = (
        f"{'keys':>9} {'diffs':>6} {'rounds':>6} {'sent B':>9} {'recv B':>10} {'total B':>10} "
        f"{'B/diff':>7} {'segs':>5} {'walk ms':>9} {'build s':>8}"
    )
    print(f"segments={SEGMENTS} fanout={FANOUT}")
    print(header)
    print("-" * len(header))
    for n_keys, diff_counts in cases:
        base = Base(n_keys)
        for diffs in diff_counts:
            r, secs = run(base, diffs)
            total = r.bytes_sent + r.bytes_received
            per = f"{total / diffs:7.0f}" if diffs else f"{'-':>7}"
            print(
                f"{n_keys:>9,} {diffs:>6,} {r.rounds:>6} {r.bytes_sent:>9,} {r.bytes_received:>10,} "
                f"{total:>10,} {per} {r.segments_differing:>5} {secs * 1e3:>9.1f} {base.build_seconds:>8.2f}",
                flush=True,
            )
        del base


if __name__ == "__main__":
    main()
