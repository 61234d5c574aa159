"""The replicated membership state machine: members, statuses, partition ownership and the ring epoch.

Every node applies the same Raft log through ``apply(state, command)`` and gets the same state: the
function is pure and deterministic, and never raises on a command (an unsafe or stale command returns an
error ``Result`` and leaves the state unchanged, because a committed entry cannot be taken back).

Changes are staged the way Riak operators know (``StageJoin``/``StageLeave``/``StageRemove``/
``StageReplace``, then ``plan(state)`` to see the new ring and exactly which partitions move, then
``Commit``). A commit does not move ownership: it records the transfers and marks nodes joining or
leaving. Ownership of a partition moves only when its ``TransferDone`` is applied, so a new owner serves
reads for a partition only after its stream finished and the hand-over is in the log. A leaving node
with nothing left to hand over becomes removed; a joining node that received everything becomes active.

Ownership of ring slot p affects more than the keys hashed to p: the owner of p is also a primary for
the keys of the partitions just before it (see ``covered_key_partitions``), and when p moves to a node that
already owns a slot nearby, the preference lists of those key partitions collapse and pull in a node further
along the ring. ``preference_changes`` diffs the preference lists before and after one transfer: every node
that joins a key partition's primaries gains it (a *pending owner* until the transfer is done), every node
that drops out of them loses it. ``pending_write_targets`` tells the coordinator which pending owners must
receive writes for a key partition while a move is pending; a ``TransferDone`` names the (key partition,
node) pairs whose streams finished, and is refused unless they cover every gaining node of the ring it is
applied to (a ring changed by another transfer since may pull in another node).

The state also carries the cluster's client API tokens (``ring.tokens``: ``AddToken``/``RevokeToken``, hashes
only), so every node authenticates clients against the same set, changed in log order like everything else.

Commands are frozen dataclasses with a versioned msgpack encoding (``encode_command``/``decode_command``);
``encode_state``/``decode_state`` serialise the whole state for Raft snapshots.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Union

import msgpack

from ring.placement import Ring, claim, initial_ring
# the token commands are membership commands (AddToken, RevokeToken and ApiToken are importable from here too)
from ring.tokens import AddToken, ApiToken, RevokeToken, apply_token, command_in, command_out, founding_tokens
from ring.tokens import token_in, token_out

FORMAT_VERSION = 1


class Status(str, enum.Enum):
    JOINING = "joining"
    ACTIVE = "active"
    LEAVING = "leaving"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: str
    http_host: str
    http_port: int
    rpc_host: str
    rpc_port: int
    status: Status = Status.ACTIVE


@dataclass(frozen=True, slots=True)
class Transfer:
    """Ring slot ``partition`` changes owner to ``target``; ``source`` streams the data (the old owner, or a
    surviving replica when the old owner is being removed as dead)."""

    partition: int
    source: str
    target: str


# ---- commands ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """The founding membership: all members active, round-robin ring. Only valid on an empty state."""

    members: tuple[MemberInfo, ...]
    num_partitions: int
    n_val: int
    voters: tuple[str, ...] = ()  # the Raft voters; empty: the first min(3, len) member ids
    tokens: tuple[ApiToken, ...] = ()  # API tokens the cluster starts with (the bootstrap admin token)


@dataclass(frozen=True, slots=True)
class StageJoin:
    member: MemberInfo


@dataclass(frozen=True, slots=True)
class StageLeave:
    """A live member hands its partitions over, then is removed."""

    id: str


@dataclass(frozen=True, slots=True)
class StageRemove:
    """A dead member: its partitions are rebuilt on the new owners from the surviving replicas."""

    id: str


@dataclass(frozen=True, slots=True)
class StageReplace:
    """``member`` takes over exactly ``old``'s partitions; ``dead``: stream from the other replicas."""

    old: str
    member: MemberInfo
    dead: bool = False


@dataclass(frozen=True, slots=True)
class ClearStaged:
    pass


@dataclass(frozen=True, slots=True)
class Commit:
    """Make the staged plan current; ``expected_epoch`` is the epoch the operator saw the plan at."""

    expected_epoch: int


@dataclass(frozen=True, slots=True)
class TransferDone:
    """The stream of a transfer finished; ``epoch`` is the ``plan_epoch`` of the commit that created it."""

    partition: int
    source: str
    target: str
    epoch: int
    # (key partition, node) pairs that hold their gained partitions; None: an entry written before nodes
    # checked that (applied unchecked, so old logs replay to the same state)
    ready: tuple[tuple[int, str], ...] | None = None


Change = Union[StageJoin, StageLeave, StageRemove, StageReplace]
Command = Union[
    Bootstrap, StageJoin, StageLeave, StageRemove, StageReplace, ClearStaged, Commit, TransferDone, AddToken, RevokeToken
]


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    epoch: int  # the epoch after applying
    reason: str = ""


# ---- state -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipState:
    epoch: int = 0
    members: Mapping[str, MemberInfo] = field(default_factory=dict)
    ring: Ring | None = None
    n_val: int = 3
    transfers: tuple[Transfer, ...] = ()
    staged: tuple[Change, ...] = ()
    voters: tuple[str, ...] = ()  # the Raft voter set the node should converge the group to
    down: frozenset[str] = frozenset()  # members being removed as dead: never a transfer source
    plan_epoch: int = 0  # epoch created by the last commit (TransferDone must name it)
    tokens: Mapping[str, ApiToken] = field(default_factory=dict)  # API tokens by id (revoked ones included)
    # key partition -> extra write targets during pending moves (derived, computed once per state)
    _extra: Mapping[int, tuple[str, ...]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        extra: dict[int, set[str]] = {}
        if self.ring is not None:
            for t in self.transfers:
                for k, node in preference_changes(self.ring, self.n_val, t)[0]:
                    extra.setdefault(k, set()).add(node)
        object.__setattr__(self, "_extra", {k: tuple(sorted(v)) for k, v in extra.items()})

    @property
    def initialized(self) -> bool:
        return self.ring is not None

    def member_ids(self, *statuses: Status) -> list[str]:
        return sorted(i for i, m in self.members.items() if not statuses or m.status in statuses)

    def live_members(self) -> list[str]:
        """Members that are part of the cluster now (not removed)."""
        return sorted(i for i, m in self.members.items() if m.status is not Status.REMOVED)


@dataclass(frozen=True)
class Plan:
    """What committing the staged changes would do. ``errors`` non-empty: the commit would be refused."""

    changes: tuple[Change, ...]
    ring: Ring | None
    transfers: tuple[Transfer, ...]
    members: Mapping[str, MemberInfo]
    voters: tuple[str, ...]
    down: frozenset[str]
    errors: tuple[str, ...]

    def moves(self) -> dict[str, dict[str, list[int]]]:
        """source -> target -> partitions, for display."""
        out: dict[str, dict[str, list[int]]] = {}
        for t in self.transfers:
            out.setdefault(t.source, {}).setdefault(t.target, []).append(t.partition)
        return out


# ---- ring geometry -----------------------------------------------------------------------------------------


def covered_key_partitions(ring: Ring, n_val: int, slot: int) -> tuple[int, ...]:
    """Key partitions whose N primaries include whoever owns ring slot ``slot``.

    Walking back from ``slot``, a key partition k reaches ``slot`` before it has collected N distinct
    owners exactly when the owners of slots k..slot-1 number fewer than N; then a new owner of ``slot``
    becomes one of k's primaries (unless it is one already).
    """
    q = ring.num_partitions
    out = [slot]
    seen: set[str] = set()
    for back in range(1, q):
        k = (slot - back) % q
        seen.add(ring.owners[k])
        if len(seen) >= n_val:
            break
        out.append(k)
    return tuple(out)


def _primaries_with(ring: Ring, n_val: int, k: int, slot: int, owner: str) -> list[str]:
    """Key partition k's primaries on ``ring`` with slot ``slot`` owned by ``owner`` instead."""
    q = ring.num_partitions
    out: list[str] = []
    for i in range(q):
        p = (k + i) % q
        node = owner if p == slot else ring.owners[p]
        if node not in out:
            out.append(node)
            if len(out) == n_val:
                break
    return out


Pair = tuple[int, str]  # (key partition, node)


def preference_changes(ring: Ring, n_val: int, t: Transfer) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """(gained, lost): the (key partition, node) pairs that enter and leave key partitions' primaries when
    slot ``t.partition`` moves to ``t.target`` on ``ring``. Only key partitions whose primaries reach the
    slot can change (``covered_key_partitions``: which those are depends on the slots before it only)."""
    gained: list[Pair] = []
    lost: list[Pair] = []
    for k in sorted(covered_key_partitions(ring, n_val, t.partition)):
        before = ring.walk(k)[:n_val]
        after = _primaries_with(ring, n_val, k, t.partition, t.target)
        gained.extend((k, node) for node in after if node not in before)
        lost.extend((k, node) for node in before if node not in after)
    return tuple(gained), tuple(lost)


def gained_key_partitions(ring: Ring, n_val: int, t: Transfer) -> list[int]:
    """Key partitions that gain ``t.target`` as a primary when slot ``t.partition`` moves to it (other nodes
    may gain some too: ``preference_changes``)."""
    return [k for k, node in preference_changes(ring, n_val, t)[0] if node == t.target]


def required_ready(state: MembershipState, t: Transfer) -> tuple[Pair, ...]:
    """The (key partition, node) pairs that must hold their data before ``t`` is done on the current ring:
    every gaining node except one being removed as dead (it never serves again)."""
    assert state.ring is not None
    return tuple(pr for pr in preference_changes(state.ring, state.n_val, t)[0] if pr[1] not in state.down)


def pending_write_targets(state: MembershipState, key_partition: int) -> tuple[str, ...]:
    """Nodes that must receive writes for ``key_partition`` besides its primaries, because a pending
    transfer will make them primaries: writes during a move reach both the old and every new owner."""
    return state._extra.get(key_partition, ())


def pending_owner_of(state: MembershipState, node: str) -> set[int]:
    """Key partitions ``node`` is a pending owner of (it streams them, then becomes a primary)."""
    return {k for k, nodes in state._extra.items() if node in nodes}


def _pick_source(ring: Ring, n_val: int, slot: int, target: str, dead: Iterable[str]) -> str | None:
    """Deterministic stream source for a slot: its owner if alive, else the first surviving replica."""
    dead = set(dead)
    owner = ring.owners[slot]
    if owner not in dead:
        return owner
    for node in ring.walk(slot)[1:n_val]:
        if node not in dead and node != target:
            return node
    return None


# ---- planning ----------------------------------------------------------------------------------------------


def _change_id(c: Change) -> str:
    return c.member.id if isinstance(c, StageJoin) else c.old if isinstance(c, StageReplace) else c.id


def _check_stage(state: MembershipState, change: Change) -> str | None:
    """Why ``change`` cannot be staged on top of what is staged, or None."""
    if not state.initialized:
        return "the cluster is not bootstrapped"
    staged_ids = {_change_id(c) for c in state.staged}
    staged_ids |= {c.member.id for c in state.staged if isinstance(c, StageReplace)}

    def known(i: str) -> str | None:
        m = state.members.get(i)
        if m is None:
            return f"unknown member {i!r}"
        if m.status is Status.REMOVED:
            return f"member {i!r} is already removed"
        if m.status is Status.LEAVING:
            return f"member {i!r} is already leaving"
        return None

    def fresh(m: MemberInfo) -> str | None:
        old = state.members.get(m.id)
        if old is not None and old.status is not Status.REMOVED:
            return f"member {m.id!r} already exists ({old.status.value})"
        return None

    if isinstance(change, StageJoin):
        err = fresh(change.member)
    elif isinstance(change, StageReplace):
        err = known(change.old) or fresh(change.member)
        if err is None and change.member.id in staged_ids:
            err = f"a change for {change.member.id!r} is already staged"
    else:
        err = known(change.id)
    if err is None and _change_id(change) in staged_ids:
        err = f"a change for {_change_id(change)!r} is already staged"
    if err is None:
        errs = _compute_plan(replace(state, staged=state.staged + (change,)), for_commit=False).errors
        err = "; ".join(errs) if errs else None
    return err


def plan(state: MembershipState) -> Plan:
    """The ring and transfers committing the staged changes would produce (errors say why it can't)."""
    return _compute_plan(state, for_commit=True)


def _compute_plan(state: MembershipState, *, for_commit: bool) -> Plan:
    errors: list[str] = []
    members = dict(state.members)
    empty = Plan(state.staged, None, (), members, state.voters, state.down, ())
    if state.ring is None:
        return replace(empty, errors=("the cluster is not bootstrapped",))
    if for_commit and not state.staged:
        errors.append("nothing is staged")
    if for_commit and state.transfers:
        errors.append(f"{len(state.transfers)} partition transfers of the last change are still pending")
    going: set[str] = set()
    down = set(state.down)
    subst: dict[str, str] = {}
    for c in state.staged:
        if isinstance(c, StageJoin):
            members[c.member.id] = replace(c.member, status=Status.JOINING)
        elif isinstance(c, StageReplace):
            members[c.old] = replace(members[c.old], status=Status.LEAVING)
            members[c.member.id] = replace(c.member, status=Status.JOINING)
            going.add(c.old)
            subst[c.old] = c.member.id
            if c.dead:
                down.add(c.old)
        else:
            members[c.id] = replace(members[c.id], status=Status.LEAVING)
            going.add(c.id)
            if isinstance(c, StageRemove):
                down.add(c.id)
    staying = sorted(i for i, m in members.items() if m.status in (Status.ACTIVE, Status.JOINING))
    if len(staying) < state.n_val:
        errors.append(f"only {len(staying)} members would remain, fewer than N={state.n_val}")
    if len(staying) > state.ring.num_partitions:
        errors.append(f"{len(staying)} members cannot share {state.ring.num_partitions} partitions")
    voters_going = [v for v in state.voters if v in going]
    quorum = len(state.voters) // 2 + 1
    if voters_going and len(state.voters) - len(voters_going) < quorum:
        errors.append(
            f"{len(voters_going)} of the {len(state.voters)} Raft voters ({', '.join(voters_going)}) would go: "
            "a majority of voters must stay; change them one at a time"
        )
    if errors or not staying:
        return replace(empty, changes=state.staged, members=members, errors=tuple(errors))

    ring = state.ring
    new_ring = claim(Ring(tuple(subst.get(o, o) for o in ring.owners)), staying, spacing=max(0, state.n_val - 1))
    transfers: list[Transfer] = []
    for p, (old, new) in enumerate(zip(ring.owners, new_ring.owners)):
        if old == new:
            continue
        src = _pick_source(ring, state.n_val, p, new, down)
        if src is None:
            errors.append(f"partition {p} has no surviving replica to rebuild it from")
            continue
        transfers.append(Transfer(p, src, new))

    # Voters: keep those that stay, top up from staying members (active ones first) to the same count.
    voters = [v for v in state.voters if v not in going]
    for cand in sorted(staying, key=lambda i: (members[i].status is not Status.ACTIVE, i)):
        if len(voters) >= len(state.voters):
            break
        if cand not in voters:
            voters.append(cand)
    return Plan(state.staged, new_ring, tuple(transfers), members, tuple(sorted(voters)), frozenset(down), tuple(errors))


def validate_commit(state: MembershipState, reachable: set[str]) -> list[str]:
    """Reasons not to propose a commit now (empty: go ahead). The node passes the members it can reach;
    every node that must take part (joining, leaving gracefully, streaming) has to be reachable."""
    p = plan(state)
    errors = list(p.errors)
    if errors:
        return errors
    needed = {t.source for t in p.transfers} | {t.target for t in p.transfers}
    for c in state.staged:
        if isinstance(c, StageJoin):
            needed.add(c.member.id)
        elif isinstance(c, StageReplace):
            needed.add(c.member.id)
            if not c.dead:
                needed.add(c.old)
        elif isinstance(c, StageLeave):
            needed.add(c.id)
    needed -= set(p.down)
    for node in sorted(needed - reachable):
        errors.append(f"{node} is not reachable")
    return errors


# ---- apply -------------------------------------------------------------------------------------------------


def _settle(state: MembershipState) -> MembershipState:
    """Finish statuses: joiners with nothing left to receive are active, leavers with nothing left to
    own or stream are removed."""
    assert state.ring is not None
    targets = {t.target for t in state.transfers}
    involved = targets | {t.source for t in state.transfers}
    owners = set(state.ring.owners)
    members = dict(state.members)
    down = set(state.down)
    for i, m in state.members.items():
        if m.status is Status.JOINING and i not in targets:
            members[i] = replace(m, status=Status.ACTIVE)
        elif m.status is Status.LEAVING and i not in owners and i not in involved:
            members[i] = replace(m, status=Status.REMOVED)
            down.discard(i)
    return replace(state, members=members, down=frozenset(down))


NOT_READY = "gaining nodes have not streamed their partitions yet"


def _refuse(state: MembershipState, reason: str) -> tuple[MembershipState, Result]:
    return state, Result(False, state.epoch, reason)


def apply(state: MembershipState, cmd: Command) -> tuple[MembershipState, Result]:
    """Apply one committed command. Pure and deterministic; refusals leave the state unchanged."""
    if isinstance(cmd, Bootstrap):
        return _bootstrap(state, cmd)
    if isinstance(cmd, (AddToken, RevokeToken)):  # no ring needed: a token made at start-up is not refused
        tokens = apply_token(state.tokens, cmd)
        if isinstance(tokens, str):
            return _refuse(state, tokens)
        new = replace(state, tokens=tokens)  # not a new epoch: tokens are not placement
        return new, Result(True, new.epoch)
    if not state.initialized:
        return _refuse(state, "the cluster is not bootstrapped")
    if isinstance(cmd, (StageJoin, StageLeave, StageRemove, StageReplace)):
        err = _check_stage(state, cmd)
        if err is not None:
            return _refuse(state, err)
        new = replace(state, staged=state.staged + (cmd,))
        return new, Result(True, new.epoch)
    if isinstance(cmd, ClearStaged):
        new = replace(state, staged=())
        return new, Result(True, new.epoch)
    if isinstance(cmd, Commit):
        if cmd.expected_epoch != state.epoch:
            return _refuse(state, f"stale plan: it was made at epoch {cmd.expected_epoch}, the ring is at {state.epoch}")
        p = plan(state)
        if p.errors:
            return _refuse(state, "; ".join(p.errors))
        epoch = state.epoch + 1
        new = replace(
            state,
            epoch=epoch,
            members=p.members,
            transfers=p.transfers,
            staged=(),
            voters=p.voters,
            down=p.down,
            plan_epoch=epoch,
        )
        new = _settle(new)
        return new, Result(True, new.epoch)
    if isinstance(cmd, TransferDone):
        t = Transfer(cmd.partition, cmd.source, cmd.target)
        if cmd.epoch != state.plan_epoch:
            return _refuse(state, f"transfer done for plan epoch {cmd.epoch}, the current plan is {state.plan_epoch}")
        if t not in state.transfers:
            return _refuse(state, f"no pending transfer of partition {t.partition} from {t.source} to {t.target}")
        assert state.ring is not None
        if cmd.ready is not None:
            missing = sorted(set(required_ready(state, t)) - set(cmd.ready))
            if missing:
                who = ", ".join(f"{node} (key partition {k})" for k, node in missing)
                return _refuse(state, f"{NOT_READY}: transfer of partition {t.partition} also makes {who} a primary")
        owners = list(state.ring.owners)
        owners[t.partition] = t.target
        new = replace(
            state,
            epoch=state.epoch + 1,
            ring=Ring(tuple(owners)),
            transfers=tuple(x for x in state.transfers if x != t),
        )
        new = _settle(new)
        return new, Result(True, new.epoch)
    return _refuse(state, f"unknown command {type(cmd).__name__}")


def _bootstrap(state: MembershipState, cmd: Bootstrap) -> tuple[MembershipState, Result]:
    if state.initialized:
        return _refuse(state, "the cluster is already bootstrapped")
    ids = [m.id for m in cmd.members]
    if not ids or len(set(ids)) != len(ids):
        return _refuse(state, "bootstrap needs at least one member and unique ids")
    if cmd.n_val < 1 or len(ids) < cmd.n_val:
        return _refuse(state, f"{len(ids)} members cannot hold N={cmd.n_val} replicas")
    if cmd.num_partitions < len(ids) or cmd.num_partitions > 0xFFFF:
        return _refuse(state, f"{cmd.num_partitions} partitions cannot be spread over {len(ids)} members")
    voters = tuple(sorted(cmd.voters)) if cmd.voters else tuple(sorted(ids)[: min(3, len(ids))])
    if not set(voters) <= set(ids):
        return _refuse(state, "voters must be members")
    members = {m.id: replace(m, status=Status.ACTIVE) for m in cmd.members}
    tokens = founding_tokens(state.tokens, cmd.tokens)
    if isinstance(tokens, str):
        return _refuse(state, tokens)
    new = MembershipState(
        epoch=1,
        members=members,
        ring=initial_ring(ids, cmd.num_partitions),
        n_val=cmd.n_val,
        voters=voters,
        tokens=tokens,
    )
    return new, Result(True, 1)


# ---- encoding ----------------------------------------------------------------------------------------------


class CommandError(ValueError):
    """Bytes that are not a command (or state) this version understands."""


def _member_out(m: MemberInfo) -> list[Any]:
    return [m.id, m.http_host, m.http_port, m.rpc_host, m.rpc_port, m.status.value]


def _member_in(v: Any) -> MemberInfo:
    i, hh, hp, rh, rp, st = v
    for s in (i, hh, rh):
        if not isinstance(s, str):
            raise CommandError("member fields have the wrong types")
    if not isinstance(hp, int) or not isinstance(rp, int):
        raise CommandError("member ports must be integers")
    return MemberInfo(i, hh, hp, rh, rp, Status(st))


def _cmd_out(c: Command) -> list[Any]:
    if isinstance(c, Bootstrap):
        out = ["bootstrap", [_member_out(m) for m in c.members], c.num_partitions, c.n_val, list(c.voters)]
        if c.tokens:  # only then: a cluster without tokens keeps the encoding older nodes read
            out.append([token_out(t) for t in c.tokens])
        return out
    if isinstance(c, (AddToken, RevokeToken)):
        return command_out(c)
    if isinstance(c, StageJoin):
        return ["join", _member_out(c.member)]
    if isinstance(c, StageLeave):
        return ["leave", c.id]
    if isinstance(c, StageRemove):
        return ["remove", c.id]
    if isinstance(c, StageReplace):
        return ["replace", c.old, _member_out(c.member), c.dead]
    if isinstance(c, ClearStaged):
        return ["clear"]
    if isinstance(c, Commit):
        return ["commit", c.expected_epoch]
    out = ["transfer_done", c.partition, c.source, c.target, c.epoch]
    if c.ready is not None:  # only then: an unchecked entry keeps the encoding older nodes read
        out.append([[k, node] for k, node in c.ready])
    return out


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise CommandError(f"expected an integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise CommandError(f"expected a string, got {v!r}")
    return v


def _cmd_in(v: list[Any]) -> Command:
    kind, args = v[0], v[1:]
    if kind == "bootstrap":
        ms, q, n, voters, *more = args
        tokens = tuple(token_in(t) for t in more[0]) if more else ()
        return Bootstrap(tuple(_member_in(m) for m in ms), _int(q), _int(n), tuple(_str(x) for x in voters), tokens)
    token_cmd = command_in(kind, args)
    if token_cmd is not None:
        return token_cmd
    if kind == "join":
        return StageJoin(_member_in(args[0]))
    if kind == "leave":
        return StageLeave(_str(args[0]))
    if kind == "remove":
        return StageRemove(_str(args[0]))
    if kind == "replace":
        return StageReplace(_str(args[0]), _member_in(args[1]), bool(args[2]))
    if kind == "clear":
        return ClearStaged()
    if kind == "commit":
        return Commit(_int(args[0]))
    if kind == "transfer_done":
        ready = tuple((_int(k), _str(node)) for k, node in args[4]) if len(args) > 4 else None
        return TransferDone(_int(args[0]), _str(args[1]), _str(args[2]), _int(args[3]), ready)
    raise CommandError(f"unknown command kind {kind!r}")


def encode_command(c: Command) -> bytes:
    return bytes(msgpack.packb([FORMAT_VERSION, *_cmd_out(c)]))


def _unpack(data: bytes, what: str) -> list[Any]:
    try:
        v = msgpack.unpackb(data)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise CommandError(f"undecodable {what}: {e}") from e
    if not isinstance(v, list) or len(v) < 2:
        raise CommandError(f"not a {what}")
    if v[0] != FORMAT_VERSION:
        raise CommandError(f"{what} format version {v[0]!r} is not {FORMAT_VERSION}")
    return v[1:]


def decode_command(data: bytes) -> Command:
    v = _unpack(data, "membership command")
    try:
        return _cmd_in(v)
    except CommandError:
        raise
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise CommandError(f"malformed membership command: {e}") from e


def apply_bytes(state: MembershipState, data: bytes) -> tuple[MembershipState, Result]:
    """``apply`` for a log entry: undecodable data is refused with a reason, never raised."""
    try:
        cmd = decode_command(data)
    except CommandError as e:
        return _refuse(state, str(e))
    return apply(state, cmd)


def encode_state(s: MembershipState) -> bytes:
    ring = list(s.ring.owners) if s.ring is not None else None
    return bytes(
        msgpack.packb(
            [
                FORMAT_VERSION,
                s.epoch,
                [_member_out(s.members[i]) for i in sorted(s.members)],
                ring,
                s.n_val,
                [[t.partition, t.source, t.target] for t in s.transfers],
                [_cmd_out(c) for c in s.staged],
                list(s.voters),
                sorted(s.down),
                s.plan_epoch,
            ]
            # only when there are tokens: a cluster without them keeps the encoding older nodes read
            + ([[token_out(s.tokens[i]) for i in sorted(s.tokens)]] if s.tokens else [])
        )
    )


def decode_state(data: bytes) -> MembershipState:
    v = _unpack(data, "membership state")
    try:
        epoch, members, ring, n_val, transfers, staged, voters, down, plan_epoch, *more = v
        if len(more) > 1:
            raise CommandError("membership state has unknown trailing fields")
        changes = tuple(_cmd_in(c) for c in staged)
        if not all(isinstance(c, (StageJoin, StageLeave, StageRemove, StageReplace)) for c in changes):
            raise CommandError("staged entries must be changes")
        return MembershipState(
            epoch=_int(epoch),
            members={m.id: m for m in (_member_in(x) for x in members)},
            ring=Ring(tuple(_str(o) for o in ring)) if ring is not None else None,
            n_val=_int(n_val),
            transfers=tuple(Transfer(_int(p), _str(a), _str(b)) for p, a, b in transfers),
            staged=changes,  # type: ignore[arg-type]  # checked just above
            voters=tuple(_str(x) for x in voters),
            down=frozenset(_str(x) for x in down),
            plan_epoch=_int(plan_epoch),
            tokens={t.id: t for t in (token_in(x) for x in more[0])} if more else {},
        )
    except CommandError:
        raise
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise CommandError(f"malformed membership state: {e}") from e
