"""The raft ids an orderer received Raft messages from, kept durably (node.orderer.heard)."""

from __future__ import annotations

from pathlib import Path

from rxchain.v1 import services_pb2

from node.orderer.heard import FILE, HeardRecord
from node.orderer.statecheck import answer_of
from node.raft.types import ConfState, Message, MessageType
from tests.orderer.cluster import make_network
from tests.orderer.inproc import Collect, Leader


def test_a_record_started_with_blank_storage_is_tracked_and_survives_a_restart(tmp_path: Path) -> None:
    record = HeardRecord.open(tmp_path, blank=True, fsync=True)
    assert record.tracked and record.ids() == frozenset() and (tmp_path / FILE).exists()
    record.note(3)
    record.note(1)
    record.note(3)
    again = HeardRecord.open(tmp_path, blank=False)  # the storage is no longer blank: kept as it was
    assert again.tracked and again.ids() == {1, 3}


def test_a_record_started_over_existing_storage_is_not_tracked(tmp_path: Path) -> None:
    """An orderer upgraded to a release keeping the record: what it received before is not in
    it, so its answer cannot clear anybody (statecheck.judge_first_start)."""
    record = HeardRecord.open(tmp_path, blank=False, fsync=False)
    record.note(2)
    assert not record.tracked and not HeardRecord.open(tmp_path, blank=True).tracked


def test_a_record_that_does_not_parse_is_started_again_untracked(tmp_path: Path) -> None:
    """Evidence for the others' --first-start, not this orderer's state: a torn or corrupt
    record must not stop an orderer whose Raft state is intact (it made serve() fail BAD_CONFIG,
    found by a review); started again untracked, its answer clears nobody."""
    (tmp_path / FILE).write_bytes(b"\xff\xff\xff")
    record = HeardRecord.open(tmp_path, blank=True, fsync=False)
    assert not record.tracked and record.ids() == frozenset()
    assert not HeardRecord.open(tmp_path, blank=True).tracked  # rewritten: parses now


def test_the_driver_records_a_sender_before_it_steps_its_message(tmp_path: Path) -> None:
    net = make_network(tmp_path / "net")
    record = HeardRecord.open(tmp_path, blank=True, fsync=False)
    stepped: list[frozenset[int]] = []
    lead = Leader(net, tmp_path / "o", ConfState(voters=(1, 2, 3)), Collect(), heard=record)
    try:
        step = lead.chain._node.step

        def seen(msg: Message) -> None:
            stepped.append(HeardRecord.open(tmp_path, blank=False).ids())  # what is on disk by then
            step(msg)

        lead.chain._node.step = seen  # type: ignore[method-assign,assignment]
        term = lead.chain._node.status().term
        lead.chain._handle("step", Message(MessageType.HEARTBEAT_RESP, to=1, frm=3, term=term))
        assert stepped == [frozenset({3})]
        assert record.ids() == {3}
    finally:
        lead.close()


def test_status_tells_the_record_only_when_tracked() -> None:
    def status(tracked: bool) -> services_pb2.StatusResponse:
        return services_pb2.StatusResponse(role="orderer", raft_voters=[1, 2, 3], raft_id=1,
                                           raft_heard_from=[2, 3], raft_heard_tracked=tracked)

    tracked = answer_of("a:1", status(True))
    untracked = answer_of("a:1", status(False))
    assert tracked is not None and tracked.heard == frozenset({2, 3})
    assert untracked is not None and untracked.heard is None
