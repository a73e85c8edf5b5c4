"""Is an orderer whose Raft storage is blank a new member, or a voter that lost its state?

An orderer started with a fully emptied data directory (no WAL, no snapshot, no block past
the genesis block) looks exactly like a brand-new one: a new network's first start, an
orderer added by a config update, or the README "Recovery" add-back (same raft id, back as a
learner once its removal was applied). Locally nothing tells them apart. But if it is still a
voter of a network with history, it lost what it acknowledged, and its empty log finds every
candidate up to date: its vote can elect a candidate missing a committed entry.

The other orderers tell. A blank orderer asks each of them its Admin.Status (the Raft
membership it applied, ``raft_voters`` / ``raft_learners``, at ``raft_applied``, its commit
index and its height) before it may vote or campaign (:func:`judge`):

* the most advanced answer (highest applied index: its membership is the newest) has this
  raft id as a voter and blocks past the genesis block, and this orderer has received nothing
  since its blank start: LOST, the start is refused with RAFT_STATE_LOST (the same recovery
  as the local refusal, node.orderer.server);
* a learner or absent there (an add-back or a new orderer), or a network without blocks yet:
  NEW, it starts as any orderer;
* nobody answered with a membership (a cold start: every orderer starts at once; or answers
  from a release without these fields): UNKNOWN. The orderer starts with its Raft
  ``state_unconfirmed`` (it follows a leader but neither votes nor campaigns) and
  :class:`StateCheck` asks again (after 0.1 s, doubling up to ``retry_s``: at a cold start
  the others' servers come up within moments, and an orderer still unconfirmed when a leader
  hands leadership to it cannot take it) until a verdict, which it hands to the chain
  (confirm, or stop with RAFT_STATE_LOST). A marker file (:data:`MARKER`) keeps the
  state unconfirmed across restarts until then: the node may have written a term or entries
  meanwhile, so its storage is no longer blank, but it is no safer a voter. The server leaves
  it too when a leader tells a running orderer it lost entries it had acknowledged
  (MessageType.STATE_LOST, ``Chain.add_state_lost_listener``): the Raft core withholds that
  orderer's vote until its commit index reaches the one it was told, durably (the ban is in
  its Raft hard state, recovered at a restart), and the marker makes a restart before it
  caught up ask the others as well (it goes once caught up).

An unconfirmed orderer that did receive entries meanwhile (from a leader elected without its
vote) and then hears of a voter with blocks is either a founding orderer started a little after
the others at a network's first start, or one that lost its state and is catching up: it stays
unconfirmed until the leader itself is among the answers, having committed an entry of its own
term, and its commit index reaches the highest of the answers', then votes. Its vote is then
safe -- its log holds every entry it may once have acknowledged (a leader elected by a majority
without it holds every committed entry, and its commit index covers them once it committed in
its term; lagging orderers answering alone may not), and it follows that leader's term -- and
refusing would stop a network's first start whenever an orderer started a second late.

A founding orderer first started only after the others ordered blocks without it is refused
the same way: its own storage cannot tell it from one that lost its state. Its operator, who
knows it never ran, starts it with ``--first-start`` (``node.orderer.server.check_blank_state``):
before its Raft starts it asks until every orderer that any config since the genesis named (and
every voter or learner an answer names) has answered with the raft ids it ever received a Raft
message from (node.orderer.heard, kept since that orderer's own blank start) -- NEW if none
heard from it, LOST if any did (:func:`judge_first_start`), so the flag left on a command line
never covers a later loss of its data directory. Two founding orderers never started cannot
use it (each waits for the other's answer), nor can any while an orderer taken out of the set
is stopped for good, or one keeps no record (upgraded from a release before it): they join by
the README "Recovery" procedure (remove, add back).
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.fsutil import fsync_dir
from node.raft.storage import Storage
from node.raft.types import HardState

_log = logging.getLogger(__name__)

MARKER = "STATE_UNCONFIRMED"
"""File in the orderer's raft/ directory while its blank start is not yet confirmed new."""


FIRST_RETRY_S = 0.1
"""The first background round's delay; each next one waits twice as long, up to ``retry_s``."""


class Verdict(enum.Enum):
    """What the other orderers' answers say about a blank orderer."""

    NEW = "new"
    LOST = "lost"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Answer:
    """One orderer's Status, as far as the check reads it."""

    target: str
    node: str
    height: int
    applied: int
    commit: int
    voters: frozenset[int]
    learners: frozenset[int]
    raft_id: int = 0  # the answering orderer's (0: a release before the field)
    leader: int = 0  # the leader it follows (0: none known)
    term: int = 0  # its current term
    commit_term: int = 0  # the term of the entry at its commit index (0: unknown, or a release
    # before the field)
    heard: frozenset[int] | None = None  # the raft ids it heard from since its Raft storage was
    # blank (node.orderer.heard); None: not kept that long (a release before, or an upgrade)

    @property
    def from_leader(self) -> bool:
        """Does the leader itself answer?"""
        return self.raft_id != 0 and self.raft_id == self.leader


def answer_of(target: str, resp: services_pb2.StatusResponse) -> Answer | None:
    """The Answer in ``resp``, None when it carries no Raft membership (a release before
    these fields: every running orderer has at least one voter)."""
    if resp.role != "orderer" or not resp.raft_voters:
        return None
    return Answer(target, resp.node, resp.height, resp.raft_applied, resp.raft_commit,
                  frozenset(resp.raft_voters), frozenset(resp.raft_learners),
                  resp.raft_id, resp.raft_leader, resp.raft_term, resp.raft_commit_term,
                  frozenset(resp.raft_heard_from) if resp.raft_heard_tracked else None)


def judge(raft_id: int, answers: Sequence[Answer], own_commit: int = 0,
          first_start: bool = False, required: frozenset[int] = frozenset(),
          own_height: int | None = None) -> tuple[Verdict, str]:
    """The verdict on blank orderer ``raft_id`` from the others' ``answers``, and why (see the
    module docstring); ``own_commit`` is the commit index this orderer reached since its blank
    start (0 before its Raft runs); ``first_start``: its operator's word that it never ran
    (:func:`judge_first_start`, with ``required`` and ``own_height``, decides where the
    answers alone say LOST).
    Pure: the same arguments give the same verdict."""
    if not answers:
        return Verdict.UNKNOWN, "no orderer answered with its Raft membership"
    # the membership applied at the highest index is the newest; on a tie, the answer that
    # calls raft_id a voter wins (refusing is the safe side)
    latest = max(answers, key=lambda a: (a.applied, a.height, raft_id in a.voters, a.target))
    where = (f"orderer {latest.node or latest.target} (Raft membership applied at index "
             f"{latest.applied}, {latest.height} block(s))")
    if raft_id not in latest.voters:
        role = "a learner" if raft_id in latest.learners else "no member"
        return Verdict.NEW, f"{where} has raft id {raft_id} as {role}: a new or re-added orderer"
    if latest.height <= 1:
        return Verdict.NEW, f"{where}: a new network (no block past the genesis block)"
    if own_commit == 0:
        if first_start:
            return judge_first_start(raft_id, answers, required, own_height)
        return Verdict.LOST, (f"{where} has raft id {raft_id} as a voter of a network that "
                              "ordered blocks, but this orderer's Raft storage and block store "
                              "are empty: it lost what it acknowledged")
    # It received entries since its blank start (from a leader elected without its vote): a
    # founding orderer started a little after the others at a network's first start, or one
    # that lost its state and is catching up. Either way its vote is safe once its log holds
    # every entry the others had committed (the entries it may once have acknowledged).
    # The highest commit index of any answer, not the most advanced membership's: an orderer
    # that applied more may have learnt less of the commit (the leader applies behind its
    # commit index), and the entries it lacks may be the ones this orderer acknowledged.
    # And the leader's own answer among them: answers from lagging orderers alone (the leader
    # down, or not answering) may all miss entries a leader committed with this orderer's lost
    # acknowledgement -- its vote could then elect one of them. A leader's log holds every
    # committed entry, and its commit index covers them once it committed in its own term:
    # a leader just elected has not, and its commit index may stop short of an entry a former
    # leader committed with this orderer's lost acknowledgement (the entry at its commit index
    # is of an earlier term until its own first entry is committed).
    top = max(answers, key=lambda a: (a.commit, a.target))
    leaders = [a for a in answers if a.from_leader]
    if not leaders:
        return Verdict.UNKNOWN, (f"catching up: commit {own_commit}; no answer from the leader "
                                 f"(answers up to commit {top.commit}, {where})")
    if not any(a.commit_term == a.term for a in leaders):
        lead = leaders[0]
        return Verdict.UNKNOWN, (f"catching up: commit {own_commit}; the leader "
                                 f"{lead.node or lead.target} has not yet committed an entry of "
                                 f"its term {lead.term} (its commit {lead.commit} is of term "
                                 f"{lead.commit_term}, {where})")
    if own_commit >= top.commit:
        return Verdict.NEW, (f"{where} has raft id {raft_id} as a voter; this orderer's log "
                             f"holds every entry the orderers answering committed (commit "
                             f"{own_commit} >= {top.commit}, orderer {top.node or top.target})")
    return Verdict.UNKNOWN, (f"catching up: commit {own_commit} of orderer "
                             f"{top.node or top.target}'s {top.commit} ({where})")


def judge_first_start(raft_id: int, answers: Sequence[Answer], required: frozenset[int] = frozenset(),
                      own_height: int | None = None) -> tuple[Verdict, str]:
    """Blank orderer ``raft_id``, a voter of a network with blocks, whose operator says it
    never ran (``--first-start``: a founding orderer first started after the others ordered
    blocks). Every Raft message it would have sent -- an acknowledgement, a vote, a leader's
    append -- went to another orderer, which recorded it before acting on it (node.orderer.heard):
    LOST if any answer heard from it (it ran, and its data directory was lost: the flag left on
    its command line must not cover that); NEW once every orderer that may have received one
    answered, each with the ids it heard from since its own blank start, none with this one;
    UNKNOWN until then. Those are ``required`` (every orderer any config since the genesis
    named: one taken out of the set since may be the leader that counted its
    acknowledgements) and every voter or learner any answer names (a lagging answer may still
    count an orderer the most advanced one does not); and while an answer is above
    ``own_height`` (this orderer's block store, which ``required`` was read from, lacks blocks:
    an orderer added and taken out again in them would not be asked), UNKNOWN."""
    heard_by = sorted(a.node or a.target for a in answers if a.heard is not None and raft_id in a.heard)
    if heard_by:
        return Verdict.LOST, (f"orderer(s) {', '.join(heard_by)} received Raft messages from raft id "
                              f"{raft_id}: it ran before and lost its state; --first-start is only "
                              "for an orderer that never ran")
    ahead = max((a.height for a in answers), default=0)
    if own_height is not None and ahead > own_height:
        return Verdict.UNKNOWN, (f"--first-start: this orderer's block store is behind (height "
                                 f"{own_height}, an answer {ahead}): the orderers its configs name "
                                 "may not be all")
    by_id = {a.raft_id: a for a in answers if a.raft_id}
    named = set(required).union(*(a.voters | a.learners for a in answers))
    others = sorted(named - {raft_id})
    unanswered = [r for r in others if r not in by_id]
    untracked = [r for r in others if r in by_id and by_id[r].heard is None]
    if unanswered or untracked:
        why = []
        if unanswered:
            why.append(f"orderer(s) {unanswered} did not answer")
        if untracked:
            why.append(f"orderer(s) {untracked} keep no record of whom they heard from since their "
                       "Raft storage was blank (a release before it, or upgraded since, or told by a "
                       "leader that it lost entries it had acknowledged)")
        return Verdict.UNKNOWN, f"--first-start: {'; '.join(why)}"
    return Verdict.NEW, (f"no orderer ({others}) ever received a Raft message from raft id {raft_id}: "
                         "a first start, on its operator's word (--first-start)")


def is_blank(storage: Storage) -> bool:
    """No hard state, no entry, no snapshot: the Raft storage of a node that never ran (or
    lost everything)."""
    hs, _ = storage.initial_state()
    return hs == HardState() and storage.last_index() == 0 and storage.snapshot().is_empty


def ask(
    targets: Sequence[str], channels: Callable[[str], grpc.Channel], timeout_s: float
) -> list[Answer]:
    """Every target's Status at once, each within ``timeout_s``; those that do not answer, or
    answer without a Raft membership, are left out (logged)."""
    calls: list[tuple[str, grpc.Channel, grpc.Future[services_pb2.StatusResponse]]] = []
    for target in targets:
        channel = channels(target)
        stub = services_pb2_grpc.AdminStub(channel)
        calls.append((target, channel, stub.Status.future(services_pb2.StatusRequest(), timeout=timeout_s)))
    out: list[Answer] = []
    for target, channel, call in calls:
        try:
            resp = call.result()
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            _log.info("event=raft_state_check_unanswered target=%s code=%s", target,
                      code.name if code is not None else "-")
            continue
        finally:
            channel.close()
        answer = answer_of(target, resp)
        if answer is None:
            _log.info("event=raft_state_check_unanswered target=%s code=NO_MEMBERSHIP", target)
            continue
        out.append(answer)
    return out


class StateCheck:
    """The check for one blank orderer (see the module docstring): :meth:`round` asks once;
    :meth:`start` asks in a background thread until a verdict and hands it over."""

    def __init__(
        self,
        raft_id: int,
        raft_dir: Path,
        targets: Callable[[], Sequence[str]],
        channels: Callable[[str], grpc.Channel],
        *,
        timeout_s: float = 2.0,
        retry_s: float = 0.5,
        fsync: bool = True,
    ) -> None:
        self._id = raft_id
        self._marker = raft_dir / MARKER
        self._targets = targets
        self._channels = channels
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._fsync = fsync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def raft_id(self) -> int:
        """The raft id of the orderer checked."""
        return self._id

    def needed(self, storage: Storage) -> bool:
        """Blank storage, or a start not yet confirmed new (the marker is there)."""
        return self._marker.exists() or is_blank(storage)

    def round(self, own_commit: int | Callable[[], int] = 0) -> tuple[Verdict, str]:
        """Ask every other orderer once and judge (no other orderer at all: NEW). A callable
        ``own_commit`` is read once the answers are in: under load the others' commit index
        moves on while the question is out, and the one this orderer had before asking is a
        round trip behind it every time."""
        targets = list(self._targets())
        if not targets:
            return Verdict.NEW, "no other orderer in the orderer set"
        answers = ask(targets, self._channels, self._timeout_s)
        return judge(self._id, answers, own_commit() if callable(own_commit) else own_commit)

    def answers(self, targets: Sequence[str] | None = None) -> list[Answer]:
        """Every target's answer (the orderers of the config in force unless ``targets``)."""
        targets = list(self._targets() if targets is None else targets)
        return ask(targets, self._channels, self._timeout_s) if targets else []

    def mark_unconfirmed(self) -> None:
        """Leave the marker (durably) before the node runs unconfirmed."""
        if self._marker.exists():
            return
        with open(self._marker, "wb") as f:
            if self._fsync:
                os.fsync(f.fileno())
        if self._fsync:
            fsync_dir(self._marker.parent)

    def confirmed(self) -> None:
        """The verdict is NEW: the marker goes."""
        try:
            self._marker.unlink()
        except FileNotFoundError:
            return
        if self._fsync:
            fsync_dir(self._marker.parent)

    def start(self, on_new: Callable[[str], None], on_lost: Callable[[str], None],
              own_commit: Callable[[], int]) -> None:
        """Ask again (after :data:`FIRST_RETRY_S`, doubling up to ``retry_s``) in a background
        thread until NEW (``on_new(why)``, after the marker is gone) or LOST (``on_lost(why)``),
        judging with the commit index the orderer reached meanwhile (``own_commit()``);
        :meth:`close` ends it early."""
        self._thread = threading.Thread(target=self._run, args=(on_new, on_lost, own_commit),
                                        name=f"raft-state-check-{self._id}", daemon=True)
        self._thread.start()

    def _run(self, on_new: Callable[[str], None], on_lost: Callable[[str], None],
             own_commit: Callable[[], int]) -> None:
        delay = min(FIRST_RETRY_S, self._retry_s)
        while not self._stop.wait(delay):
            delay = min(2 * delay, self._retry_s)
            try:
                verdict, why = self.round(own_commit)
            except Exception:  # noqa: BLE001 -- stay unconfirmed and ask again, never end silently
                _log.exception("event=raft_state_check_failed orderer=%d: asking again", self._id)
                continue
            if verdict == Verdict.UNKNOWN:
                continue
            if verdict == Verdict.NEW:
                self.confirmed()
                on_new(why)
            else:
                on_lost(why)
            return

    def close(self) -> None:
        """Stop asking (the thread ends within one answer's timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout_s + 1.0)
