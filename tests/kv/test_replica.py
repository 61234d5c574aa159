"""The local replica against a real store: dots stay unique across a node's several copies of one key."""

from __future__ import annotations

import shutil
from pathlib import Path

from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.storage.store import Storage


async def open_replica(path: Path) -> LocalReplica:
    storage = await Storage.open(path)
    return await LocalReplica.open("n2", storage, partitions=64, segments=16, max_siblings=64, warn_siblings=16)


async def test_a_dot_seen_in_another_copy_is_never_minted_again(tmp_path: Path) -> None:
    """The bug the kill -9 fault test found: n2 minted (A, 1) in its hint for n4; that version reached its
    hint for n5 by replication; writes in both hint copies then both minted (A, 2) and one was lost."""
    r = await open_replica(tmp_path / "s")
    ref = r.ref(b"k")
    first = await r.coordinate(ref, {}, b"w1", "t", durable=False, hint_for="n4")
    await r.merge(ref, first, durable=False, hint_for="n5")  # replication brings (A, 1) into a second copy
    second = await r.coordinate(ref, {}, b"w2", "t", durable=False, hint_for="n4")
    third = await r.coordinate(ref, {}, b"w3", "t", durable=False, hint_for="n5")
    dots = [s.dot for state in (first, second, third) for s in state.siblings if s.value in (b"w1", b"w2", b"w3")]
    w_dots = {s.value: s.dot for state in (first, second, third) for s in state.siblings}
    assert len({w_dots[b"w1"], w_dots[b"w2"], w_dots[b"w3"]}) == 3, dots
    everything = v.sync_all([await r.get(ref, "n4"), await r.get(ref, "n5")])
    assert everything is not None and sorted(s.value for s in everything.live) == [b"w1", b"w2", b"w3"]
    await r.storage.close()


async def test_a_copy_continues_its_own_actor_and_a_recreated_copy_starts_a_new_one(tmp_path: Path) -> None:
    r = await open_replica(tmp_path / "s")
    ref = r.ref(b"k")
    a = await r.coordinate(ref, {}, b"a", "t", durable=False)
    b = await r.coordinate(ref, {}, b"b", "t", durable=False)
    actor = a.local_actor
    assert actor is not None and b.local_actor == actor
    assert {s.dot for s in b.siblings} == {(actor, 1), (actor, 2)}  # one actor, consecutive counters
    stale = a  # a replica elsewhere still has only (actor, 1)
    await r.storage.delete("data", ref.skey)  # the copy goes away (reaped, handed off)...
    await r.merge(ref, stale, durable=False)  # ...and comes back from the stale replica
    c = await r.coordinate(ref, {}, b"c", "t", durable=False)
    c_dot = next(s.dot for s in c.siblings if s.value == b"c")
    assert c_dot[0] != actor and c_dot not in {s.dot for s in b.siblings}
    # merging never imports another copy's actor bookkeeping, and it never reaches the wire's meaning
    assert v.same_version(v.decode(v.encode(c)), c) and v.decode(v.encode(c)).local_actor == c.local_actor
    await r.storage.close()


async def test_epochs_are_never_reused_across_restarts(tmp_path: Path) -> None:
    r = await open_replica(tmp_path / "s")
    first = (await r.coordinate(r.ref(b"x"), {}, b"1", "t", durable=False)).local_actor
    await r.storage.close()
    r = await open_replica(tmp_path / "s")
    second = (await r.coordinate(r.ref(b"y"), {}, b"2", "t", durable=False)).local_actor
    assert first != second
    await r.storage.close()


async def test_a_copy_stored_as_received_is_the_one_a_full_merge_stores(tmp_path: Path) -> None:
    """kv.put hands the replica the coordinator's bytes: when they supersede the stored copy they are stored
    as received; a merge that has to be built (a concurrent write elsewhere) still is, and either way the
    stored bytes are those the full merge writes."""
    coord = await open_replica(tmp_path / "c")
    fast = await open_replica(tmp_path / "f")  # given the wire bytes
    full = await open_replica(tmp_path / "s")  # not given them: always the full merge
    ref = coord.ref(b"k")
    elsewhere = v.update(None, {}, "n9.1", b"other", "t", 5)  # a concurrent write another coordinator took
    changes = []
    for i, ctx in enumerate([{}, {}, None, {}]):
        if ctx is None:  # the concurrent write reaches the replicas first
            for r in (fast, full):
                await r.merge(ref, elsewhere, durable=False)
            continue
        state = await coord.coordinate(ref, ctx, b"w%d" % i, "t", durable=False)
        wire = v.encode(state, local=False)
        changes.append(await fast.merge(ref, v.decode(wire), durable=False, wire=wire))
        await full.merge(ref, v.decode(wire), durable=False)
        assert await fast.storage.get("data", ref.skey) == await full.storage.get("data", ref.skey)
    # the same write again changes nothing; bytes a peer sends in another order are merged, not stored
    state = await coord.get(ref)
    assert state is not None
    wire = v.encode(state, local=False)
    assert await fast.merge(ref, v.decode(wire), durable=False, wire=wire) is False
    assert changes == [True, True, True]
    final = v.sync(await full.get(ref), elsewhere)
    assert [s.value for s in final.siblings] == [s.value for s in (await fast.get(ref) or v.EMPTY).siblings]
    for r in (coord, fast, full):
        await r.storage.close()


async def test_a_copy_holding_the_replaced_state_takes_the_write_as_received(tmp_path: Path) -> None:
    """A coordinator sends the digest of the state its write replaced. A replica holding that state stores the
    write as it comes, keeping its own actor bookkeeping; one holding another state (it missed a write, or took
    a concurrent one) merges. Either way it stores the version the full merge stores."""
    coord = await open_replica(tmp_path / "c")
    told = await open_replica(tmp_path / "t")  # given the replaced digest
    full = await open_replica(tmp_path / "s")  # never given it: always the full merge
    ref = coord.ref(b"k")
    own = await told.coordinate(ref, {}, b"own", "t", durable=False)  # told has minted an actor of its own...
    await coord.merge(ref, own, durable=False)  # ...and its write has reached the other copies
    await full.merge(ref, own, durable=False)
    elsewhere = v.update(None, {}, "n9.1", b"other", "t", 5)  # a concurrent write another coordinator took
    for i, step in enumerate(["write", "write", "concurrent", "write", "missed", "write", "write"]):
        if step == "concurrent":
            for r in (told, full):
                await r.merge(ref, elsewhere, durable=False)
            continue
        sent: list[tuple[bytes, bytes | None]] = []
        await coord.coordinate_then(ref, {}, b"w%d" % i, "t", durable=False,
                                    committed=lambda _state, wire, replaced: sent.append((wire, replaced)))
        ((wire, replaced),) = sent
        if step == "missed":  # the replicas never see this write, so the next one replaced a state they lack
            continue
        assert await told.merge(ref, v.decode(wire), durable=False, wire=wire, replaces=replaced) is True
        await full.merge(ref, v.decode(wire), durable=False)
        told_raw, full_raw = await told.storage.get("data", ref.skey), await full.storage.get("data", ref.skey)
        assert told_raw is not None and full_raw is not None
        assert v.causal(told_raw) == v.causal(full_raw)
        assert v.split_local(told_raw)[1] == own.local_actor
    stored = await told.get(ref)
    assert stored is not None
    assert sorted(s.value for s in stored.siblings) == sorted(
        [b"own", b"other"] + [b"w%d" % i for i in (0, 1, 3, 4, 5, 6)])
    for r in (coord, told, full):
        await r.storage.close()


async def test_siblings_formed_here_are_counted_once_by_how_they_formed(tmp_path: Path) -> None:
    r = await open_replica(tmp_path / "s")
    ref = r.ref(b"k")
    a = await r.coordinate(ref, {}, b"a", "t", durable=False)
    assert (r.siblings_written, r.siblings_merged) == (0, 0)  # one value
    await r.coordinate(ref, dict(a.clock), b"a2", "t", durable=False)
    assert (r.siblings_written, r.siblings_merged) == (0, 0)  # its context covers a: replaced
    await r.coordinate(ref, {}, b"b", "t", durable=False)
    assert (r.siblings_written, r.siblings_merged) == (1, 0)  # no context: a sibling of a2
    other = v.update(None, {}, "n9.1", b"c", "t", 5)  # another coordinator's concurrent write
    assert await r.merge(ref, other, durable=False)
    assert (r.siblings_written, r.siblings_merged) == (1, 1)
    assert not await r.merge(ref, other, durable=False)  # the same copy again changes nothing
    state = await r.get(ref)
    assert state is not None
    fresh = r.ref(b"fresh")  # a copy arriving with siblings it already had is not counted where it lands
    assert await r.merge(fresh, state, durable=False)
    assert (r.siblings_written, r.siblings_merged) == (1, 1)
    await r.storage.close()


async def test_hint_records_of_one_key_by_target(tmp_path: Path) -> None:
    r = await open_replica(tmp_path / "s")
    ref = r.ref(b"k")
    await r.coordinate(ref, {}, b"for n4", "t", durable=False, hint_for="n4")
    await r.coordinate(r.ref(b"other"), {}, b"x", "t", durable=False, hint_for="n5")
    got = await r.hint_records(ref, ["n3", "n4", "n5"])
    assert [t for t, _ in got] == ["n4"] and v.decode(got[0][1]).live[0].value == b"for n4"
    await r.storage.close()


async def test_a_store_created_empty_never_reuses_an_earlier_lifes_actor(tmp_path: Path) -> None:
    """A node id whose data directory was lost (or a joiner reusing a removed member's id) starts empty: its
    first dot must not be one the earlier life minted."""
    old = await open_replica(tmp_path / "lost")
    a = (await old.coordinate(old.ref(b"x"), {}, b"old", "t", durable=False)).siblings[0].dot
    await old.storage.close()
    new = await open_replica(tmp_path / "replacement")
    b = (await new.coordinate(new.ref(b"x"), {}, b"new", "t", durable=False)).siblings[0].dot
    assert a != b
    assert len(v.sync(v.update(None, {}, a[0], b"old", "t", 1), v.update(None, {}, b[0], b"new", "t", 2)).live) == 2
    await new.storage.close()


async def test_a_store_rolled_back_by_a_power_loss_never_reuses_an_actor(tmp_path: Path) -> None:
    """What a life recorded at open can be lost with its store's last transactions: the life after the
    rollback must not mint what the lost life minted."""
    r = await open_replica(tmp_path / "s")
    await r.storage.close()  # not a clean stop (no replica.close): a crash
    shutil.copytree(tmp_path / "s", tmp_path / "snapshot")
    r = await open_replica(tmp_path / "s")
    lost = (await r.coordinate(r.ref(b"x"), {}, b"1", "t", durable=False)).local_actor
    await r.storage.close()
    shutil.rmtree(tmp_path / "s")
    shutil.copytree(tmp_path / "snapshot", tmp_path / "s")  # the power loss rolls the store back
    r = await open_replica(tmp_path / "s")
    after = (await r.coordinate(r.ref(b"x"), {}, b"2", "t", durable=False)).local_actor
    assert lost != after
    await r.storage.close()


async def test_every_life_starts_a_fresh_incarnation_even_after_a_clean_stop(tmp_path: Path) -> None:
    """A data directory restored from a copy taken after a clean stop is a rollback no record can reveal:
    no life continues another's epochs."""
    actors = []
    for i in range(3):
        r = await open_replica(tmp_path / "s")
        actors.append((await r.coordinate(r.ref(b"k%d" % i), {}, b"v", "t", durable=False)).local_actor)
        await r.storage.close()
    epochs = sorted(int(str(a).split(".")[1], 16) for a in actors)
    assert len(set(actors)) == 3 and all(b - a > 1 for a, b in zip(epochs, epochs[1:]))
