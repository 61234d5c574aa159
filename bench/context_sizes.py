"""What actor incarnations and dot clouds cost in bytes (issue 15, docs/causality.md).

    .venv/bin/python -m bench.context_sizes [--value-bytes 100]

Pure computation over the versioning core and the context codec, no cluster: the stored record of a key
(one value, then two concurrent values), the bytes each dot adds, and the X-Context token of a read and of
a write's answer, for the actor names of each scheme:
  before: `n1.<epoch>` with the epoch counter from 1 (a store's first life) or, after a restart, from
          the next reserved block of 10^9 (`n1.3b9aca01`);
  after:  every start of a node takes a random 64-bit first epoch (`n1.` + up to 16 hex digits; 15.9 on
          average).
A write's answer is a plain vector when the writer's context was current (the careful writer's case) and
holds one cloud dot otherwise (e.g. a blind write to a key that has values already).
"""

from __future__ import annotations

import argparse
import random

from dynamostore.kv import versioning as v
from dynamostore.kv.context import ContextCodec

SCHEMES = {
    "before, first life": "n1.1",
    "before, restarted": "n1.3b9aca01",
    "after (random start)": "n1." + format(random.Random(7).getrandbits(64) | 1 << 63, "x"),
}


def sizes(actor: str, value: bytes, codec: ContextCodec) -> dict[str, int]:
    other = actor.replace("n1.", "n2.")
    one = v.update(None, {}, actor, value, "application/octet-stream", 1_700_000_000_000)
    two = v.update(one, {}, other, value, "application/octet-stream", 1_700_000_000_001)  # concurrent
    record_one = len(v.encode(v.VersionSet(one.clock, one.siblings, actor)))
    record_two = len(v.encode(v.VersionSet(two.clock, two.siblings, actor)))
    read_token = codec.encode(b"key", two.clock)  # a read of the two siblings
    # a careful writer's answer: its read context plus its dot, a plain vector
    careful = v.update(two, two.clock, actor, value, "t", 2)
    careful_token = codec.encode(b"key", *v.written_context(two.clock, (), (actor, careful.clock[actor])))
    # a blind write through n2 to a key n2 wrote before: the answer holds one cloud dot
    blind = v.update(two, {}, other, value, "t", 3)
    blind_token = codec.encode(b"key", *v.written_context({}, (), (other, blind.clock[other])))
    return {
        "actor bytes": len(actor),
        "record, 1 value": record_one,
        "record, 2 values": record_two,
        "bytes per dot (clock entry + sibling's dot)": len(v.packb([actor, 1])) + len(v.packb(actor)) + len(v.packb(1)),
        "X-Context of a read (2 actors)": len(read_token),
        "X-Context of a careful write's 204": len(careful_token),
        "X-Context of a blind write's 204 (1 cloud dot)": len(blind_token),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--value-bytes", type=int, default=100)
    args = ap.parse_args()
    codec = ContextCodec(b"bench-secret")
    value = b"x" * args.value_bytes
    rows = {name: sizes(actor, value, codec) for name, actor in SCHEMES.items()}
    metrics = list(next(iter(rows.values())))
    width = max(len(m) for m in metrics)
    names = list(rows)
    print(f"value {args.value_bytes} bytes; sizes in bytes")
    print(" " * width + "".join(f" | {n:>20}" for n in names))
    for m in metrics:
        print(f"{m:<{width}}" + "".join(f" | {rows[n][m]:>20}" for n in names))


if __name__ == "__main__":
    main()
