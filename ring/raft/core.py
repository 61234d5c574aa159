"""RaftNode: the deterministic, sans-IO Raft state machine (in the style of etcd-io/raft).

Inputs: ``tick()`` (logical time), ``step(message)``, and the proposal calls. Outputs: a ``Ready`` batch (what
to persist, send, apply), acknowledged with ``advance()``. No clock, no I/O, no global randomness: election
timeouts are drawn from the injected ``random.Random``.

Design choices (see also ring/raft/__init__.py):
- Membership changes are single-server changes, one at a time; a configuration takes effect as soon as its
  entry is in a node's log (Raft thesis 4.1), and is undone if that entry is truncated. A leader accepts a
  change only when no earlier change is uncommitted and it has committed an entry of its own term (the fix
  for the single-server change bug the thesis errata describe).
- Pre-vote (thesis 9.6) and check-quorum (thesis 6.2) are on by default; with them a node that has heard
  from a leader within the election timeout ignores (pre-)vote requests unless they come from a
  leadership transfer.
- Every message is handed out after the entries/hard state of the same Ready are persisted.
"""

from __future__ import annotations

import random

from .config import NotLeader, PersistentState, ProposalDropped, RaftConfig
from .log import RaftLog
from .messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .progress import Progress, ProgressState
from .readonly import ReadOnly
from .ready import ReadState, Ready, Role, SoftState


class RaftNode:
    def __init__(
        self,
        id: str,
        config: RaftConfig,
        rng: random.Random,
        storage: PersistentState,
        applied: int | None = None,
    ) -> None:
        """``applied``: how far the state machine already is (default: the snapshot's index)."""
        self.id = id
        self.cfg = config
        self._rng = rng
        hs = storage.hard_state
        self.log = RaftLog(storage.snapshot, storage.entries, hs.commit)
        if applied is not None:
            self.log.applied = max(self.log.snapshot.index, min(applied, self.log.committed))
        self.term = hs.term
        self.vote: str | None = hs.vote
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._read_only = ReadOnly()
        self._reads_waiting: list[bytes] = []  # ReadIndex requests before this leader committed in its term
        self._lead_transferee: str | None = None
        self._leader_start = 0  # index of the no-op this leader appended on election
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._prev_hs = hs
        self._prev_ss = SoftState(None, Role.FOLLOWER)
        self._in_ready = False
        self._reset_timers()

    # ---- read-only views ----
    @property
    def conf(self) -> ConfState:
        return self.log.conf

    @property
    def commit(self) -> int:
        return self.log.committed

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    @property
    def soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    @property
    def lead_transferee(self) -> str | None:
        return self._lead_transferee

    def progress(self, peer: str) -> Progress | None:
        """The leader's view of a peer's log (None when not leader or not a member)."""
        return self._progress.get(peer)

    def _promotable(self) -> bool:
        return self.id in self.log.conf.voters

    def _quorum(self) -> int:
        return len(self.log.conf.voters) // 2 + 1

    def _has_quorum(self, ids: set[str]) -> bool:
        voters = self.log.conf.voters
        return bool(voters) and len(ids & voters) >= self._quorum()

    # ---- time ----
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._promotable() and self._election_elapsed >= self._randomized_timeout:
                self._election_elapsed = 0
                self._hup(transfer=False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.cfg.election_ticks:
            self._election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)  # partitioned away from a majority: stop serving
                return
            self._lead_transferee = None  # a transfer that did not finish within an election timeout fails
        for peer, pr in self._progress.items():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self.cfg.snapshot_timeout_ticks:
                    pr.snapshot_timed_out()
                    self._send_append(peer)
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._read_only.last_ctx or b"")

    def _quorum_active(self) -> bool:
        active = {self.id}
        for peer, pr in self._progress.items():
            if pr.recent_active:
                active.add(peer)
            if peer != self.id:
                pr.recent_active = False
        return self._has_quorum(active)

    # ---- role changes ----
    def _reset_timers(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        et = self.cfg.election_ticks
        self._randomized_timeout = et + self._rng.randrange(et)

    def _reset(self) -> None:
        self._reset_timers()
        self._votes = {}
        self._lead_transferee = None
        self._read_only.clear()
        self._reads_waiting.clear()
        self._progress = {}

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.role = Role.FOLLOWER
        self.leader = leader
        self._reset()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader = self.id
        self._reset()
        self._sync_progress()
        noop = Entry(self.log.last_index + 1, self.term)
        self._leader_start = noop.index
        self._append_as_leader(noop)

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self.role = Role.PRE_CANDIDATE  # term and vote stay: a failed pre-vote disturbs nobody
            self.leader = None
            self._reset()
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if not pre:
            self.term += 1
            self.vote = self.id
            self.role = Role.CANDIDATE
            self.leader = None
            self._reset()
        self._votes = {self.id: True}
        if self._tally() is True:
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return
        term = self.term + 1 if pre else self.term
        for v in sorted(self.log.conf.voters):
            if v != self.id:
                self._send(
                    VoteRequest(
                        frm=self.id,
                        to=v,
                        term=term,
                        last_index=self.log.last_index,
                        last_term=self.log.last_term,
                        pre_vote=pre,
                        transfer=transfer,
                    )
                )

    def _tally(self) -> bool | None:
        """True: won, False: lost, None: undecided."""
        voters = self.log.conf.voters
        granted = sum(1 for v in voters if self._votes.get(v) is True)
        rejected = sum(1 for v in voters if self._votes.get(v) is False)
        if granted >= self._quorum():
            return True
        if len(voters) - rejected < self._quorum():
            return False
        return None

    # ---- messages in ----
    def step(self, m: Message) -> None:
        if m.term > self.term:
            if isinstance(m, VoteRequest) and not m.transfer:
                in_lease = self.leader is not None and self._election_elapsed < self.cfg.election_ticks
                if in_lease and ((m.pre_vote and self.cfg.pre_vote) or self.cfg.check_quorum):
                    return  # we have a live leader: do not let a returning node depose it
            if isinstance(m, VoteRequest) and m.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # granted pre-votes carry the term we are about to campaign in
            else:
                leader = m.frm if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) else None
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and isinstance(m, (AppendEntries, Heartbeat)):
                # A stale leader: answer with our term so it steps down. Without this, a node whose term
                # rose while partitioned could never rejoin (its higher term blocks the leader's appends).
                self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, success=False, index=0))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, granted=False, pre_vote=True))
            return

        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            if isinstance(m, AppendResponse):
                self._handle_append_response(m)
            elif isinstance(m, HeartbeatResponse):
                self._handle_heartbeat_response(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            if self.role is not Role.FOLLOWER:
                self._become_follower(self.term, m.frm)  # someone won this term
            self.leader = m.frm
            self._election_elapsed = 0
            if isinstance(m, AppendEntries):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self.log.commit_to(m.commit)
                self._send(HeartbeatResponse(frm=self.id, to=m.frm, term=self.term, ctx=m.ctx))
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow) and self.role is Role.FOLLOWER:
            self._hup(transfer=True)

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.leader is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(frm=self.id, to=m.frm, term=m.term, granted=True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term, granted=False, pre_vote=m.pre_vote))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self.role is Role.PRE_CANDIDATE:
            if not m.pre_vote or m.term != (self.term + 1 if m.granted else self.term):
                return  # an answer to an earlier round
        elif self.role is Role.CANDIDATE:
            if m.pre_vote or m.term != self.term:
                return
        else:
            return
        self._votes.setdefault(m.frm, m.granted)
        outcome = self._tally()
        if outcome is True:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
        elif outcome is False:
            self._become_follower(self.term, None)

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.log.committed:
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, success=True, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.prev_index, m.prev_term, m.entries)
        if last_new is not None:
            self.log.commit_to(min(m.commit, last_new))
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, success=True, index=last_new))
        else:
            ci, ct = self.log.conflict_hint(m.prev_index)
            self._send(
                AppendResponse(
                    frm=self.id,
                    to=m.frm,
                    term=self.term,
                    success=False,
                    index=m.prev_index,
                    conflict_index=ci,
                    conflict_term=ct,
                )
            )

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        s = m.snapshot
        if s.index <= self.log.committed:
            index = self.log.committed
        elif self.log.match_term(s.index, s.term):
            self.log.commit_to(s.index)  # we already hold that prefix: just learn it is committed
            index = s.index
        else:
            self.log.restore(s)
            index = s.index
        self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, success=True, index=index))

    # ---- leader: replication ----
    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self._progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.heartbeats_since_ack = 0
        if not m.success:
            hint = m.conflict_index
            if m.conflict_term is not None:
                # fast backup: skip the follower's whole conflicting term unless we hold entries of it too
                li = self.log.last_index_of_term(m.conflict_term, m.index)
                if li is not None:
                    hint = li + 1
            if pr.maybe_decrease(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        if pr.maybe_update(m.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
            else:
                pr.free_inflight(m.index)
            if self._maybe_commit():
                self._on_commit()
                if self.role is not Role.LEADER:
                    return
            if m.frm == self._lead_transferee and pr.match == self.log.last_index:
                self._send(TimeoutNow(frm=self.id, to=m.frm, term=self.term))
        elif pr.state is ProgressState.REPLICATE:
            pr.free_inflight(m.index)
        while self._send_append(m.frm, allow_empty=False):
            pass

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self._progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.heartbeats_since_ack += 1
        if pr.match < self.log.last_index and pr.heartbeats_since_ack > 1:
            # Appends are outstanding but a whole heartbeat round passed without an answer to any of
            # them: assume they were lost and probe again (one round of grace avoids duplicate sends).
            pr.heartbeats_since_ack = 0
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            pr.probe_sent = False
            self._send_append(m.frm)
        if m.ctx:
            self._read_states.extend(self._read_only.ack(m.frm, m.ctx, self._has_quorum))

    def _send_append(self, to: str, allow_empty: bool = True) -> bool:
        """Send ``to`` what it lacks (a snapshot if that is compacted). False when nothing was sent."""
        pr = self._progress[to]
        if pr.is_paused(self.cfg.max_inflight_msgs) or (not allow_empty and pr.next > self.log.last_index):
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        ents = self.log.entries(pr.next, min(self.log.last_index, prev + self.cfg.max_entries_per_msg))
        if prev_term is None or ents is None:
            snap = self.log.snapshot
            pr.become_snapshot(snap.index)
            self._send(InstallSnapshot(frm=self.id, to=to, term=self.term, snapshot=snap))
            return True
        self._send(
            AppendEntries(
                frm=self.id,
                to=to,
                term=self.term,
                prev_index=prev,
                prev_term=prev_term,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        pr.sent(ents[-1].index if ents else prev, len(ents))
        return True

    def _bcast_append(self) -> None:
        for peer in sorted(self._progress):
            if peer != self.id:
                while self._send_append(peer, allow_empty=False):
                    pass

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for peer in sorted(self._progress):
            if peer != self.id:
                pr = self._progress[peer]
                commit = min(pr.match, self.log.committed)
                self._send(Heartbeat(frm=self.id, to=peer, term=self.term, commit=commit, ctx=ctx))

    def _maybe_commit(self) -> bool:
        voters = self.log.conf.voters
        if not voters:
            return False
        matches = sorted((self._progress[v].match if v in self._progress else 0 for v in voters), reverse=True)
        mci = matches[self._quorum() - 1]
        # only entries of the current term are committed by counting (Raft paper 5.4.2, Figure 8)
        if mci > self.log.committed and self.log.term(mci) == self.term:
            return self.log.commit_to(mci)
        return False

    def _on_commit(self) -> None:
        if self.log.committed >= self._leader_start and self._reads_waiting:
            waiting, self._reads_waiting = self._reads_waiting, []
            for ctx in waiting:
                self._start_read(ctx)
        if self.id not in self.log.conf.voters and self.log.committed >= self.log.last_conf_index:
            self._become_follower(self.term, None)  # our removal is committed: hand over (thesis 4.2.2)

    def _sync_progress(self) -> None:
        """Make the progress table match the configuration in the log (leader only)."""
        members = self.log.conf.members
        for peer in list(self._progress):
            if peer not in members:
                del self._progress[peer]
        for peer in sorted(members):
            if peer not in self._progress:
                self._progress[peer] = Progress(match=0, next=self.log.last_index + 1, recent_active=True)
        if self.id in self._progress:
            self._progress[self.id].maybe_update(self.log.last_index)
        if self._lead_transferee is not None and self._lead_transferee not in self.log.conf.voters:
            self._lead_transferee = None

    def _append_as_leader(self, entry: Entry) -> None:
        self.log.append([entry])
        self._sync_progress()
        self._bcast_append()
        if self._maybe_commit():
            self._on_commit()

    # ---- client API ----
    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log; returns its index (it is committed when it shows up in a Ready)."""
        return self._propose(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.last_conf_index > self.log.committed:
            raise ProposalDropped("an earlier membership change is not committed yet")
        if self.log.committed < self._leader_start:
            raise ProposalDropped("the leader has not committed an entry of its term yet")
        new = self.log.conf.apply(cc)
        if new == self.log.conf:
            raise ProposalDropped(f"{cc} changes nothing")
        if not new.voters:
            raise ProposalDropped("cannot remove the last voter")
        return self._propose(EntryType.CONF_CHANGE, cc.encode())

    def _propose(self, kind: EntryType, data: bytes) -> int:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._lead_transferee is not None:
            raise ProposalDropped("leadership transfer in progress")
        entry = Entry(self.log.last_index + 1, self.term, kind, data)
        self._append_as_leader(entry)
        return entry.index

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter ``to``: bring its log up to date, then tell it to campaign (TimeoutNow).
        Proposals are refused meanwhile; the transfer is abandoned after an election timeout."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.log.conf.voters:
            raise ValueError(f"{to} is not a voter")
        self._lead_transferee = to
        self._election_elapsed = 0
        if self._progress[to].match == self.log.last_index:
            self._send(TimeoutNow(frm=self.id, to=to, term=self.term))
        else:
            self._send_append(to)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; a ReadState(index, ctx) comes out of a later Ready once a quorum
        confirmed this node was still leader. ``ctx`` must be unique. Requests are lost if leadership is."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.committed < self._leader_start:
            self._reads_waiting.append(ctx)  # our commit index is not known to be current yet
        else:
            self._start_read(ctx)

    def _start_read(self, ctx: bytes) -> None:
        if self._has_quorum({self.id}):
            self._read_states.append(ReadState(self.log.committed, ctx))
            return
        self._read_only.add(self.log.committed, ctx, self.id)
        self._bcast_heartbeat(ctx)

    def compact(self, index: int, snapshot_data: bytes) -> None:
        """The app has applied up to ``index`` and serialised its state as ``snapshot_data``: drop the log
        up to there. The snapshot comes out of the next Ready to be persisted."""
        if index <= self.log.snapshot.index:
            return
        if index > self.log.applied:
            raise ValueError(f"cannot compact to {index}: only {self.log.applied} applied")
        term = self.log.term(index)
        assert term is not None
        self.log.compact(Snapshot(index, term, self.log.conf_at(index), snapshot_data))

    # ---- Ready ----
    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def has_ready(self) -> bool:
        return bool(
            self.soft_state != self._prev_ss
            or self.hard_state != self._prev_hs
            or self.log.pending_snapshot is not None
            or self.log.stable < self.log.last_index
            or self._msgs
            or self.log.applied < self.log.committed
            or self._read_states
        )

    def ready(self) -> Ready:
        if self._in_ready:
            raise RuntimeError("advance() the previous Ready first")
        self._in_ready = True
        ss, hs = self.soft_state, self.hard_state
        rd = Ready(
            soft_state=ss if ss != self._prev_ss else None,
            hard_state=hs if hs != self._prev_hs else None,
            snapshot=self.log.pending_snapshot,
            entries=tuple(self.log.unstable_entries()),
            messages=tuple(self._msgs),
            committed_entries=tuple(self.log.next_committed()),
            read_states=tuple(self._read_states),
        )
        self._msgs = []
        self._read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        self._in_ready = False
        if rd.soft_state is not None:
            self._prev_ss = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
