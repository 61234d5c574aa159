"""Why a key has the siblings it has: every stored copy of one key, decoded and compared (pure).

`GET /debug/kv/{key}` (api/debug.py) asks each node that may hold the key for its stored records over the
RPC method `kv.inspect`: the data record, the hint records it keeps for down primaries, and its Merkle leaf
hash of the key's segment. `inspect` turns those answers into one JSON document: each copy's version set
(clock, siblings with their dots, coordinators, timestamps, tombstones), what it lacks compared with the
causal merge of all copies, whether the primaries agree, and a plain-language explanation of the siblings.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from dynamostore.kv import versioning as v

PREVIEW_BYTES = 64


@dataclass(frozen=True)
class NodeRecords:
    """What one node holds for a key (its answer to `kv.inspect`)."""

    data: bytes | None  # the stored data record, None when the node has none
    hints: list[tuple[str, bytes]] = field(default_factory=list)  # (the primary it is held for, record)
    leaf: str | None = None  # hex Merkle leaf hash of the key's segment; None: no built tree here

    def to_wire(self) -> list[Any]:
        return [self.data, [[t, raw] for t, raw in self.hints], self.leaf]

    @classmethod
    def from_wire(cls, doc: Any) -> NodeRecords:
        """Checked decoding of a peer's answer (raises ValueError or TypeError on anything else)."""
        data, hints, leaf = doc
        if data is not None and not isinstance(data, bytes):
            raise TypeError("the data record is not bytes")
        if leaf is not None and not isinstance(leaf, str):
            raise TypeError("the leaf hash is not a string")
        return cls(data, [(str(t), bytes(raw)) for t, raw in hints], leaf)


def coordinator_of(actor: str) -> str:
    """The node that minted a dot: actors are `<node id>.<epoch in hex>` (kv/replica.py)."""
    return actor.rsplit(".", 1)[0] if "." in actor else actor


def _preview(value: bytes) -> dict[str, Any]:
    head = value[:PREVIEW_BYTES]
    try:
        text = head.decode("utf-8")
        if text.isprintable():
            return {"preview": text, "preview_encoding": "utf-8", "truncated": len(value) > PREVIEW_BYTES}
    except UnicodeDecodeError:
        pass
    return {"preview": base64.b64encode(head).decode(), "preview_encoding": "base64",
            "truncated": len(value) > PREVIEW_BYTES}


def sibling_doc(s: v.Sibling) -> dict[str, Any]:
    actor, counter = s.dot
    doc: dict[str, Any] = {
        "dot": [actor, counter],
        "actor": actor,
        "coordinator": coordinator_of(actor),
        "timestamp_ms": s.timestamp_ms,
        "tombstone": s.value is None,
        "content_type": s.content_type,
        "size": 0 if s.value is None else len(s.value),
    }
    if s.value is not None:
        doc.update(_preview(s.value))
    return doc


def describe(state: v.VersionSet) -> dict[str, Any]:
    """One stored version set as JSON: clock, siblings (dot, coordinator, time, tombstone, type, size)."""
    digest = v.digest(state)
    return {
        "clock": dict(sorted(state.clock.items())),
        "siblings": [sibling_doc(s) for s in state.siblings],
        "live": len(state.live),
        "tombstones": len(state.siblings) - len(state.live),
        "local_actor": state.local_actor,
        "digest": digest.hex() if digest is not None else None,
    }


def _dot(d: v.Dot) -> str:
    return f"{d[0]}:{d[1]}"


@dataclass
class _Copy:
    node: str
    kind: str  # "data" or "hint"
    target: str | None
    state: v.VersionSet | None
    error: str | None = None


def inspect(key: bytes, partition: int, segment: int, primaries: list[str], fallbacks: list[str],
            up: set[str], answers: dict[str, NodeRecords | str]) -> dict[str, Any]:
    """The inspector's document. `answers` maps each node asked to its records, or to why it could not
    answer (unreachable, timed out)."""
    copies: list[_Copy] = []
    unreadable: list[str] = []
    leaves: dict[str, str | None] = {}
    for node in sorted(answers, key=lambda n: _order(n, primaries, fallbacks)):
        got = answers[node]
        if isinstance(got, str):
            copies.append(_Copy(node, "data", None, None, got))
            continue
        leaves[node] = got.leaf
        records: list[tuple[str, str | None, bytes | None]] = [("data", None, got.data)]
        records += [("hint", target, raw) for target, raw in got.hints]
        for kind, target, raw in records:
            try:
                state = v.decode(raw) if raw is not None else None
            except v.VersionError as exc:
                unreadable.append(f"{node} ({kind}): {exc}")
                copies.append(_Copy(node, kind, target, None, f"undecodable record: {exc}"))
                continue
            if kind == "data" or state is not None:
                copies.append(_Copy(node, kind, target, state))
    merged = v.sync_all(c.state for c in copies)
    merged_dots = {s.dot for s in merged.siblings} if merged is not None else set()
    docs = []
    for c in copies:
        doc: dict[str, Any] = {
            "node": c.node, "kind": c.kind, "target": c.target, "role": _role(c.node, primaries, fallbacks),
            "up": c.node in up, "error": c.error,
            "record": describe(c.state) if c.state is not None else None,
        }
        if c.error is None and merged is not None:
            held = {s.dot for s in c.state.siblings} if c.state is not None else set()
            doc["missing"] = [_dot(d) for d in sorted(merged_dots - held)]
            doc["superseded"] = [_dot(d) for d in sorted(held - merged_dots)]
            doc["current"] = c.state is not None and v.same_version(c.state, merged)
        if c.kind == "data":
            doc["leaf"] = leaves.get(c.node)
        docs.append(doc)
    primary_copies = [c for c in copies if c.kind == "data" and c.node in primaries]
    answered = [c for c in primary_copies if c.error is None]
    digests = {v.digest(c.state) for c in answered}
    agree = len(answered) == len(primaries) and len(digests) == 1
    return {
        "key": key.decode("utf-8", "replace"),
        "partition": partition,
        "segment": segment,
        "preference_list": {"primaries": primaries, "fallbacks": fallbacks},
        "copies": docs,
        "merged": describe(merged) if merged is not None else None,
        "primaries_agree": agree,
        "explanation": _explain(merged, copies, primaries, agree, leaves, unreadable),
    }


def _order(node: str, primaries: list[str], fallbacks: list[str]) -> tuple[int, str]:
    if node in primaries:
        return primaries.index(node), node
    if node in fallbacks:
        return len(primaries) + fallbacks.index(node), node
    return len(primaries) + len(fallbacks), node


def _role(node: str, primaries: list[str], fallbacks: list[str]) -> str:
    if node in primaries:
        return f"primary {primaries.index(node) + 1}"
    if node in fallbacks:
        return f"fallback {fallbacks.index(node) + 1}"
    return "other"


def _explain(merged: v.VersionSet | None, copies: list[_Copy], primaries: list[str], agree: bool,
             leaves: dict[str, str | None], unreadable: list[str]) -> list[str]:
    out: list[str] = []
    failed = sorted({c.node for c in copies if c.error is not None and not c.error.startswith("undecodable")})
    if failed:
        out.append(f"Could not ask {', '.join(failed)}: their copies are not shown.")
    out += [f"Undecodable record on {u}." for u in unreadable]
    if merged is None:
        out.append("No node holds this key (never written, or deleted and its tombstones reaped).")
        return out
    live = merged.live
    stones = [s for s in merged.siblings if s.value is None]
    if not live:
        out.append(f"The key is deleted: {len(stones)} tombstone(s) remain, which keep the delete's causality "
                   "until the reaper removes them once every replica holds them.")
    elif len(live) == 1:
        out.append(f"One value (dot {_dot(live[0].dot)}, written through {coordinator_of(live[0].dot[0])}): "
                   "no siblings.")
    else:
        coords = sorted({coordinator_of(s.dot[0]) for s in live})
        dots = ", ".join(f"{_dot(s.dot)} via {coordinator_of(s.dot[0])}" for s in live)
        out.append(f"{len(live)} siblings ({dots}): no write's context covers the others' dots, so none supersedes "
                   "the others and the dotted version vectors keep them all.")
        if len(coords) == 1:
            out.append(f"All were written through {coords[0]}: clients wrote without an X-Context, or with the same "
                       "stale one (a write only replaces the siblings its context has seen).")
        else:
            out.append(f"They were written through different coordinators ({', '.join(coords)}) without seeing "
                       "each other's writes (concurrent clients, or writes during a failure), and replication "
                       "merged them.")
        out.append("Read the key and write back with the X-Context of that read to replace them with one value.")
    if live and stones:
        out.append(f"{len(stones)} tombstone(s) survive beside the values: a delete concurrent with a write.")
    merged_dots = {s.dot for s in merged.siblings}
    for c in copies:
        if c.error is not None or c.kind != "data" or c.node not in primaries:
            continue
        held = {s.dot for s in c.state.siblings} if c.state is not None else set()
        lacking = sorted(merged_dots - held)
        if lacking:
            hinted = sorted({h.node for h in copies if h.kind == "hint" and h.target == c.node})
            why = (f"; {', '.join(hinted)} hold(s) a hint for it, handed off when it is reachable" if hinted else
                   "; read repair or anti-entropy will bring it")
            out.append(f"Primary {c.node} lacks {', '.join(_dot(d) for d in lacking)}{why}.")
    for c in copies:
        if c.kind == "hint" and c.error is None:
            out.append(f"{c.node} holds a hinted copy for {c.target} (written while {c.target} was down or slow).")
    if agree:
        out.append("All primaries hold the same version.")
    held_leaves = {leaves.get(n) for n in primaries if leaves.get(n) is not None}
    if len(held_leaves) > 1:
        out.append("The primaries' Merkle leaves for this key's segment differ: anti-entropy will compare and repair "
                   "them (other keys of the segment may differ too).")
    return out
