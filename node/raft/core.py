"""The Raft state machine: no I/O, no clocks, no threads; randomness from the injected RNG.

Everything is a message: ``tick()`` produces local HUP / BEAT / CHECK_QUORUM messages and
``step()`` handles them like any other. Outgoing messages are appended to ``self.msgs`` and
handed to the application through ``RawNode.ready()``.

The role is a swapped step function (``_step_follower``, ``_step_candidate``,
``_step_leader``) plus a swapped tick function; ``step()`` has the one term preamble
shared by every role (Raft §5.1: a higher term turns us into a follower, a lower term is
answered or ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from node.raft.config import Config
from node.raft.errors import (
    Compacted,
    ConfigError,
    InvalidMessage,
    ProposalDropped,
    RaftError,
    SnapshotTemporarilyUnavailable,
    Unavailable,
)
from node.raft.log import RaftLog
from node.raft.quorum import VoteResult
from node.raft.storage import Storage
from node.raft.tracker import Progress, ProgressState, ProgressTracker
from node.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SoftState,
    StateRole,
)

MT = MessageType

CAMPAIGN_TRANSFER = b"CampaignTransfer"
"""Context of vote requests caused by leadership transfer (they bypass the lease check)."""

MAX_TERM_JUMP = 1 << 32
"""The most a message's term may exceed ours (more: RaftError, the message is dropped). Raft
trusts its members (crash faults, not Byzantine ones): a member that sent term 2**64 - 1 was
followed by every node, and the next election's term could not be encoded -- no leader ever
again, whoever is removed. Honest terms grow by one per election (2**32 of them: one a second
for 136 years), so no honest message is refused; a subverted member now needs 2**32 accepted
messages to get there, time for its operators to see the term climb and remove it."""


class CampaignType(IntEnum):
    """Why an election starts."""

    PRE_ELECTION = 0
    ELECTION = 1
    TRANSFER = 2


def _vote_resp_type(t: MessageType) -> MessageType:
    return MT.VOTE_RESP if t == MT.VOTE else MT.PRE_VOTE_RESP


StepFn = Callable[["Raft", Message], None]
TickFn = Callable[["Raft"], None]


class Raft:
    """One Raft peer's protocol state (driven through ``node.raft.node.RawNode``)."""

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.id
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.max_msg_size = config.max_size_per_msg
        self.max_uncommitted_size = config.max_uncommitted_size
        committed_limit = config.max_committed_size_per_ready
        self.log = RaftLog(
            storage, committed_limit if committed_limit is not None else config.max_size_per_msg
        )
        self.tracker = ProgressTracker(config.max_inflight)
        hs, cs = storage.initial_state()
        self.tracker.restore(cs, self.log.last_index() + 1)

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = StateRole.FOLLOWER
        self.is_learner = self.id in self.tracker.learners
        self.msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        # blank storage not yet confirmed new by the application: no votes, no campaigns
        self.state_unconfirmed = config.state_unconfirmed
        # (follower, index it had acknowledged, its reject hint): followers found to have lost
        # acknowledged entries, for the application to take (RawNode.take_lost_followers)
        self.lost_followers: list[tuple[int, int, int]] = []
        # leader: follower -> the commit index it was told with MsgStateLost, while its match
        # is below it; told again with every heartbeat (a message the transport dropped is
        # never retransmitted, and the follower would vote with its short log)
        self.lost_told: dict[int, int] = {}
        # told by a leader that we lost acknowledged entries (MsgStateLost): no votes and no
        # campaigns while our commit index is below this (its commit index then); durable,
        # in the hard state (HardState.lost_until), and recovered from it at start
        self.lost_until = 0
        self._step: StepFn = Raft._step_follower
        self._tick: TickFn = Raft._tick_election

        if hs != HardState():
            self._load_state(hs)
        # The snapshot, and anything the application already applied, is committed even if
        # the (lazily written) commit index in the hard state lags behind.
        try:
            snap_index = storage.snapshot().meta.index
        except SnapshotTemporarilyUnavailable:
            snap_index = 0
        floor = max(snap_index, config.applied)
        if floor > self.log.last_index():
            raise ConfigError(
                f"applied/snapshot index {floor} beyond last log index {self.log.last_index()}"
            )
        self.log.commit_to(floor)
        # The application restores its state from the snapshot at least, so entries up to
        # the snapshot are never handed out again even when compaction kept some of them.
        if floor > 0:
            self.log.applied_to(floor)
        self.become_follower(self.term, NONE)

    # -- state accessors -----------------------------------------------------------------
    def hard_state(self) -> HardState:
        """Current (term, vote, commit, lost-state ban: 0 once lifted)."""
        return HardState(self.term, self.vote, self.log.committed, self.lost_ban())

    def lost_ban(self) -> int:
        """The commit index this node must reach before it votes or campaigns again, having
        been told it lost acknowledged entries (MsgStateLost); 0 when there is no such ban or
        our commit index reached it (the ban is lifted, and cleared in storage with it)."""
        return self.lost_until if self.log.committed < self.lost_until else 0

    def soft_state(self) -> SoftState:
        """Current (leader, role)."""
        return SoftState(self.lead, self.state)

    def conf_state(self) -> ConfState:
        """Current membership."""
        return self.tracker.conf_state()

    def _load_state(self, hs: HardState) -> None:
        # A commit index below the snapshot is harmless (a lazily written commit-only hard
        # state was lost; the snapshot itself proves commitment) -- keep the snapshot's.
        # A commit index beyond the log means committed entries were lost: refuse to start.
        if hs.commit > self.log.last_index():
            raise RaftError(
                "hard_state_out_of_range",
                f"commit {hs.commit} beyond last index {self.log.last_index()}",
            )
        self.log.committed = max(hs.commit, self.log.committed)
        self.term = hs.term
        self.vote = hs.vote
        # a ban recorded before a restart still holds: the node lost acknowledged entries and
        # has not caught up since (absent from storage written by earlier releases: no ban)
        self.lost_until = hs.lost_until

    def promotable(self) -> bool:
        """May this node become leader (a voter without a pending snapshot whose state is
        not unconfirmed)?"""
        pr = self.tracker.progress.get(self.id)
        return (
            not self.withholds_votes()
            and pr is not None
            and not pr.is_learner
            and self.id in self.tracker.voters
            and self.log.unstable.snapshot is None
        )

    def withholds_votes(self) -> bool:
        """No vote, no pre-vote, no campaign: blank storage the application has not confirmed
        new, or a leader told us we lost acknowledged entries and we have not caught up since."""
        return self.state_unconfirmed or self.lost_ban() > 0

    # -- sending -------------------------------------------------------------------------
    def _send(
        self,
        mtype: MessageType,
        to: int,
        *,
        term: int | None = None,
        log_term: int = 0,
        index: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        snapshot: Snapshot | None = None,
        context: bytes = b"",
    ) -> None:
        if mtype in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            assert term is not None and term > 0, f"{mtype.name} needs an explicit term"
        else:
            assert term is None
            term = self.term
        self.msgs.append(
            Message(
                type=mtype,
                to=to,
                frm=self.id,
                term=term,
                log_term=log_term,
                index=index,
                entries=entries,
                commit=commit,
                reject=reject,
                reject_hint=reject_hint,
                snapshot=snapshot,
                context=context,
            )
        )

    def send_append(self, to: int) -> None:
        """Send an append (possibly empty, used as a probe) or a snapshot to ``to``."""
        self.maybe_send_append(to, send_if_empty=True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send what ``to`` is missing unless it is paused; True when a message was sent."""
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            log_term = self.log.term(prev)
            ents = self.log.entries(pr.next, self.max_msg_size)
        except (Compacted, Unavailable):
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(
            MT.APP,
            to,
            index=prev,
            log_term=log_term,
            entries=tuple(ents),
            commit=self.log.committed,
        )
        pr.sent_entries(len(ents), ents[-1].index if ents else prev)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a peer that seems down
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        assert not snap.is_empty, "log compacted but storage has no snapshot"
        self._send(MT.SNAP, to, snapshot=snap)
        pr.become_snapshot(snap.meta.index)
        return True

    def bcast_append(self) -> None:
        """Send appends to every peer that is not paused."""
        for nid in self.tracker.ids():
            if nid != self.id:
                self.send_append(nid)

    def bcast_heartbeat(self) -> None:
        """Heartbeat every peer (commit capped at what the peer is known to hold)."""
        for nid in self.tracker.ids():
            if nid == self.id:
                continue
            pr = self.tracker.progress[nid]
            self._send(MT.HEARTBEAT, nid, commit=min(pr.match, self.log.committed))
            told = self.lost_told.get(nid)
            if told is not None:
                if pr.match >= told:
                    del self.lost_told[nid]  # its log holds what it was told about
                else:
                    self._send(MT.STATE_LOST, nid, commit=told)

    # -- role transitions ----------------------------------------------------------------
    def reset_randomized_election_timeout(self) -> None:
        """Draw a new timeout in [election_timeout, 2*election_timeout) from the RNG."""
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.lead_transferee = NONE
        self.lost_told = {}
        self.tracker.reset_votes()
        last = self.log.last_index()
        for nid in self.tracker.ids():
            old = self.tracker.progress[nid]
            pr = Progress(last + 1, self.tracker.max_inflight, old.is_learner)
            if nid == self.id:
                pr.match = last
            self.tracker.progress[nid] = pr
        self.pending_conf_index = 0
        self.uncommitted_size = 0

    def become_follower(self, term: int, lead: int) -> None:
        """Follow ``lead`` (or nobody) in ``term``."""
        self._step = Raft._step_follower
        self._reset(term)
        self._tick = Raft._tick_election
        self.lead = lead
        self.state = StateRole.FOLLOWER

    def become_pre_candidate(self) -> None:
        """Start a pre-election: neither the term nor the vote changes."""
        assert self.state != StateRole.LEADER, "leader cannot become pre-candidate"
        self._step = Raft._step_candidate
        self.tracker.reset_votes()
        self._tick = Raft._tick_election
        self.lead = NONE
        self.state = StateRole.PRE_CANDIDATE

    def become_candidate(self) -> None:
        """Start an election in the next term, voting for ourselves."""
        assert self.state != StateRole.LEADER, "leader cannot become candidate"
        self._step = Raft._step_candidate
        self._reset(self.term + 1)
        self._tick = Raft._tick_election
        self.vote = self.id
        self.state = StateRole.CANDIDATE

    def become_leader(self) -> None:
        """Won the election: replicate, and append an empty entry of our term."""
        assert self.state != StateRole.FOLLOWER, "follower cannot become leader directly"
        self._step = Raft._step_leader
        self._reset(self.term)
        self._tick = Raft._tick_heartbeat
        self.lead = self.id
        self.state = StateRole.LEADER
        pr = self.tracker.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conf changes in the uncommitted tail may be pending; no new one until all applied.
        self.pending_conf_index = self.log.last_index()
        self.append_entry([Entry(0, 0, EntryType.NORMAL, b"")])

    # -- elections -----------------------------------------------------------------------
    def _has_unapplied_conf_changes(self) -> bool:
        if self.log.applied >= self.log.committed:
            return False
        lo = max(self.log.applied + 1, self.log.first_index())
        if lo > self.log.committed:
            return False
        ents = self.log.slice(lo, self.log.committed + 1)
        return any(e.type == EntryType.CONF_CHANGE for e in ents)

    def hup(self, ctype: CampaignType) -> None:
        """Start an election unless leader, not promotable, or a conf change awaits apply."""
        if self.state == StateRole.LEADER:
            return
        if not self.promotable():
            return
        if self._has_unapplied_conf_changes():
            return
        self.campaign(ctype)

    def campaign(self, ctype: CampaignType) -> None:
        """Become (pre-)candidate and request votes from every voter."""
        if not self.promotable():
            return
        if ctype == CampaignType.PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.PRE_VOTE
            term = self.term + 1
        else:
            self.become_candidate()
            vote_msg = MT.VOTE
            term = self.term
        _, _, res = self.poll(self.id, True)
        if res == VoteResult.WON:
            # Single-voter configuration: we won immediately.
            if ctype == CampaignType.PRE_ELECTION:
                self.campaign(CampaignType.ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if ctype == CampaignType.TRANSFER else b""
        last = self.log.last_index()
        last_term = self.log.last_term()
        for nid in sorted(self.tracker.voters):
            if nid == self.id:
                continue
            self._send(vote_msg, nid, term=term, index=last, log_term=last_term, context=ctx)

    def poll(self, nid: int, granted: bool) -> tuple[int, int, VoteResult]:
        """Record a vote and tally."""
        self.tracker.record_vote(nid, granted)
        return self.tracker.tally_votes()

    # -- the single entry point ------------------------------------------------------------
    def step(self, m: Message) -> None:
        """Handle one message (local or from a peer)."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term + MAX_TERM_JUMP:
            raise RaftError(f"message from {m.frm} of term {m.term}, more than {MAX_TERM_JUMP} past "
                            f"ours ({self.term}): dropped")
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # We heard from a live leader within the minimum election timeout:
                    # do not let a (possibly partitioned) node disrupt it.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change term on a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # the term is bumped when the pre-election succeeds
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. after a partition) learns the new term and steps down.
                self._send(MT.APP_RESP, m.frm)
            elif m.type == MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, m.frm, term=self.term, reject=True)
            return

        if m.type == MT.HUP:
            self.hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (m.type == MT.PRE_VOTE and m.term > self.term)
            )
            if self.withholds_votes():
                # Blank storage not confirmed new, or told it lost acknowledged entries: this
                # node may have acknowledged entries it no longer holds, and its short log
                # finds too many candidates up to date. (A pre-vote at term 0 goes unanswered:
                # a refusal carries our term, and one of the candidate's next term would make
                # it a follower of that term.)
                if self.term > 0:
                    self._send(_vote_resp_type(m.type), m.frm, term=self.term, reject=True)
            elif can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self._send(_vote_resp_type(m.type), m.frm, term=m.term)
                if m.type == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self._send(_vote_resp_type(m.type), m.frm, term=self.term, reject=True)
        else:
            self._step(self, m)

    # -- proposals -----------------------------------------------------------------------
    def _increase_uncommitted_size(self, ents: list[Entry]) -> bool:
        s = sum(len(e.data) for e in ents)
        if (
            self.max_uncommitted_size > 0
            and self.uncommitted_size > 0
            and s > 0
            and self.uncommitted_size + s > self.max_uncommitted_size
        ):
            return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, ents: tuple[Entry, ...] | list[Entry]) -> None:
        """Committed entries leave the uncommitted budget."""
        if self.uncommitted_size == 0:
            return
        s = sum(len(e.data) for e in ents)
        self.uncommitted_size = max(0, self.uncommitted_size - s)

    def append_entry(self, ents: list[Entry]) -> None:
        """Leader: assign term/index, append to our log and try to commit."""
        li = self.log.last_index()
        ents = [Entry(self.term, li + 1 + i, e.type, e.data) for i, e in enumerate(ents)]
        if not self._increase_uncommitted_size(ents):
            raise ProposalDropped("too many uncommitted bytes")
        li = self.log.append(ents)
        pr = self.tracker.progress.get(self.id)
        if pr is not None:
            pr.maybe_update(li)
        self.maybe_commit()

    def maybe_commit(self) -> bool:
        """Advance commit to the quorum match index if it is an entry of our term."""
        return self.log.maybe_commit(self.tracker.committed(), self.term)

    def _check_conf_change_proposal(self, cc: ConfChange) -> None:
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped(
                f"conf change pending at {self.pending_conf_index}, applied {self.log.applied}"
            )
        voters = self.tracker.voters
        members = self.tracker.progress
        if cc.type == ConfChangeType.ADD_NODE and cc.node_id in voters:
            raise ProposalDropped(f"node {cc.node_id} is already a voter")
        if cc.type == ConfChangeType.ADD_LEARNER_NODE and cc.node_id in members:
            raise ProposalDropped(f"node {cc.node_id} is already a member")
        if cc.type == ConfChangeType.REMOVE_NODE:
            if cc.node_id not in members:
                raise ProposalDropped(f"node {cc.node_id} is not a member")
            if voters == {cc.node_id}:
                raise ProposalDropped("cannot remove the last voter")

    def _propose(self, m: Message) -> None:
        if not m.entries:
            raise InvalidMessage("empty proposal")
        if self.id not in self.tracker.progress:
            raise ProposalDropped("this node was removed from the configuration")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        conf_at = 0
        for i, e in enumerate(m.entries):
            if e.type == EntryType.CONF_CHANGE:
                if conf_at:
                    raise ProposalDropped("one conf change per proposal")
                self._check_conf_change_proposal(ConfChange.decode(e.data))
                conf_at = self.log.last_index() + i + 1
        self.append_entry(list(m.entries))
        if conf_at:
            self.pending_conf_index = conf_at
        self.bcast_append()

    # -- leader ----------------------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            if not self.tracker.quorum_active():
                self.become_follower(self.term, NONE)
            for nid, other in self.tracker.progress.items():
                if nid != self.id:
                    other.recent_active = False
            return
        if t == MT.PROP:
            self._propose(m)
            return

        if t == MT.TRANSFER_LEADER:
            self._transfer_leadership(m.index)
            return

        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return  # message from a node outside the configuration
        if t == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                if (
                    pr.state == ProgressState.PROBE
                    and m.index == pr.next - 1
                    and m.reject_hint < pr.match
                ):
                    # The follower rejects the current probe (not an earlier one, which a
                    # reordered message would be: see maybe_decr_to) at or beyond the index it
                    # acknowledged, its log ending or diverging below it: it lost acknowledged
                    # entries (a voter whose storage was emptied). etcd-raft takes this for a
                    # stale rejection and probes the same index for ever; we tell the
                    # application and forget its match, so it is replicated to again.
                    self.lost_followers.append((m.frm, pr.match, m.reject_hint))
                    pr.match = 0
                    self.lost_told[m.frm] = self.log.committed
                    self._send(MT.STATE_LOST, m.frm, commit=self.log.committed)
                next_probe = m.reject_hint
                if m.log_term > 0:
                    next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, next_probe):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self.send_append(m.frm)
                return
            if m.index > self.log.last_index():
                return  # acknowledges entries we never sent: a faulty peer, ignore it
            old_paused = pr.is_paused()
            # An acknowledgement of the match index itself moves a probed peer back to
            # REPLICATE too (the answer to the empty append sent on a heartbeat response).
            if pr.maybe_update(m.index) or (
                pr.match == m.index and pr.state == ProgressState.PROBE
            ):
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state == ProgressState.REPLICATE:
                    pr.inflights.free_le(m.index)
                if self.maybe_commit():
                    self.bcast_append()
                elif old_paused:
                    self.send_append(m.frm)
                while self.maybe_send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                    self._send(MT.TIMEOUT_NOW, m.frm)
            return
        if t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            # A peer probed while it holds our whole log (e.g. after report_unreachable) gets
            # an (empty) append too: its answer moves it back to REPLICATE. Without one it
            # stays probed until the next proposal (etcd-raft: heartbeat_rep_recovers_from_probing).
            if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
                self.send_append(m.frm)
            return
        if t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            pr.probe_sent = True  # wait for a heartbeat response before probing again
            return
        if t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            return
    def _transfer_leadership(self, transferee: int) -> None:
        pr = self.tracker.progress.get(transferee)
        if pr is None or pr.is_learner or transferee not in self.tracker.voters:
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == transferee:
                return
            self.lead_transferee = NONE
        if transferee == self.id:
            return
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send(MT.TIMEOUT_NOW, transferee)
        else:
            self.send_append(transferee)

    # -- candidate -------------------------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        my_resp = (
            MT.PRE_VOTE_RESP if self.state == StateRole.PRE_CANDIDATE else MT.VOTE_RESP
        )
        t = m.type
        if t == MT.PROP:
            raise ProposalDropped("no leader (election in progress)")
        if t == MT.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            _, _, res = self.poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateRole.PRE_CANDIDATE:
                    self.campaign(CampaignType.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                # A PRE_VOTE_RESP rejection carries our own (or a newer) term.
                self.become_follower(self.term, NONE)
        # TIMEOUT_NOW, TRANSFER_LEADER and stray responses are ignored by candidates.

    # -- follower --------------------------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            raise ProposalDropped(f"not the leader (leader is {self.lead})")
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            if self.lead in (NONE, m.index):
                return  # no leader to forward to, or the transferee already leads
            self._send(MT.TRANSFER_LEADER, self.lead, index=m.index)
        elif t == MT.TIMEOUT_NOW:
            # Leadership transfer: campaign at once, skipping pre-vote and the lease check.
            self.hup(CampaignType.TRANSFER)
        elif t == MT.STATE_LOST:
            # Our leader found us rejecting entries we had acknowledged (our storage was
            # emptied): until our log holds what it had committed, our vote could elect a
            # candidate missing one of them.
            self.election_elapsed = 0
            self.lead = m.frm
            self.lost_until = max(self.lost_until, m.commit)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(MT.APP_RESP, m.frm, index=self.log.committed)
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(MT.APP_RESP, m.frm, index=last_new)
            return
        hint = min(m.index, self.log.last_index())
        hint, hint_term = self.log.find_conflict_by_term(hint, m.log_term)
        self._send(
            MT.APP_RESP,
            m.frm,
            index=m.index,
            reject=True,
            reject_hint=hint,
            log_term=hint_term,
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(MT.HEARTBEAT_RESP, m.frm)

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self._restore(m.snapshot):
            self._send(MT.APP_RESP, m.frm, index=self.log.last_index())
        else:
            self._send(MT.APP_RESP, m.frm, index=self.log.committed)

    def _restore(self, s: Snapshot) -> bool:
        if s.meta.index <= self.log.committed:
            return False
        if self.log.match_term(s.meta.index, s.meta.term):
            # We already have the entries; just fast-forward the commit index.
            self.log.commit_to(s.meta.index)
            return False
        self.log.restore(s)
        self.tracker.restore(s.meta.conf_state, self.log.last_index() + 1)
        self.is_learner = self.id in self.tracker.learners
        return True

    # -- membership --------------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change (called when the application applies its entry)."""
        nxt = self.log.last_index() + 1
        if cc.type == ConfChangeType.ADD_NODE:
            self.tracker.add_voter(cc.node_id, nxt)
        elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
            self.tracker.add_learner(cc.node_id, nxt)
        else:
            self.tracker.remove(cc.node_id)
        cs = self.tracker.conf_state()
        self.is_learner = self.id in self.tracker.learners
        if self.state == StateRole.LEADER and (
            self.id not in self.tracker.progress or self.is_learner
        ):
            # We removed ourselves: step down so the others elect a leader.
            self.become_follower(self.term, NONE)
            return cs
        if self.state != StateRole.LEADER or not self.tracker.voters:
            return cs
        if self.maybe_commit():
            self.bcast_append()
        else:
            for nid in self.tracker.ids():
                if nid != self.id:
                    self.maybe_send_append(nid, send_if_empty=False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.tracker.voters:
            self.lead_transferee = NONE
        return cs

    # -- time ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick(self)

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, to=self.id, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, to=self.id, frm=self.id))
            if self.state == StateRole.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer did not finish in time
        if self.state != StateRole.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, to=self.id, frm=self.id))

