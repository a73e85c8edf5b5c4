"""What one BroadcastBatch message may make the orderer hold. Old code: an 8 MiB message of
empty envelopes (two bytes each: four million of them), from any consortium certificate, was
split into a list of four million and refused one by one -- six GB and over a minute of the
orderer's CPU for one message; empty envelopes weighed nothing in a stream's read-ahead bound
(128 messages of 1024 of them read ahead, 131,072 answers held); and a message over the
per-message limits held one answer and ticket per envelope."""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from node.errors import RxError
from node.orderer.broadcast import (
    BroadcastHandler,
    BroadcastOptions,
    EnvelopeValidator,
    batch_bytes,
    decode_batch,
)
from node.orderer.envelope_batch import MAX_READ_ENVELOPES, BatchTooLarge, encode_batch
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import BAD_PAYLOAD, TOO_LARGE
from tests.orderer.fakes import NoForward, NothingOrdered, no_msp


def _handler(options: BroadcastOptions | None = None) -> BroadcastHandler:
    validator = EnvelopeValidator(no_msp, "c", 1 << 20, lambda: 0)  # empty envelopes: BAD_PAYLOAD
    return BroadcastHandler(validator, NothingOrdered(), NoForward(), OrdererMetrics("t"), options)


def test_a_message_of_millions_of_empty_envelopes_is_refused_as_it_is_split() -> None:
    hostile = b"\x0a\x00" * (4 << 20)  # 8 MiB: 4,194,304 empty envelopes
    started = time.monotonic()
    decoded = decode_batch(hostile)
    assert isinstance(decoded, BatchTooLarge), type(decoded)  # old code: a list of 4,194,304
    assert time.monotonic() - started < 1.0
    within = decode_batch(b"\x0a\x00" * MAX_READ_ENVELOPES)
    assert isinstance(within, list) and len(within) == MAX_READ_ENVELOPES


def test_the_stream_ends_too_large_after_the_answers_before_it() -> None:
    h = _handler()
    answers = h.batch_stream([decode_batch(encode_batch([b"", b""])), decode_batch(b"\x0a\x00" * (1 << 20))])
    first = next(answers)
    assert [(a.accepted, a.reason) for a in first.responses] == [(False, BAD_PAYLOAD)] * 2
    with pytest.raises(RxError) as info:
        next(answers)
    assert info.value.reason == TOO_LARGE  # the reason kept (as gRPC RESOURCE_EXHAUSTED)


def test_empty_envelopes_weigh_in_the_read_ahead_bound() -> None:
    assert batch_bytes([b""] * 1000) >= 1000 * 1000  # old code: 0
    h = _handler(BroadcastOptions(max_stream_bytes=4 << 20))
    read = [0]
    lock = threading.Lock()

    def requests() -> Iterator[list[bytes]]:
        for _ in range(120):
            with lock:
                read[0] += 1
            yield [b""] * 1024

    answers = h.batch_stream(requests())
    try:
        next(answers)  # the client reads one answer message, then no more
        last, end = -1, time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(0.3)
            with lock:
                if read[0] == last:
                    break
                last = read[0]
        # about 4 MiB of weight (1 MiB each) past the answered ones (the first answer message
        # holds up to 4096 answers: 4 messages); old code: all 120 (up to 128)
        assert last <= 4 + 4 + 4, last
    finally:
        answers.close()  # type: ignore[attr-defined]  # a generator


def test_a_message_over_the_limits_holds_one_answer_for_all_its_envelopes() -> None:
    h = _handler()
    raws = [b""] * MAX_READ_ENVELOPES  # over max_batch_envelopes (1024): every one TOO_LARGE
    tracemalloc.start()
    try:
        held = h.dispatch_many(raws)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) == MAX_READ_ENVELOPES
    assert {getattr(x.ticket.peek(), "reason", None) for x in held} == {TOO_LARGE}
    assert peak < 256 * 1024, peak  # old code: a ticket (an Event, its Condition and Lock) each, MBs


def test_refused_envelopes_make_one_log_line_per_reason_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Old code: a line per refused envelope -- 1024 lines for one 2 KiB message."""
    caplog.set_level(logging.INFO, logger="node.orderer")
    h = _handler()
    answers = list(h.batch_stream([decode_batch(encode_batch([b""] * 1024))] * 3))
    assert sum(len(a.responses) for a in answers) == 3 * 1024
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=envelope_refused ")]
    assert len(lines) == 1 and "reason=BAD_PAYLOAD" in lines[0], lines[:3]
    assert h._metrics.rejected.labels(reason=BAD_PAYLOAD)._value.get() == 3 * 1024  # every one counted
