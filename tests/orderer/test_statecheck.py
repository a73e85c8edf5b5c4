"""The blank-orderer check (node.orderer.statecheck): the verdict from the other orderers'
answers, the marker that keeps an unconfirmed start unconfirmed across restarts, and the
start-up decision of node.orderer.server.check_blank_state."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from netgen.generate import GeneratedNetwork
from rxchain.v1 import services_pb2

from node.crypto.signing import load_signer
from node.errors import RxError
from node.ledger.blockstore import BlockStore
from node.orderer import statecheck
from node.orderer.chain import Chain, ChainOptions, bootstrap_conf_state
from node.orderer.metrics import OrdererMetrics
from node.orderer.server import check_blank_state
from node.orderer.statecheck import MARKER, Answer, StateCheck, Verdict, answer_of, judge
from node.raft.durable import DurableStorage
from node.raft.storage import MemoryStorage
from node.raft.types import ConfState, Entry, HardState, Message, MessageType
from tests.orderer.cluster import make_network
from tests.orderer.inproc import Collect, NoFetch, genesis_parts

ME = 2


def ans(target: str, *, height: int, applied: int, voters: tuple[int, ...] = (1, 2, 3),
        learners: tuple[int, ...] = (), commit: int | None = None, leader: bool = False) -> Answer:
    """Orderer ``target`` ("a": raft id 1, "b": 2, "c": 3) answering, in term 4 with an entry
    of its term committed; ``leader``: it leads."""
    rid = ord(target[0]) - ord("a") + 1
    return Answer(target, f"o-{target}", height, applied, applied if commit is None else commit,
                  frozenset(voters), frozenset(learners), rid, rid if leader else 0, 4, 4)


def test_nobody_answering_is_unknown() -> None:
    assert judge(ME, [])[0] == Verdict.UNKNOWN


def test_a_brand_new_network_is_new() -> None:
    # at a cold start the others may already have elected a leader (a few Raft entries,
    # applied > 0) but no block past the genesis block was ordered
    verdict, why = judge(ME, [ans("a", height=1, applied=0), ans("c", height=1, applied=2)])
    assert verdict == Verdict.NEW and "new network" in why


def test_a_voter_of_a_network_with_blocks_lost_its_state() -> None:
    verdict, why = judge(ME, [ans("a", height=1, applied=0), ans("c", height=5, applied=9)])
    assert verdict == Verdict.LOST
    assert "o-c" in why and "raft id 2 as a voter" in why and "5 block(s)" in why


@pytest.mark.parametrize(("voters", "learners", "role"), [((1, 3), (2,), "a learner"), ((1, 3), (), "no member")])
def test_a_learner_or_a_removed_orderer_is_new(voters: tuple[int, ...], learners: tuple[int, ...],
                                              role: str) -> None:
    """The README Recovery add-back (a learner once its removal was applied), and an orderer
    not (or no longer) in Raft."""
    verdict, why = judge(ME, [ans("a", height=9, applied=30, voters=voters, learners=learners)])
    assert verdict == Verdict.NEW and role in why


def test_a_voter_that_received_entries_since_its_blank_start_votes_once_caught_up() -> None:
    """A founding orderer started a second after the others at a network's first start, which
    ordered blocks meanwhile (the tests/orderer/test_membership.py start): it followed their
    leader, so it is not refused; it votes once its log holds what they committed."""
    answers = [ans("a", height=5, applied=9, commit=11, leader=True)]
    assert judge(ME, answers, own_commit=0)[0] == Verdict.LOST
    verdict, why = judge(ME, answers, own_commit=7)
    assert verdict == Verdict.UNKNOWN and "catching up: commit 7" in why and "11" in why
    assert judge(ME, answers, own_commit=11)[0] == Verdict.NEW
    assert judge(ME, answers, own_commit=12)[0] == Verdict.NEW


def test_a_voter_catching_up_votes_only_once_its_commit_reaches_every_answer() -> None:
    """The leader applies behind its commit index: the most advanced membership (the highest
    applied index) may come with a lower commit index than another answer's. Entry 12,
    committed by the leader with this orderer's lost acknowledgement, may be missing from
    orderer c's log: voting at commit 11 could elect c and lose it."""
    leader = ans("a", height=5, applied=10, commit=12, leader=True)
    follower = ans("c", height=5, applied=11, commit=11)
    for answers in ([leader, follower], [follower, leader]):
        verdict, why = judge(ME, answers, own_commit=11)
        assert verdict == Verdict.UNKNOWN and "catching up: commit 11" in why and "o-a's 12" in why
        assert judge(ME, answers, own_commit=12)[0] == Verdict.NEW


def test_a_voter_catching_up_votes_only_once_the_leader_itself_answered() -> None:
    """Answers from lagging orderers alone: after a cold restart with this orderer emptied, a
    leader elected without it (holding an entry it had committed with this orderer's lost
    acknowledgement) sent it part of the log and crashed; orderer c, lagging, answers. Its
    commit reached, this orderer voted and could elect c, the entry lost. The leader's own
    answer is needed (its log holds every committed entry)."""
    lagging = ans("c", height=5, applied=8, commit=8)
    verdict, why = judge(ME, [lagging], own_commit=9)
    assert verdict == Verdict.UNKNOWN and "no answer from the leader" in why
    follows = Answer("c", "o-c", 5, 8, 8, frozenset({1, 2, 3}), frozenset(), 3, 1)  # follows leader 1
    assert judge(ME, [follows], own_commit=9)[0] == Verdict.UNKNOWN
    assert judge(ME, [follows, ans("a", height=5, applied=9, commit=9, leader=True)], own_commit=9)[0] == Verdict.NEW
    old_release = Answer("a", "o-a", 5, 9, 9, frozenset({1, 2, 3}), frozenset())  # no raft id
    assert judge(ME, [old_release], own_commit=9)[0] == Verdict.UNKNOWN


def test_a_voter_catching_up_does_not_vote_on_a_leader_not_yet_committed_in_its_term() -> None:
    """A leader just elected (term 5) has not yet committed an entry of its term: its commit
    index (11, an entry of term 4) may stop short of entry 12, which the former leader
    committed with this orderer's lost acknowledgement (the new leader holds it, its commit
    index does not cover it yet). Voting at commit 11 with entry 12 missing from this
    orderer's log could elect orderer c, which lacks it too, should the new leader crash."""
    fresh = Answer("a", "o-a", 5, 10, 11, frozenset({1, 2, 3}), frozenset(), 1, 1, 5, 4)
    lagging = Answer("c", "o-c", 5, 10, 11, frozenset({1, 2, 3}), frozenset(), 3, 1, 5, 4)
    verdict, why = judge(ME, [fresh, lagging], own_commit=11)
    assert verdict == Verdict.UNKNOWN and "has not yet committed an entry of its term 5" in why
    # once its first entry of term 5 (13) is committed, its commit covers entry 12
    settled = Answer("a", "o-a", 5, 12, 13, frozenset({1, 2, 3}), frozenset(), 1, 1, 5, 5)
    assert judge(ME, [settled, lagging], own_commit=12)[0] == Verdict.UNKNOWN
    assert judge(ME, [settled, lagging], own_commit=13)[0] == Verdict.NEW
    # a release telling its raft id but not the term of its commit never confirms it
    untold = Answer("a", "o-a", 5, 12, 13, frozenset({1, 2, 3}), frozenset(), 1, 1, 5)
    assert judge(ME, [untold], own_commit=13)[0] == Verdict.UNKNOWN


def test_the_most_advanced_answer_decides() -> None:
    lagging_voter = ans("a", height=6, applied=20)  # has not applied the removal yet
    readded = ans("c", height=9, applied=31, voters=(1, 3), learners=(2,))
    assert judge(ME, [lagging_voter, readded])[0] == Verdict.NEW
    lagging_learner = ans("a", height=6, applied=20, voters=(1, 3), learners=(2,))
    promoted = ans("c", height=9, applied=31)
    assert judge(ME, [lagging_learner, promoted])[0] == Verdict.LOST
    # on a tie the voter wins: refusing is the safe side
    tie = [ans("a", height=9, applied=31, voters=(1, 3), learners=(2,)), ans("c", height=9, applied=31)]
    assert judge(ME, tie)[0] == Verdict.LOST
    assert judge(ME, list(reversed(tie)))[0] == Verdict.LOST


def test_an_answer_without_membership_is_no_answer() -> None:
    old_release = services_pb2.StatusResponse(node="o1", role="orderer", height=7, raft_commit=12)
    assert answer_of("t", old_release) is None
    peer = services_pb2.StatusResponse(node="p1", role="peer", height=7, raft_voters=[1, 2, 3])
    assert answer_of("t", peer) is None
    full = services_pb2.StatusResponse(node="o1", role="orderer", height=7, raft_applied=12,
                                       raft_commit=13, raft_voters=[1, 3], raft_learners=[2],
                                       raft_id=3, raft_leader=1, raft_term=6, raft_commit_term=5)
    assert answer_of("t", full) == Answer("t", "o1", 7, 12, 13, frozenset({1, 3}), frozenset({2}), 3, 1, 6, 5)


def _check(tmp_path: Path, targets: list[str], **kw: float) -> StateCheck:
    return StateCheck(ME, tmp_path, lambda: targets, lambda t: pytest.fail("no channel in unit tests"),
                      fsync=False, **kw)


def _answering(monkeypatch: pytest.MonkeyPatch, rounds: list[list[Answer]]) -> list[int]:
    """statecheck.ask answers ``rounds`` in turn (the last one for ever); returns a call count."""
    calls = [0]

    def fake(targets: object, channels: object, timeout_s: float) -> list[Answer]:
        calls[0] += 1
        return rounds[min(calls[0], len(rounds)) - 1]

    monkeypatch.setattr(statecheck, "ask", fake)
    return calls


class Told:
    """The callbacks of StateCheck.start, recording what they were told."""

    def __init__(self) -> None:
        self.new: list[str] = []
        self.lost: list[str] = []
        self.done = threading.Event()

    def on_new(self, why: str) -> None:
        self.new.append(why)
        self.done.set()

    def on_lost(self, why: str) -> None:
        self.lost.append(why)
        self.done.set()


def _non_blank() -> MemoryStorage:
    st = MemoryStorage(ConfState((1, 2, 3), ()))
    st.append([Entry(1, 1)])
    st.set_hard_state(HardState(1, 1, 1))
    return st


def test_only_blank_storage_or_an_unconfirmed_start_is_checked(tmp_path: Path) -> None:
    check = _check(tmp_path, ["a:1"])
    assert check.needed(MemoryStorage(ConfState((1, 2, 3), ())))
    assert not check.needed(_non_blank())
    # a start left unconfirmed wrote a term and entries meanwhile: still checked
    check.mark_unconfirmed()
    assert check.needed(_non_blank())
    check.confirmed()
    assert not (tmp_path / MARKER).exists() and not check.needed(_non_blank())


def test_start_up_refuses_a_lost_voter_with_the_recovery_text(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _answering(monkeypatch, [[ans("c", height=5, applied=9)]])
    with pytest.raises(RxError) as err:
        check_blank_state(_check(tmp_path, ["c:1"]), MemoryStorage(ConfState((1, 2, 3), ())))
    assert err.value.reason == "RAFT_STATE_LOST"
    assert "raft id 2 as a voter" in err.value.message
    assert "remove it from the consortium's orderer set" in err.value.message
    assert "Never start it with an emptied data directory" in err.value.message
    assert not (tmp_path / MARKER).exists()


def test_start_up_confirms_a_new_orderer_and_a_lone_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _answering(monkeypatch, [[ans("c", height=5, applied=9, voters=(1, 3), learners=(2,))]])
    (tmp_path / MARKER).write_bytes(b"")  # a previous unconfirmed start
    assert check_blank_state(_check(tmp_path, ["c:1"]), _non_blank()) is False
    assert not (tmp_path / MARKER).exists()
    # not blank, no marker: nobody is asked
    calls = _answering(monkeypatch, [[ans("c", height=5, applied=9)]])
    assert check_blank_state(_check(tmp_path, ["c:1"]), _non_blank()) is False
    assert calls[0] == 0
    # the only orderer of its set: nobody to ask, nobody it could have left behind
    assert check_blank_state(_check(tmp_path, []), MemoryStorage()) is False


def _heard(a: Answer, *ids: int) -> Answer:
    """``a`` telling the raft ids it heard from since its Raft storage was blank."""
    return replace(a, heard=frozenset(ids))


def test_judge_first_start_needs_every_other_voter_and_refuses_one_heard_from() -> None:
    """--first-start: the operator's word that a blank voter of a network with blocks never ran.
    Every Raft message it would have sent reached another orderer, which recorded it before
    acting on it (node.orderer.heard): any answer that heard from it says it ran (LOST); NEW
    only once every other voter answered with its record, none naming it."""
    a, c = ans("a", height=5, applied=9, leader=True), ans("c", height=5, applied=9)
    assert judge(ME, [a, c])[0] == Verdict.LOST  # without the flag, as before
    assert judge(ME, [_heard(a, 3), _heard(c, 1)], first_start=True)[0] == Verdict.NEW
    # its block store behind an answer: the orderers its configs name may not be all
    verdict, why = judge(ME, [_heard(a, 3), _heard(c, 1)], first_start=True, own_height=4)
    assert verdict == Verdict.UNKNOWN and "behind" in why
    assert judge(ME, [_heard(a, 3), _heard(c, 1)], first_start=True, own_height=5)[0] == Verdict.NEW
    # every orderer any config named must answer, a removed one too
    verdict, why = judge(ME, [_heard(a, 3), _heard(c, 1)], first_start=True, required=frozenset({1, 3, 4}))
    assert verdict == Verdict.UNKNOWN and "[4] did not answer" in why
    verdict, why = judge(ME, [_heard(a, 3, ME), _heard(c, 1)], first_start=True)
    assert verdict == Verdict.LOST and "o-a" in why and "never ran" in why
    verdict, why = judge(ME, [_heard(a, 3)], first_start=True)  # voter 3 silent
    assert verdict == Verdict.UNKNOWN and "[3] did not answer" in why
    verdict, why = judge(ME, [_heard(a, 3), c], first_start=True)  # 3 keeps no record
    assert verdict == Verdict.UNKNOWN and "[3] keep no record" in why
    # one that heard from it is believed even when the others have no record
    assert judge(ME, [_heard(a, ME), c], first_start=True)[0] == Verdict.LOST
    # the flag does not touch the other verdicts: a learner, a new network, catching up
    assert judge(ME, [ans("a", height=5, applied=9, voters=(1, 3), learners=(2,))], first_start=True)[0] \
        == Verdict.NEW
    assert judge(ME, [ans("a", height=1, applied=2)], first_start=True)[0] == Verdict.NEW
    assert judge(ME, [_heard(a, 3), _heard(c, 1)], own_commit=3, first_start=True)[0] == Verdict.UNKNOWN


def test_a_first_start_asks_before_raft_until_every_voter_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With --first-start the check runs before Raft starts (the orderer sends nothing
    meanwhile): it asks again until every other voter has answered, then starts confirmed
    (NEW), or refuses RAFT_STATE_LOST (one heard from it); FIRST_START_UNANSWERED once the
    wait is over. Its Raft storage must be blank: a marker left by an unconfirmed start or a
    leader's STATE_LOST is not (the flag left on a command line does nothing once it ran)."""
    blank = MemoryStorage(ConfState((1, 2, 3), ()))
    a, c = ans("a", height=5, applied=9, leader=True), ans("c", height=5, applied=9)

    def known() -> tuple[dict[int, str], int]:  # every orderer any config named, the height
        return {1: "a:1", 2: "me:1", 3: "c:1"}, 5

    calls = _answering(monkeypatch, [[_heard(a, 3)], [_heard(a, 3), c], [_heard(a, 3), _heard(c, 1)]])
    slept: list[float] = []
    with caplog.at_level("INFO"):
        assert check_blank_state(_check(tmp_path, ["a:1", "c:1"]), blank, first_start=True, every_orderer=known,
                                 sleep=slept.append) is False
    assert calls[0] == 3 and len(slept) == 2
    assert "event=raft_first_start_waiting" in caplog.text and "event=raft_first_start_attested" in caplog.text
    assert not (tmp_path / MARKER).exists()

    _answering(monkeypatch, [[_heard(a, 3, ME), _heard(c, 1)]])
    with pytest.raises(RxError) as err:
        check_blank_state(_check(tmp_path, ["a:1", "c:1"]), blank, first_start=True, every_orderer=known,
                          sleep=slept.append)
    assert err.value.reason == "RAFT_STATE_LOST" and "received Raft messages from raft id 2" in err.value.message

    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    _answering(monkeypatch, [[_heard(a, 3)]])
    with pytest.raises(RxError) as err:
        check_blank_state(_check(tmp_path, ["a:1", "c:1"]), blank, first_start=True, every_orderer=known,
                          first_start_wait_s=5.0,
                          clock=lambda: now[0], sleep=sleep)
    assert err.value.reason == "FIRST_START_UNANSWERED" and "[3] did not answer" in err.value.message
    assert 5.0 <= now[0] <= 5.5

    # storage holding state: with or without the marker an unconfirmed start or a leader's
    # STATE_LOST leaves, the flag is refused and nobody is asked
    for marker in (False, True):
        if marker:
            (tmp_path / MARKER).write_bytes(b"")
        calls = _answering(monkeypatch, [[_heard(a, 3), _heard(c, 1)]])
        with pytest.raises(RxError) as err:
            check_blank_state(_check(tmp_path, ["a:1", "c:1"]), _non_blank(), first_start=True, every_orderer=known)
        assert err.value.reason == "BAD_CONFIG" and "--first-start" in err.value.message
        assert calls[0] == 0


def test_nobody_answering_starts_unconfirmed_and_asks_until_a_verdict(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _answering(monkeypatch, [[], [], [ans("c", height=5, applied=9)]])
    check = _check(tmp_path, ["a:1", "c:1"], retry_s=0.01)
    assert check_blank_state(check, MemoryStorage(ConfState((1, 2, 3), ()))) is True
    assert (tmp_path / MARKER).exists()
    told = Told()
    check.start(told.on_new, told.on_lost, lambda: 0)
    assert told.done.wait(5)
    check.close()
    assert calls[0] == 3 and told.new == [] and "raft id 2 as a voter" in told.lost[0]
    assert (tmp_path / MARKER).exists()  # still unconfirmed: every later start asks again

    _answering(monkeypatch, [[], [ans("a", height=1, applied=0)]])
    told = Told()
    check = _check(tmp_path, ["a:1"], retry_s=0.01)
    check.start(told.on_new, told.on_lost, lambda: 0)
    assert told.done.wait(5)
    check.close()
    assert told.lost == [] and "new network" in told.new[0] and not (tmp_path / MARKER).exists()


def test_close_ends_a_check_nobody_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _answering(monkeypatch, [[]])
    check = _check(tmp_path, ["a:1"], retry_s=0.01)
    told = Told()
    check.start(told.on_new, told.on_lost, lambda: 0)
    assert not told.done.wait(0.1)
    check.close()
    seen = calls[0]
    assert seen >= 2
    assert not told.done.wait(0.1) and calls[0] == seen


def test_an_unconfirmed_orderer_catching_up_votes_once_its_commit_reaches_the_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _answering(monkeypatch, [[ans("a", height=5, applied=9, commit=11, leader=True)]])
    # restarted while unconfirmed, with entries up to commit 1: still unconfirmed
    (tmp_path / MARKER).write_bytes(b"")
    check = _check(tmp_path, ["a:1"], retry_s=0.01)
    assert check_blank_state(check, _non_blank()) is True
    commits = iter([1, 5, 10, 11, 12])
    told = Told()
    check.start(told.on_new, told.on_lost, lambda: next(commits))
    assert told.done.wait(5)
    check.close()
    assert told.lost == [] and "commit 11 >= 11" in told.new[0]
    assert not (tmp_path / MARKER).exists()


def test_a_catching_up_orderer_reads_its_commit_once_the_answers_are_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the leader's commit index moves on while the question is out: compared with
    the commit index this orderer had before asking, one that follows the leader a round trip
    behind stayed unconfirmed (no vote) for as long as the load lasted."""
    at = {"leader": 10, "own": 9}

    def fake(targets: object, channels: object, timeout_s: float) -> list[Answer]:
        at["leader"] += 1  # committed one more batch, and answers with it
        answer = [ans("a", height=5, applied=at["leader"] - 1, commit=at["leader"], leader=True)]
        at["own"] = at["leader"]  # which reached this orderer while the answer travelled
        return answer

    monkeypatch.setattr(statecheck, "ask", fake)
    check = _check(tmp_path, ["a:1"], retry_s=0.01)
    check.mark_unconfirmed()
    told = Told()
    check.start(told.on_new, told.on_lost, lambda: at["own"])
    try:
        assert told.done.wait(5), at
    finally:
        check.close()
    assert told.lost == [] and "commit 11 >= 11" in told.new[0]


def test_a_failing_round_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]

    def fake(targets: object, channels: object, timeout_s: float) -> list[Answer]:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("no channel")
        return [ans("a", height=1, applied=0)]

    monkeypatch.setattr(statecheck, "ask", fake)
    told = Told()
    check = _check(tmp_path, ["a:1"], retry_s=0.01)
    check.start(told.on_new, told.on_lost, lambda: 0)
    assert told.done.wait(5)
    check.close()
    assert told.lost == [] and "new network" in told.new[0]


def _follower_with_check(tmp_path: Path) -> tuple[Chain, DurableStorage, BlockStore, StateCheck]:
    """Orderer ME of a new network as a Chain (not started: its steps are driven by hand) over
    Raft storage in tmp_path/o2/raft, with the StateCheck its server would give it."""
    net = make_network(tmp_path / "net")
    raft_dir = tmp_path / "o2" / "raft"
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "o2" / "blocks")
    storage = DurableStorage(raft_dir, fsync=False, bootstrap_conf_state=bootstrap_conf_state([1, 2, 3]))
    check = StateCheck(ME, raft_dir, lambda: ["a:1", "c:1"],
                       lambda t: pytest.fail("no channel in unit tests"), fsync=False)
    d = net.home / "nodes" / "orderer.ins02"
    chain = Chain(ME, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins02"), Collect(),
                  NoFetch(), tracker, OrdererMetrics("lost"), rng=random.Random(5),
                  options=ChainOptions(tick_s=1000.0, election_tick=10))
    return chain, storage, blocks, check


def test_a_follower_told_it_lost_state_stays_unconfirmed_across_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Raft core withheld the vote of a follower its leader told it lost acknowledged
    entries (MessageType.STATE_LOST) in memory only. Restarted before it caught up, its
    storage is no longer blank (the leader's term), so without the marker nobody was asked
    and it voted at once with a log short of what it had acknowledged. (The ban is durable
    now too, see the next tests; the marker still makes the restart ask the others.)"""
    chain, storage, blocks, check = _follower_with_check(tmp_path)
    raft_dir = tmp_path / "o2" / "raft"
    chain.add_state_lost_listener(lambda lost: check.mark_unconfirmed() if lost else check.confirmed())
    try:
        chain._handle("step", Message(MessageType.STATE_LOST, to=ME, frm=1, term=3, commit=7))
        chain._process_ready()
        assert chain.status().state_unconfirmed and chain.status().term == 3
    finally:
        storage.close()
        blocks.close()
    restarted = DurableStorage(raft_dir, fsync=False, bootstrap_conf_state=bootstrap_conf_state([1, 2, 3]))
    try:
        assert not statecheck.is_blank(restarted)
        # it received nothing since: refused as at a blank start
        _answering(monkeypatch, [[ans("a", height=5, applied=9, commit=7)]])
        with pytest.raises(RxError) as err:
            check_blank_state(check, restarted)
        assert err.value.reason == "RAFT_STATE_LOST"
        # nobody answers: unconfirmed (no vote) until one does
        _answering(monkeypatch, [[]])
        assert check_blank_state(check, restarted) is True
    finally:
        restarted.close()


def test_a_follower_told_it_lost_state_loses_the_marker_once_caught_up(tmp_path: Path) -> None:
    """Kept after it caught up, the marker made every later restart ask, and a restart finding
    the others ahead (they ran on meanwhile) withheld its vote again: with one orderer of three
    down, no leader."""
    chain, storage, blocks, check = _follower_with_check(tmp_path)
    raft_dir = tmp_path / "o2" / "raft"
    seen: list[bool] = []
    chain.add_state_lost_listener(seen.append)
    chain.add_state_lost_listener(lambda lost: check.mark_unconfirmed() if lost else check.confirmed())
    try:
        for _ in range(2):  # told again with the next heartbeat: marked once
            chain._handle("step", Message(MessageType.STATE_LOST, to=ME, frm=1, term=3, commit=1))
            chain._process_ready()
        assert seen == [True] and (raft_dir / MARKER).exists()
        # the leader's no-op entry, committed: caught up
        chain._handle("step", Message(MessageType.APP, to=ME, frm=1, term=3, index=0, log_term=0,
                                      entries=(Entry(3, 1),), commit=1))
        chain._process_ready()
        assert seen == [True, False] and not (raft_dir / MARKER).exists()
        assert not chain.status().state_unconfirmed and chain.status().commit == 1
    finally:
        storage.close()
        blocks.close()


def _restartable_follower(tmp_path: Path, net: GeneratedNetwork,
                          run: int) -> tuple[Chain, DurableStorage, BlockStore, Collect]:
    """Orderer ME over its Raft storage in tmp_path/o2/raft, started as run ``run`` (a new block
    store each time: only the Raft storage is carried over), neither marked nor passed
    ``state_unconfirmed``: what it withholds comes from its Raft storage alone."""
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "o2" / f"blocks-{run}")
    storage = DurableStorage(tmp_path / "o2" / "raft", fsync=False,
                             bootstrap_conf_state=bootstrap_conf_state([1, 2, 3]))
    d = net.home / "nodes" / "orderer.ins02"
    sent = Collect()
    chain = Chain(ME, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins02"), sent,
                  NoFetch(), tracker, OrdererMetrics("lost"), rng=random.Random(5),
                  options=ChainOptions(tick_s=1000.0, election_tick=10))
    return chain, storage, blocks, sent


def test_a_follower_told_it_lost_state_withholds_its_vote_after_a_restart_until_caught_up(
        tmp_path: Path) -> None:
    """The ban a leader's MessageType.STATE_LOST sets lived in the Raft core's memory only (the
    marker file aside): restarted before it caught up, the orderer voted at once with a log
    short of what it had acknowledged. It is in the Raft hard state now: acted on once
    durable, recovered at start (status unconfirmed, the listeners told again), cleared once
    caught up."""
    net = make_network(tmp_path / "net")
    chain, storage, blocks, _ = _restartable_follower(tmp_path, net, 1)
    seen: list[tuple[bool, int]] = []
    chain.add_state_lost_listener(lambda lost: seen.append((lost, storage.hard_state.lost_until)))
    try:
        chain._handle("step", Message(MessageType.STATE_LOST, to=ME, frm=1, term=3, commit=1))
        assert seen == []  # not before the ban is durable
        chain._process_ready()
        assert seen == [(True, 1)] and chain.status().state_unconfirmed
        # told again with the next heartbeat: acted on once
        chain._handle("step", Message(MessageType.STATE_LOST, to=ME, frm=1, term=3, commit=1))
        chain._process_ready()
        assert seen == [(True, 1)]
    finally:
        storage.close()
        blocks.close()
    # restarted: it neither votes ...
    chain, storage, blocks, sent = _restartable_follower(tmp_path, net, 2)
    try:
        assert chain.status().state_unconfirmed and storage.hard_state.lost_until == 1
        chain._handle("step", Message(MessageType.VOTE, to=ME, frm=3, term=4, index=5, log_term=3))
        chain._process_ready()
        assert [(m.type, m.reject) for m in sent.sent] == [(MessageType.VOTE_RESP, True)]
    finally:
        storage.close()
        blocks.close()
    # ... and its driver, started, tells the listeners again (a crash may have come between
    # the ban saved and the marker written)
    chain, storage, blocks, _ = _restartable_follower(tmp_path, net, 3)
    told = threading.Event()
    chain.add_state_lost_listener(lambda lost: told.set() if lost else None)
    try:
        chain.start()
        assert told.wait(5)
    finally:
        chain.stop()
        storage.close()
        blocks.close()
    # caught up after a restart: the ban is lifted (durably) and the listeners told
    chain, storage, blocks, sent = _restartable_follower(tmp_path, net, 4)
    lifted: list[bool] = []
    chain.add_state_lost_listener(lifted.append)
    try:
        chain._handle("step", Message(MessageType.APP, to=ME, frm=1, term=4, index=0, log_term=0,
                                      entries=(Entry(4, 1),), commit=1))
        chain._process_ready()
        assert lifted == [False] and not chain.status().state_unconfirmed
        assert storage.hard_state.lost_until == 0 and storage.hard_state.commit == 1
    finally:
        storage.close()
        blocks.close()
    # and a restart does not bring it back: it votes
    chain, storage, blocks, sent = _restartable_follower(tmp_path, net, 5)
    try:
        assert not chain.status().state_unconfirmed
        chain._handle("step", Message(MessageType.VOTE, to=ME, frm=3, term=5, index=1, log_term=4))
        chain._process_ready()
        assert [(m.type, m.reject) for m in sent.sent] == [(MessageType.VOTE_RESP, False)]
    finally:
        storage.close()
        blocks.close()
